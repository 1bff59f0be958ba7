/*
 * Fused multi-LoRA for bf16 activations on x86 CPUs with AVX512-BF16 (one call per LoRA layer).
 *
 * For every listed row r (rows grouped by adapter slot) and every slice s of the layer:
 *
 *     y[r, off_s : off_s + n_s] += scale * (x[r] @ A_slot[s]^T) @ B_slot[s]^T
 *
 * Both products use VDPBF16PS (bf16 pairs, fp32 accumulate); the shrink result stays in
 * registers and a small stack buffer, the expand accumulates straight into y (no temporary, no
 * second pass over the output), and no per-token weight copy is ever made. Rows not listed
 * (base-model rows) are not touched. lora_bf16_fused (AVX512-BF16) splits its 4-row blocks, and
 * lora_bf16_fused_amx its 16-row blocks, over OpenMP threads (the engine's pool, or
 * lora_set_threads(n); LORA_PLATFORM_LORA_THREADS in lora_kernel.py); a small call stays on the
 * calling thread.
 * Neither checks that its buffers are large enough: lora_kernel.py checks y's width, the row and
 * slot indices and the shapes before every call.
 *
 * Weights are pre-packed per adapter by serving/engine/lora_kernel.py:
 *   A: [K2][RT][2]  bf16, K2 = ceil(K / 2), RT = slices * R rounded up to 16 (zero padded)
 *   B: per slice s, [R / 2][NP_s][2] bf16, NP_s = n_s rounded up to 16, slices back to back
 * R (the rank, per slice) is even.
 *
 * Built by lora_kernel.py (FLAGS) with:
 *   gcc -O3 -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mamx-tile -mamx-bf16 -fopenmp -shared -fPIC
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MB 4   /* rows per block */
#define MAXRT 1024

typedef uint16_t bf16_t;

static inline __m512 load_bf16_16(const bf16_t *p, __mmask16 mask) {
    __m256i v = _mm256_maskz_loadu_epi16(mask, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

static inline void store_bf16_16(bf16_t *p, __m512 v, __mmask16 mask) {
    __m256bh h = _mm512_cvtneps_pbh(v);
    _mm256_mask_storeu_epi16(p, mask, (__m256i)h);
}

static inline int32_t x_pair(const bf16_t *xr, int64_t p, int64_t K) {
    if (2 * p + 1 < K) {
        int32_t v;
        memcpy(&v, xr + 2 * p, 4);
        return v;
    }
    return (int32_t)xr[2 * p]; /* odd K: last element paired with zero */
}

/* h[m][0:16*NV] (fp32) = x[m] @ A for NV vectors of 16 ranks starting at rank column rv0 */
static inline __attribute__((always_inline)) void shrink_block(
    const bf16_t *const xr[MB], int64_t K, const bf16_t *ap, int64_t RT, int64_t rv0, int NV,
    float h[MB][MAXRT]) {
    __m512 acc[MB][4];
    for (int m = 0; m < MB; m++)
        for (int v = 0; v < 4; v++) acc[m][v] = _mm512_setzero_ps();
    const int64_t K2 = (K + 1) / 2;
    for (int64_t p = 0; p < K2; p++) {
        const bf16_t *arow = ap + (p * RT + rv0 * 16) * 2;
        __m512bh a[4];
        for (int v = 0; v < NV; v++) a[v] = (__m512bh)_mm512_loadu_si512(arow + v * 32);
        for (int m = 0; m < MB; m++) {
            __m512bh xb = (__m512bh)_mm512_set1_epi32(x_pair(xr[m], p, K));
            for (int v = 0; v < NV; v++) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], xb, a[v]);
        }
    }
    for (int m = 0; m < MB; m++)
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(&h[m][(rv0 + v) * 16], acc[m][v]);
}

