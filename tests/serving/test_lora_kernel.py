"""The compiled fused LoRA op (serving/engine/cpu/lora_bf16.c) against a float32 reference.

The engine uses it for bf16 models (the embedded SmolLM2 default); the slow main-job test serves a
trained adapter through it end to end. Here: every layer shape the engine hands it, one adapter and
several mixed with base rows, both the AMX and the AVX512-BF16 variants.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from serving.engine.cpu import lora_kernel

pytestmark = pytest.mark.skipif(not lora_kernel.cpu_supported(), reason="CPU without AVX512-BF16")

# (K, rank, output slices): SmolLM2's qkv / o / gate_up / down, then odd sizes and large ranks
SHAPES = [
    (576, 16, (576, 192, 192)),
    (576, 16, (576,)),
    (576, 16, (1536, 1536)),
    (1536, 16, (576,)),
    (577, 8, (33,)),
    (64, 64, (100, 50)),
    (96, 32, (40, 24, 24)),
]


def variants() -> list[str]:
    kernel = lora_kernel.load()
    assert kernel is not None, "a CPU with AVX512-BF16 and gcc must get the compiled op"
    return ["amx", "avx512"] if kernel.use_amx else ["avx512"]


def reference(x, y, a_stacked, b_stacked, sizes, indices, scale):  # type: ignore[no-untyped-def]
    out = y.float().clone()
    col = 0
    for a, b, n in zip(a_stacked, b_stacked, sizes, strict=True):
        for row, slot in enumerate(indices.tolist()):
            if slot >= 0:
                h = x[row].float() @ a[slot, 0].float().t()
                out[row, col : col + n] += scale * (h @ b[slot, 0, :n].float().t())
        col += n
    return out


def fused(variant: str, x, y, a_stacked, b_stacked, sizes, indices, scale):  # type: ignore[no-untyped-def]
    kernel = lora_kernel.load()
    assert kernel is not None
    kernel.use_amx = variant == "amx"
    order = torch.argsort(indices, stable=True)
    order = order[indices[order] >= 0]
    out = y.clone()
    layer = lora_kernel.PackedLayer(a_stacked, b_stacked, sizes)
    ok = lora_kernel.run(kernel, layer, x, out, order.int(), indices[order].int(), scale)
    assert ok
    return out


@pytest.fixture(autouse=True)
def restore_variant():  # type: ignore[no-untyped-def]
    kernel = lora_kernel.load()
    saved = kernel.use_amx if kernel else False
    yield
    if kernel:
        kernel.use_amx = saved


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"K{s[0]}-r{s[1]}-{'x'.join(map(str, s[2]))}")
@pytest.mark.parametrize(
    "batch", ["one-adapter", "mixed-with-base", "single-row", "prefill-mixed", "decode-many-adapters"]
)
def test_fused_lora_matches_the_float32_reference(shape, batch) -> None:  # type: ignore[no-untyped-def]
    k, rank, sizes = shape
    gen = torch.Generator().manual_seed(k + rank)
    slots = 4
    a_stacked = tuple(torch.randn(slots, 1, rank, k, generator=gen).bfloat16() * 0.05 for _ in sizes)
    b_stacked = tuple(torch.randn(slots, 1, n + 5, rank, generator=gen).bfloat16() * 0.05 for n in sizes)
    # prefill-mixed: many 4-row blocks of several adapters, split over threads; decode-many-adapters:
    # one step's blocks of 1, 2, 3 and 4 rows of four adapters, a base row between
    rows = {"one-adapter": 40, "mixed-with-base": 37, "single-row": 1, "prefill-mixed": 203}.get(batch, 11)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    y = torch.randn(rows, sum(sizes), generator=gen).bfloat16()
    if batch in ("mixed-with-base", "prefill-mixed"):
        indices = torch.randint(-1, slots, (rows,), generator=gen)
    elif batch == "decode-many-adapters":
        indices = torch.tensor([3, 0, -1, 3, 1, 2, 1, 3, 2, 2, 3])
    else:
        indices = torch.full((rows,), 2)
    want = reference(x, y, a_stacked, b_stacked, sizes, indices, 0.5)
    for variant in variants():
        got = fused(variant, x, y, a_stacked, b_stacked, sizes, indices, 0.5)
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2, msg=variant)
        base_rows = indices < 0
        assert torch.equal(got[base_rows], y[base_rows]), "rows without an adapter must stay untouched"


def test_rows_of_other_requests_are_left_alone_when_the_batch_is_strided() -> None:
    """Output columns outside the layer's slices (a wider, strided y) are never written."""
    gen = torch.Generator().manual_seed(0)
    a_stacked = (torch.randn(2, 1, 16, 64, generator=gen).bfloat16() * 0.05,)
    b_stacked = (torch.randn(2, 1, 48, 16, generator=gen).bfloat16() * 0.05,)
    wide = torch.randn(20, 80, generator=gen).bfloat16()
    x = torch.randn(20, 64, generator=gen).bfloat16()
    indices = torch.ones(20, dtype=torch.long)
    want = reference(x, wide[:, :48], a_stacked, b_stacked, (48,), indices, 1.0)
    for variant in variants():
        got = wide.clone()
        kernel = lora_kernel.load()
        assert kernel is not None
        kernel.use_amx = variant == "amx"
        layer = lora_kernel.PackedLayer(a_stacked, b_stacked, (48,))
        assert lora_kernel.run(kernel, layer, x, got[:, :48], torch.arange(20).int(), indices.int(), 1.0)
        torch.testing.assert_close(got[:, :48].float(), want, rtol=2e-2, atol=2e-2)
        assert torch.equal(got[:, 48:], wide[:, 48:])


