/*
 * Fused multi-LoRA for float32 activations on x86 CPUs with AVX2/FMA or AVX512F (one call per LoRA
 * layer): what serves `--dtype float32` (and `--dtype auto` on CPUs without bf16 instructions, such as
 * AMD Zen 2/3, where bf16 products are emulated). The same contract as lora_bf16.c:
 *
 *     y[r, off_s : off_s + n_s] += scale * (x[r] @ A_slot[s]^T) @ B_slot[s]^T
 *
 * for every listed row r (rows grouped by adapter slot) and every slice s; base-model rows are not
 * touched; no per-token weight copy; the shrink result stays on the stack and the expand
 * accumulates straight into y. Blocks of MB rows of one slot are split over OpenMP threads.
 * Neither the sizes of the buffers nor the indices are checked here: lora_kernel.py does it.
 *
 * One source, two libraries (lora_kernel.py, F32_LIBRARIES): VW = 8 floats per vector with
 * -mavx2 -mfma, VW = 16 with -mavx512f. The code uses GCC's vector extensions, so the compiler picks
 * the instructions of the target (FMA contraction is GCC's default, -ffp-contract=fast).
 *
 * Weights are pre-packed per adapter by lora_kernel.PackedLayer (the same blocks for both widths):
 *   A: [K][RT] float32, RT = slices * R rounded up to 16 (slice s in columns s*R .. s*R+R, zero padded)
 *   B: per slice s, [R][NP_s] float32, NP_s = n_s rounded up to 16, slices back to back
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef VW
#error "build with -DVW=8 (AVX2) or -DVW=16 (AVX512F)"
#endif
#if VW == 8
#define NV_MAX 2 /* 16 ymm registers: 4 x 2 accumulators, 2 weights, 1 broadcast */
#else
#define NV_MAX 4 /* 32 zmm registers: 4 x 4 accumulators, 4 weights, 1 broadcast */
#endif
#define MB 4 /* rows per block */
#define MAXRT 1024
#define PARALLEL_BLOCKS 4 /* blocks from which a call splits them over threads */

typedef float vf __attribute__((vector_size(VW * 4)));

static inline vf load_v(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v); /* an unaligned vector load */
    return v;
}