/* y[m][col : col + 16*NV] += hb[m] @ B for one slice; hb holds bf16 pairs of the slice's ranks */
static inline __attribute__((always_inline)) void expand_block(
    bf16_t *const yr[MB], int rows, const int32_t hb[MB][MAXRT / 2], int64_t R2, const bf16_t *bp,
    int64_t NP, int64_t col, int64_t n, int NV) {
    __m512 acc[MB][4];
    __mmask16 mask[4];
    for (int v = 0; v < NV; v++) {
        int64_t left = n - (col + v * 16);
        mask[v] = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
    }
    for (int m = 0; m < MB; m++)
        for (int v = 0; v < NV; v++) acc[m][v] = load_bf16_16(yr[m] + col + v * 16, mask[v]);
    for (int64_t q = 0; q < R2; q++) {
        const bf16_t *brow = bp + (q * NP + col) * 2;
        __m512bh b[4];
        for (int v = 0; v < NV; v++) b[v] = (__m512bh)_mm512_loadu_si512(brow + v * 32);
        for (int m = 0; m < MB; m++) {
            __m512bh hv = (__m512bh)_mm512_set1_epi32(hb[m][q]);
            for (int v = 0; v < NV; v++) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], hv, b[v]);
        }
    }
    for (int m = 0; m < rows; m++)
        for (int v = 0; v < NV; v++) store_bf16_16(yr[m] + col + v * 16, acc[m][v], mask[v]);
}

static int lora_threads = 0; /* 0: the OpenMP pool's size */

/* Threads for one call (1: the calling thread only); LORA_PLATFORM_LORA_THREADS sets it. */
void lora_set_threads(int n) { lora_threads = n; }

/* Packing (lora_kernel.PackedLayer): dst[(i / 2) * d0 + j * 2 + i % 2] = src[i * s0 + j * s1] for
 * i < rows, j < cols, i.e. rows i and i + 1 side by side in pairs (an odd last row fills the first
 * half of its pair only). One call per slice and matrix instead of a few strided torch copies.
 * Where rows i and i + 1 are next to each other in src (s0 == 1, as both A^T and B^T are packed) and
 * everything is 4-byte aligned, each pair moves as one 32-bit word: half the moves. */
void lora_pack_pairs(bf16_t *dst, int64_t d0, const bf16_t *src, int64_t s0, int64_t s1, int64_t rows,
                     int64_t cols) {
    int64_t i = 0;
    if (s0 == 1 && s1 % 2 == 0 && d0 % 2 == 0 && (uintptr_t)src % 4 == 0 && (uintptr_t)dst % 4 == 0) {
        const uint32_t *s = (const uint32_t *)src;
        uint32_t *d = (uint32_t *)dst;
        const int64_t w1 = s1 / 2, wd = d0 / 2;
        for (; i + 1 < rows; i += 2) {
            uint32_t *dr = d + (i / 2) * wd;
            const uint32_t *sr = s + i / 2;
            for (int64_t j = 0; j < cols; j++) dr[j] = sr[j * w1];
        }
    }
    for (; i < rows; i++) {
        bf16_t *d = dst + (i / 2) * d0 + (i % 2);
        const bf16_t *sr = src + i * s0;
        for (int64_t j = 0; j < cols; j++) d[j * 2] = sr[j * s1];
    }
}

/* Blocks of up to `size` consecutive entries of one slot: their starts, then n_rows (a malloc'ed
 * array of *nb + 1 entries; NULL when out of memory). */
static int64_t *block_starts(const int32_t *slots, int64_t n_rows, int64_t size, int64_t *nb) {
    int64_t *starts = malloc(sizeof(int64_t) * (size_t)(n_rows + 1));
    if (!starts) return NULL;
    *nb = 0;
    for (int64_t i = 0; i < n_rows;) {
        int64_t j = i + 1;
        while (j < n_rows && j - i < size && slots[j] == slots[i]) j++;
        starts[(*nb)++] = i;
        i = j;
    }
    starts[*nb] = n_rows;
    return starts;
}