def _one_layer(k: int, slots: int = 2, rank: int = 16, sizes: tuple[int, ...] = (48,)):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(k)
    a_stacked = tuple(torch.randn(slots, 1, rank, k, generator=gen).bfloat16() * 0.05 for _ in sizes)
    b_stacked = tuple(torch.randn(slots, 1, n, rank, generator=gen).bfloat16() * 0.05 for n in sizes)
    return gen, a_stacked, b_stacked, lora_kernel.PackedLayer(a_stacked, b_stacked, sizes)


def test_a_y_narrower_than_the_layer_output_is_refused_before_the_c_call() -> None:
    """The C code writes sum(sizes) columns of each row: a narrower y would be written past its end."""
    kernel = lora_kernel.load()
    assert kernel is not None
    gen, _, _, layer = _one_layer(64, sizes=(32, 16))
    x = torch.randn(4, 64, generator=gen).bfloat16()
    backing = torch.randn(4, 48, generator=gen).bfloat16()  # y's columns 40..48 belong to someone else
    rows = lora_kernel.Rows(torch.arange(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32))
    call = lora_kernel.bind(kernel, layer)
    assert call is not None
    before = backing.clone()
    with pytest.raises(lora_kernel.KernelCallError, match="40 columns"):
        call(x, backing[:, :40], rows, 1.0)
    assert torch.equal(backing, before), "nothing may be written when the call is refused"