static inline void store_v(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* y's last vector of a slice may hold fewer than VW columns: go through a zeroed copy */
static inline vf load_tail(const float *p, int64_t left) {
    if (left >= VW) return load_v(p);
    float t[VW] = {0};
    if (left <= 0) return load_v(t);
    memcpy(t, p, (size_t)left * 4);
    return load_v(t);
}

static inline void store_tail(float *p, vf v, int64_t left) {
    if (left >= VW) {
        store_v(p, v);
        return;
    }
    if (left <= 0) return;
    float t[VW];
    store_v(t, v);
    memcpy(p, t, (size_t)left * 4);
}

/* h[m][(rv0 + v) * VW ...] = x[m] @ A for NV vectors of ranks starting at vector rv0 */
static inline __attribute__((always_inline)) void shrink_block(const float *const xr[MB], int64_t K,
                                                               const float *a, int64_t RT, int64_t rv0,
                                                               int NV, float h[MB][MAXRT]) {
    vf acc[MB][NV_MAX];
    for (int m = 0; m < MB; m++)
        for (int v = 0; v < NV; v++) acc[m][v] = (vf){0};
    for (int64_t k = 0; k < K; k++) {
        const float *arow = a + k * RT + rv0 * VW;
        vf w[NV_MAX];
        for (int v = 0; v < NV; v++) w[v] = load_v(arow + v * VW);
        for (int m = 0; m < MB; m++) {
            const float xv = xr[m][k];
            for (int v = 0; v < NV; v++) acc[m][v] += xv * w[v];
        }
    }
    for (int m = 0; m < MB; m++)
        for (int v = 0; v < NV; v++) store_v(&h[m][(rv0 + v) * VW], acc[m][v]);
}

/* y[m][col : col + VW*NV] += h[m][0:R] @ B for one slice (h already scaled) */
static inline __attribute__((always_inline)) void expand_block(float *const yr[MB], int rows,
                                                               const float *const hr[MB], int64_t R,
                                                               const float *b, int64_t NP, int64_t col,
                                                               int64_t n, int NV) {
    vf acc[MB][NV_MAX];
    for (int m = 0; m < MB; m++)
        for (int v = 0; v < NV; v++) acc[m][v] = load_tail(yr[m] + col + v * VW, n - col - v * VW);
    for (int64_t q = 0; q < R; q++) {
        const float *brow = b + q * NP + col;
        vf w[NV_MAX];
        for (int v = 0; v < NV; v++) w[v] = load_v(brow + v * VW);
        for (int m = 0; m < MB; m++) {
            const float hv = hr[m][q];
            for (int v = 0; v < NV; v++) acc[m][v] += hv * w[v];
        }
    }
    for (int m = 0; m < rows; m++)
        for (int v = 0; v < NV; v++) store_tail(yr[m] + col + v * VW, acc[m][v], n - col - v * VW);
}

/* One block of up to MB rows of one slot: rows[0:rows_in] of x/y. */
static void f32_block(const float *x, int64_t sx, float *y, int64_t sy, const int32_t *rows, int rows_in,
                      const float *a, const float *b, int64_t K, int64_t R, int64_t RT, int64_t S,
                      const int64_t *offs, const int64_t *sizes, float scale) {
    float h[MB][MAXRT];
    const float *xr[MB];
    float *yr[MB];
    for (int m = 0; m < MB; m++) { /* pad the block with the last row (computed, not stored) */
        int r = m < rows_in ? m : rows_in - 1;
        xr[m] = x + (int64_t)rows[r] * sx;
        yr[m] = y + (int64_t)rows[r] * sy;
    }
    const int64_t RV = RT / VW;
    for (int64_t rv = 0; rv < RV; rv += NV_MAX) {
        switch (RV - rv < NV_MAX ? RV - rv : NV_MAX) {
            case 1: shrink_block(xr, K, a, RT, rv, 1, h); break;
#if NV_MAX > 2
            case 2: shrink_block(xr, K, a, RT, rv, 2, h); break;
            case 3: shrink_block(xr, K, a, RT, rv, 3, h); break;
#endif
            default: shrink_block(xr, K, a, RT, rv, NV_MAX, h); break;
        }
    }
    for (int m = 0; m < MB; m++)
        for (int64_t r = 0; r < S * R; r++) h[m][r] *= scale;
    for (int64_t s = 0; s < S; s++) {
        const int64_t n = sizes[s], NP = ((n + 15) / 16) * 16, NVT = (n + VW - 1) / VW;
        float *yo[MB];
        const float *hr[MB];
        for (int m = 0; m < MB; m++) {
            yo[m] = yr[m] + offs[s];
            hr[m] = &h[m][s * R];
        }
        for (int64_t v0 = 0; v0 < NVT; v0 += NV_MAX) {
            switch (NVT - v0 < NV_MAX ? NVT - v0 : NV_MAX) {
                case 1: expand_block(yo, rows_in, hr, R, b, NP, v0 * VW, n, 1); break;
#if NV_MAX > 2
                case 2: expand_block(yo, rows_in, hr, R, b, NP, v0 * VW, n, 2); break;
                case 3: expand_block(yo, rows_in, hr, R, b, NP, v0 * VW, n, 3); break;
#endif
                default: expand_block(yo, rows_in, hr, R, b, NP, v0 * VW, n, NV_MAX); break;
            }
        }
        b += R * NP;
    }
}

static int lora_threads = 0; /* 0: the OpenMP pool's size */

/* Threads for one call (1: the calling thread only); LORA_PLATFORM_LORA_THREADS sets it. */
void lora_set_threads(int n) { lora_threads = n; }

/*
 * x: float32 activations, row stride sx; y: float32 output, row stride sy (both in elements).
 * rows[i], slots[i] for i < n_rows: the row of x/y and its packed-weight slot; rows of one slot are
 * consecutive. a_slots[slot]/b_slots[slot]: the slot's packed weights. S slices of rank R each;
 * offs/sizes: each slice's output columns. Returns 0, or -1 on a bad size or out of memory (nothing
 * written then).
 */
int lora_f32_fused(const float *x, int64_t sx, float *y, int64_t sy, const int32_t *rows,
                   const int32_t *slots, int64_t n_rows, const float *const *a_slots,
                   const float *const *b_slots, int64_t K, int64_t R, int64_t S, const int64_t *offs,
                   const int64_t *sizes, float scale) {
    const int64_t RT = ((S * R + 15) / 16) * 16;
    if (RT > MAXRT || R <= 0) return -1;
    int64_t *starts = malloc(sizeof(int64_t) * (size_t)(n_rows + 1));
    if (!starts) return -1;
    int64_t nb = 0;
    for (int64_t i = 0; i < n_rows;) { /* blocks of up to MB consecutive rows of one slot */
        int64_t j = i + 1;
        while (j < n_rows && j - i < MB && slots[j] == slots[i]) j++;
        starts[nb++] = i;
        i = j;
    }
    starts[nb] = n_rows;
    const int nt = lora_threads > 0 ? lora_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) if (nb >= PARALLEL_BLOCKS && nt > 1) num_threads(nt)
    for (int64_t bi = 0; bi < nb; bi++) {
        const int64_t i = starts[bi];
        const int32_t slot = slots[i];
        f32_block(x, sx, y, sy, rows + i, (int)(starts[bi + 1] - i), a_slots[slot], b_slots[slot], K, R, RT,
                  S, offs, sizes, scale);
    }
    free(starts);
    return 0;
}