/* One block of up to MB rows of one slot: rows[0:rows_in] of x/y. */
static void avx512_block(const bf16_t *x, int64_t sx, bf16_t *y, int64_t sy, const int32_t *rows, int rows_in,
                         const bf16_t *a, const bf16_t *b, int64_t K, int64_t R, int64_t RT, int64_t S,
                         const int64_t *offs, const int64_t *sizes, float scale) {
    const int64_t RV = RT / 16;
    float h[MB][MAXRT];
    int32_t hb[MB][MAXRT / 2];
    const bf16_t *xr[MB];
    bf16_t *yr[MB];
    for (int m = 0; m < MB; m++) { /* pad the block with the last row (not stored) */
        int r = m < rows_in ? m : rows_in - 1;
        xr[m] = x + (int64_t)rows[r] * sx;
        yr[m] = y + (int64_t)rows[r] * sy;
    }
    for (int64_t rv = 0; rv < RV; rv += 4) {
        int64_t nv = RV - rv < 4 ? RV - rv : 4;
        switch (nv) {
            case 1: shrink_block(xr, K, a, RT, rv, 1, h); break;
            case 2: shrink_block(xr, K, a, RT, rv, 2, h); break;
            case 3: shrink_block(xr, K, a, RT, rv, 3, h); break;
            default: shrink_block(xr, K, a, RT, rv, 4, h); break;
        }
    }
    for (int64_t s = 0; s < S; s++) {
        for (int m = 0; m < MB; m++) {
            for (int64_t q = 0; q < R / 2; q++) {
                __m128 two = _mm_set_ps(0.f, 0.f, h[m][s * R + 2 * q + 1] * scale, h[m][s * R + 2 * q] * scale);
                __m128bh pr = _mm_cvtneps_pbh(two);
                int32_t v;
                memcpy(&v, &pr, 4);
                hb[m][q] = v;
            }
        }
        const int64_t n = sizes[s], NP = ((n + 15) / 16) * 16, NVT = NP / 16;
        bf16_t *yo[MB];
        for (int m = 0; m < MB; m++) yo[m] = yr[m] + offs[s];
        for (int64_t v0 = 0; v0 < NVT; v0 += 4) {
            int64_t nv = NVT - v0 < 4 ? NVT - v0 : 4;
            switch (nv) {
                case 1: expand_block(yo, rows_in, hb, R / 2, b, NP, v0 * 16, n, 1); break;
                case 2: expand_block(yo, rows_in, hb, R / 2, b, NP, v0 * 16, n, 2); break;
                case 3: expand_block(yo, rows_in, hb, R / 2, b, NP, v0 * 16, n, 3); break;
                default: expand_block(yo, rows_in, hb, R / 2, b, NP, v0 * 16, n, 4); break;
            }
        }
        b += (R / 2) * NP * 2;
    }
}

#define PARALLEL_BLOCKS 4 /* blocks (of MB rows) from which a call splits them over threads */

/*
 * x: bf16 activations, row stride sx; y: bf16 output, row stride sy (both in elements).
 * rows[i], slots[i] for i < n_rows: the row of x/y and its packed-weight slot; rows of one
 * slot are consecutive. a_slots[slot]/b_slots[slot]: the slot's packed weights (a slot is a pointer:
 * an adapter packed once takes a slot without its weights being copied).
 * S slices of rank R each; offs/sizes: each slice's output columns. Returns 0, or -1 on a bad size.
 * A call with PARALLEL_BLOCKS blocks or more (16 rows of one adapter, or a few rows each of several)
 * splits them over OpenMP threads, each block writing its own rows of y; smaller calls run on the
 * calling thread.
 */
int lora_bf16_fused(const bf16_t *x, int64_t sx, bf16_t *y, int64_t sy, const int32_t *rows,
                    const int32_t *slots, int64_t n_rows, const bf16_t *const *a_slots,
                    const bf16_t *const *b_slots, int64_t K, int64_t R, int64_t S,
                    const int64_t *offs, const int64_t *sizes, float scale) {
    const int64_t RT = ((S * R + 15) / 16) * 16;
    if (RT > MAXRT || R % 2 != 0 || R <= 0) return -1;
    int64_t nb;
    int64_t *starts = block_starts(slots, n_rows, MB, &nb);
    if (!starts) return -1;
    const int nt = lora_threads > 0 ? lora_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) if (nb >= PARALLEL_BLOCKS && nt > 1) num_threads(nt)
    for (int64_t bi = 0; bi < nb; bi++) {
        const int64_t i = starts[bi];
        const int32_t slot = slots[i];
        avx512_block(x, sx, y, sy, rows + i, (int)(starts[bi + 1] - i), a_slots[slot], b_slots[slot], K, R,
                     RT, S, offs, sizes, scale);
    }
    free(starts);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * AMX-BF16 variant (Sapphire Rapids and later): the same contract, 16-row tiles.
 * Needs K padded to 32 in the packed A (the packer does this) and R <= 32 or R % 32 == 0.
 */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define MAXK 16384

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg_t;