def test_a_slot_index_beyond_the_packed_slots_is_refused_before_the_c_call() -> None:
    kernel = lora_kernel.load()
    assert kernel is not None
    gen, _, _, layer = _one_layer(64, slots=2)
    x = torch.randn(3, 64, generator=gen).bfloat16()
    y = torch.randn(3, 48, generator=gen).bfloat16()
    before = y.clone()
    call = lora_kernel.bind(kernel, layer)
    assert call is not None
    rows = lora_kernel.Rows(torch.arange(3, dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(lora_kernel.KernelCallError, match="slot 2"):
        call(x, y, rows, 1.0)
    assert torch.equal(y, before)
    with pytest.raises(lora_kernel.KernelCallError, match="negative"):
        lora_kernel.Rows(torch.arange(3, dtype=torch.int32), torch.tensor([0, -1, 1], dtype=torch.int32))
    with pytest.raises(lora_kernel.KernelCallError, match="int32"):
        lora_kernel.Rows(torch.arange(3), torch.zeros(3, dtype=torch.int32))


def test_a_layer_wider_than_the_amx_tiles_runs_on_avx512_not_the_torch_path() -> None:
    """K > 16384 (padded to 32) is refused by the AMX variant: the selector picks AVX512 for it."""
    kernel = lora_kernel.load()
    assert kernel is not None
    k = lora_kernel.AMX_MAX_K + 40
    gen, a_stacked, b_stacked, layer = _one_layer(k, rank=8)
    _, _, _, narrow = _one_layer(1024, rank=8)
    saved = kernel.use_amx
    kernel.use_amx = True  # the choice alone (no call), so it holds on CPUs without AMX too
    try:
        assert kernel.pick(layer) is kernel.avx512
        assert kernel.pick(narrow) is kernel.amx
    finally:
        kernel.use_amx = saved
    x = torch.randn(6, k, generator=gen).bfloat16()
    y = torch.randn(6, 48, generator=gen).bfloat16()
    indices = torch.tensor([1, -1, 0, 1, -1, 1])
    want = reference(x, y, a_stacked, b_stacked, (48,), indices, 0.5)
    for variant in variants():  # on an AMX CPU the default (AMX) selection must still run it
        got = fused(variant, x, y, a_stacked, b_stacked, (48,), indices, 0.5)
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2, msg=variant)


def test_the_install_step_builds_the_library_once(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env = {"LORA_PLATFORM_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "serving.engine.cpu.lora_kernel"]
    first = subprocess.run(cmd, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    built = list((tmp_path / "kernels").glob("lora_bf16-*.so"))
    assert len(built) == 1 and str(built[0]) in first.stdout
    mtime = built[0].stat().st_mtime_ns
    again = subprocess.run(cmd, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert again.returncode == 0 and built[0].stat().st_mtime_ns == mtime  # not rebuilt
    assert not list((tmp_path / "kernels").glob("*.tmp"))


def test_repacking_one_slot_equals_packing_from_scratch() -> None:
    gen = torch.Generator().manual_seed(3)
    a_stacked = tuple(torch.randn(3, 1, 8, 64, generator=gen).bfloat16() for _ in range(2))
    b_stacked = tuple(torch.randn(3, 1, 40, 8, generator=gen).bfloat16() for _ in range(2))
    layer = lora_kernel.PackedLayer(a_stacked, b_stacked, (40, 40))
    a_addr, b_addr = layer.a.data_ptr(), layer.b.data_ptr()
    for w in (*a_stacked, *b_stacked):  # a new adapter lands in slot 1
        w[1].normal_(generator=gen)
    layer.repack([1])
    fresh = lora_kernel.PackedLayer(a_stacked, b_stacked, (40, 40))
    assert torch.equal(layer.a, fresh.a) and torch.equal(layer.b, fresh.b)
    assert (layer.a.data_ptr(), layer.b.data_ptr()) == (a_addr, b_addr), "bound calls hold these addresses"


@pytest.mark.parametrize(
    "shape",
    [*SHAPES, (64, 5, (40,)), (577, 7, (33, 9))],  # odd ranks: a last row without its pair
    ids=lambda s: f"K{s[0]}-r{s[1]}-{'x'.join(map(str, s[2]))}",
)
def test_the_compiled_packing_writes_what_the_torch_packing_writes(shape) -> None:  # type: ignore[no-untyped-def]
    """PackedLayer packs with the library's lora_pack_pairs (one C call per slice and matrix; pairs
    of rows moved as 32-bit words where they lie side by side, one element at a time otherwise);
    the strided torch copies it replaced write the same blocks."""
    k, rank, sizes = shape
    gen = torch.Generator().manual_seed(k)
    a_stacked = tuple(torch.randn(3, 1, rank, k, generator=gen).bfloat16() for _ in sizes)
    b_stacked = tuple(torch.randn(3, 1, n + 5, rank, generator=gen).bfloat16() for n in sizes)
    layer = lora_kernel.PackedLayer(a_stacked, b_stacked, sizes)
    compiled = layer.pack(1)
    torch_copies = layer.pack(1, compiled=False)
    assert torch.equal(compiled[0], torch_copies[0]) and torch.equal(compiled[1], torch_copies[1])


def test_an_adapter_packed_once_takes_a_slot_again_without_vllms_weights() -> None:
    """Blocks packed from one adapter and kept (the engine keeps them with vLLM's LoRAModel) give
    that adapter's outputs when a slot is pointed back at them, after another adapter took the slot
    in vLLM's stacked weights; the layer holds the blocks a slot points at."""
    kernel = lora_kernel.load()
    assert kernel is not None
    gen, a_stacked, b_stacked, layer = _one_layer(64, sizes=(40, 24))
    x = torch.randn(12, 64, generator=gen).bfloat16()
    y = torch.randn(12, 64, generator=gen).bfloat16()
    indices = torch.ones(12, dtype=torch.long)
    want = reference(x, y, a_stacked, b_stacked, (40, 24), indices, 1.0)
    kept = layer.pack(1)
    for w in (*a_stacked, *b_stacked):  # another adapter lands in slot 1
        w[1].normal_(generator=gen).mul_(0.05)
    layer.repack([1])
    other = reference(x, y, a_stacked, b_stacked, (40, 24), indices, 1.0)
    layer.point(1, kept)
    del kept
    rows = torch.arange(12).int()
    for variant in variants():
        kernel.use_amx = variant == "amx"
        got = y.clone()
        assert lora_kernel.run(kernel, layer, x, got, rows, indices.int(), 1.0)
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2, msg=variant)
    layer.repack([1])  # back to the adapter now in vLLM's weights
    got = y.clone()
    assert lora_kernel.run(kernel, layer, x, got, rows, indices.int(), 1.0)
    torch.testing.assert_close(got.float(), other, rtol=2e-2, atol=2e-2)
    with pytest.raises(lora_kernel.KernelCallError):
        layer.point(0, _one_layer(96, sizes=(40, 24))[3].pack(0))


def test_an_adapter_taken_from_its_own_weights_gives_its_outputs_and_vllms_copy_waits() -> None:
    """CompiledLoRA.take (before vLLM's set_lora): the slot points at blocks packed from the
    adapter's own weights (rank 8 in a rank-16 layer), the same blocks packing vLLM's stacked
    weights would give; vLLM's copy is made only when the torch path runs for the layer."""
    from serving.engine.cpu.cpu_lora import CompiledLoRA, StepPlan

    gen, a_stacked, b_stacked, _ = _one_layer(64, slots=3, sizes=(40, 24))
    x = torch.randn(6, 64, generator=gen).bfloat16()
    y = torch.randn(6, 64, generator=gen).bfloat16()
    plan = StepPlan(torch.full((6,), 2), torch.full((6,), 2))
    compiled = CompiledLoRA()
    assert compiled.run(y.clone(), x, a_stacked, b_stacked, (40, 24), plan, 1.0)  # binds the layer
    lora_a = [torch.randn(8, 64, generator=gen).bfloat16() * 0.05 for _ in range(2)]
    lora_b = [torch.randn(n, 8, generator=gen).bfloat16() * 0.05 for n in (40, 24)]
    copies = []

    def copy() -> None:  # what vLLM's set_lora does to the stacked weights
        for w, a in zip(a_stacked, lora_a, strict=True):
            w[2].zero_()
            w[2, 0, :8].copy_(a)
        for w, b in zip(b_stacked, lora_b, strict=True):
            w[2].zero_()
            w[2, 0, : b.shape[0], :8].copy_(b)
        copies.append(2)

    assert compiled.take(a_stacked, 2, lora_a, lora_b, copy)
    adapter_a = tuple(torch.zeros_like(w) for w in a_stacked)
    adapter_b = tuple(torch.zeros_like(w) for w in b_stacked)
    for w, a in zip(adapter_a, lora_a, strict=True):
        w[2, 0, :8] = a
    for w, b in zip(adapter_b, lora_b, strict=True):
        w[2, 0, : b.shape[0], :8] = b
    want = reference(x, y, adapter_a, adapter_b, (40, 24), torch.full((6,), 2), 1.0)
    got = y.clone()
    assert compiled.run(got, x, a_stacked, b_stacked, (40, 24), plan, 1.0)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    assert not copies, "vLLM's copy waits while only the compiled op reads the layer"

    assert not compiled.run(y.float(), x.float(), a_stacked, b_stacked, (40, 24), plan, 1.0)
    assert copies == [2], "the torch path reads vLLM's stacked weights: the copy is made first"
    layer = compiled._layers[id(a_stacked)][1]  # type: ignore[index]
    taken, packed = layer._held[2], layer.pack(2)
    assert torch.equal(taken[0], packed[0]) and torch.equal(taken[1], packed[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({}, "default"),
        ({"LORA_PLATFORM_NO_AMX_LORA": "1"}, "avx512"),
        ({"LORA_PLATFORM_NO_FUSED_LORA": "1"}, None),
    ],
    ids=["compiled-default", "compiled-avx512", "torch-path"],
)
def test_a_bf16_engine_serves_adapters_through_the_compiled_op(tmp_path, tiny_base, env, path) -> None:  # type: ignore[no-untyped-def]
    """Adapters taking turns in one slot: each comes back with its own outputs (slots are re-packed)."""
    import os

    from tests.serving.fixtures import random_adapter

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    first = random_adapter(tmp_path / "a", 8, targets)
    second = random_adapter(tmp_path / "b", 4, targets)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.serving.bf16_engine", str(tiny_base.path), str(first), str(second)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["plugin"]
    if path is None:
        assert out["kernel"] is None
    else:
        assert out["kernel"] in ({"amx", "avx512"} if path == "default" else {path})
    assert out["a"] != out["base"] and out["b"] != out["a"], "adapters must change the outputs"
    assert out["a_again"] == out["a"], "an adapter back in a re-used slot must give its own outputs"