/* Ask the kernel for AMX state (once per process; oneDNN may have done it already). 0 = usable. */
int lora_amx_init(void) {
    return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

static inline void add_tile_into_y(bf16_t *const yr[16], int rows, const float c[16][16], int64_t col,
                                   int64_t n) {
    int64_t left = n - col;
    __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
    for (int m = 0; m < rows; m++) {
        __m512 acc = _mm512_add_ps(load_bf16_16(yr[m] + col, mask), _mm512_loadu_ps(c[m]));
        store_bf16_16(yr[m] + col, acc, mask);
    }
}

static void amx_config(int64_t kc) {
    tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 6; t++) { /* 0-3 accumulators, 4 x chunk, 5 packed-A chunk: 16 x 64 B */
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    cfg.rows[6] = 16; /* h chunk: 16 rows x kc ranks */
    cfg.colsb[6] = (uint16_t)(kc * 2);
    cfg.rows[7] = (uint8_t)(kc / 2); /* packed-B chunk: kc/2 rank pairs x 16 columns */
    cfg.colsb[7] = 64;
    _tile_loadconfig(&cfg);
}

/* One block of up to 16 rows of one slot: rows[0:rows_in]. xb: a 16 x Kp scratch buffer. */
static void amx_block(const bf16_t *x, int64_t sx, bf16_t *y, int64_t sy, const int32_t *rows, int rows_in,
                      const bf16_t *a, const bf16_t *b, int64_t K, int64_t Kp, int64_t R, int64_t RT,
                      int64_t S, int64_t kc, const int64_t *offs, const int64_t *sizes, float scale,
                      bf16_t *xb) {
    float hf[16][MAXRT] __attribute__((aligned(64)));
    bf16_t hb[16][MAXRT] __attribute__((aligned(64)));
    float c[16][16] __attribute__((aligned(64)));
    bf16_t *yr[16];
    int consecutive = rows_in == 16 && Kp == K;
    for (int m = 0; m < rows_in; m++) {
        yr[m] = y + (int64_t)rows[m] * sy;
        if (m > 0 && rows[m] != rows[m - 1] + 1) consecutive = 0;
    }
    const bf16_t *xt = x + (int64_t)rows[0] * sx; /* tiles straight from x when rows are contiguous */
    int64_t xstride = sx * 2;
    if (!consecutive) {
        for (int m = 0; m < rows_in; m++) {
            memcpy(xb + m * Kp, x + (int64_t)rows[m] * sx, K * sizeof(bf16_t));
            if (Kp > K) memset(xb + m * Kp + K, 0, (Kp - K) * sizeof(bf16_t));
        }
        if (rows_in < 16) memset(xb + rows_in * Kp, 0, (16 - rows_in) * Kp * sizeof(bf16_t));
        xt = xb;
        xstride = Kp * 2;
    }
    const int64_t astride = RT * 4; /* bytes per packed pair row */
    for (int64_t r0 = 0; r0 < RT; r0 += 64) {
        int64_t nv = (RT - r0) / 16 < 4 ? (RT - r0) / 16 : 4;
        _tile_zero(0);
        if (nv > 1) _tile_zero(1);
        if (nv > 2) _tile_zero(2);
        if (nv > 3) _tile_zero(3);
        for (int64_t k0 = 0; k0 < Kp; k0 += 32) {
            _tile_loadd(4, xt + k0, xstride);
            const bf16_t *ak = a + ((k0 / 2) * RT + r0) * 2;
            _tile_loadd(5, ak, astride);
            _tile_dpbf16ps(0, 4, 5);
            if (nv > 1) {
                _tile_loadd(5, ak + 32, astride);
                _tile_dpbf16ps(1, 4, 5);
            }
            if (nv > 2) {
                _tile_loadd(5, ak + 64, astride);
                _tile_dpbf16ps(2, 4, 5);
            }
            if (nv > 3) {
                _tile_loadd(5, ak + 96, astride);
                _tile_dpbf16ps(3, 4, 5);
            }
        }
        _tile_stored(0, &hf[0][r0], MAXRT * 4);
        if (nv > 1) _tile_stored(1, &hf[0][r0 + 16], MAXRT * 4);
        if (nv > 2) _tile_stored(2, &hf[0][r0 + 32], MAXRT * 4);
        if (nv > 3) _tile_stored(3, &hf[0][r0 + 48], MAXRT * 4);
    }
    const __m512 vs = _mm512_set1_ps(scale);
    for (int m = 0; m < 16; m++)
        for (int64_t r = 0; r < RT; r += 16)
            _mm256_storeu_si256((__m256i *)&hb[m][r],
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(&hf[m][r]), vs)));
    for (int64_t s = 0; s < S; s++) {
        const int64_t n = sizes[s], NP = ((n + 15) / 16) * 16;
        bf16_t *yo[16];
        for (int m = 0; m < rows_in; m++) yo[m] = yr[m] + offs[s];
        for (int64_t n0 = 0; n0 < NP; n0 += 16) {
            _tile_zero(0);
            for (int64_t q0 = 0; q0 < R; q0 += kc) {
                _tile_loadd(6, &hb[0][s * R + q0], MAXRT * 2);
                _tile_loadd(7, b + ((q0 / 2) * NP + n0) * 2, NP * 4);
                _tile_dpbf16ps(0, 6, 7);
            }
            _tile_stored(0, c, 64);
            add_tile_into_y(yo, rows_in, c, n0, n);
        }
        b += (R / 2) * NP * 2;
    }
}

int lora_bf16_fused_amx(const bf16_t *x, int64_t sx, bf16_t *y, int64_t sy, const int32_t *rows,
                        const int32_t *slots, int64_t n_rows, const bf16_t *const *a_slots,
                        const bf16_t *const *b_slots, int64_t K, int64_t R, int64_t S,
                        const int64_t *offs, const int64_t *sizes, float scale) {
    const int64_t RT = ((S * R + 15) / 16) * 16;
    const int64_t Kp = ((K + 31) / 32) * 32;
    const int64_t kc = R <= 32 ? R : 32;
    if (RT > MAXRT || R % 2 != 0 || R <= 0 || (R > 32 && R % 32 != 0) || Kp > MAXK) return -1;
    int64_t nb;
    int64_t *starts = block_starts(slots, n_rows, 16, &nb);
    if (!starts) return -1;
    /* scratch for every thread, allocated before any row is touched: a failure changes nothing */
    const int nt = lora_threads > 0 ? lora_threads : omp_get_max_threads();
    const size_t scratch = (size_t)(16 * Kp * 2);
    bf16_t *xbs = aligned_alloc(64, scratch * (size_t)nt);
    if (!xbs) {
        free(starts);
        return -1;
    }
#pragma omp parallel if (nb > 1 && nt > 1) num_threads(nt)
    {
        bf16_t *xb = xbs + (size_t)omp_get_thread_num() * (scratch / sizeof(bf16_t));
        amx_config(kc);
#pragma omp for schedule(static)
        for (int64_t bi = 0; bi < nb; bi++) {
            const int64_t i = starts[bi];
            const int32_t slot = slots[i];
            amx_block(x, sx, y, sy, rows + i, (int)(starts[bi + 1] - i), a_slots[slot], b_slots[slot], K,
                      Kp, R, RT, S, kc, offs, sizes, scale, xb);
        }
        _tile_release();
    }
    free(xbs);
    free(starts);
    return 0;
}
