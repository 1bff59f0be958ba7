"""The compiled float32 LoRA op (serving/engine/cpu/lora_f32.c) against a float32 reference.

It serves `--dtype float32`, and `--dtype auto` on CPUs without bf16 instructions (AMD Zen 2/3). Every
test runs the variant this CPU gets (`auto`: AVX512F, else AVX2/FMA) and the AVX2 variant forced, so
the AVX2 code is tested on AVX512 machines too, and no CPU with AVX2 leaves the op untested.
"""

from __future__ import annotations

import pytest
import torch

from serving.engine.cpu import lora_kernel
from serving.engine.cpu.cpu_lora import CompiledLoRA, StepPlan
from tests.serving.test_lora_kernel import SHAPES, reference

pytestmark = pytest.mark.skipif(not lora_kernel.cpu_has_avx2(), reason="CPU without AVX2/FMA")

ZEN3 = {"avx", "avx2", "fma", "f16c", "bmi2"}  # AMD EPYC Milan: no AVX512 at all
SKYLAKE_X = ZEN3 | {"avx512f", "avx512bw", "avx512vl"}  # AVX512 without bf16
SAPPHIRE_RAPIDS = SKYLAKE_X | {"avx512_bf16", "amx_tile", "amx_bf16"}
GRAVITON2 = {"fp", "asimd", "asimddp"}


def variants() -> list[str]:
    """This CPU's own float32 variant, and AVX2 forced."""
    own = lora_kernel.load_f32()
    assert own is not None, "a CPU with AVX2/FMA and gcc must get the compiled float32 op"
    return sorted({own.name, "avx2"})


def fused(variant: str, x, y, a_stacked, b_stacked, sizes, indices, scale):  # type: ignore[no-untyped-def]
    kernel = lora_kernel.load_f32(variant)
    assert kernel is not None and kernel.name == variant
    order = torch.argsort(indices, stable=True)
    order = order[indices[order] >= 0]
    out = y.clone()
    layer = lora_kernel.PackedLayer(a_stacked, b_stacked, sizes)
    assert lora_kernel.run(kernel, layer, x, out, order.int(), indices[order].int(), scale)
    return out


def _weights(gen, slots, rank, k, sizes, extra=5):  # type: ignore[no-untyped-def]
    a = tuple(torch.randn(slots, 1, rank, k, generator=gen) * 0.05 for _ in sizes)
    b = tuple(torch.randn(slots, 1, n + extra, rank, generator=gen) * 0.05 for n in sizes)
    return a, b


@pytest.mark.parametrize(
    "shape",
    [*SHAPES, (64, 5, (40,)), (577, 7, (33, 9)), (576, 64, (576, 192, 192))],  # odd ranks, a wide rank
    ids=lambda s: f"K{s[0]}-r{s[1]}-{'x'.join(map(str, s[2]))}",
)
@pytest.mark.parametrize(
    "batch", ["one-adapter", "mixed-with-base", "single-row", "prefill-mixed", "decode-many-adapters"]
)
def test_float32_lora_matches_the_reference(shape, batch) -> None:  # type: ignore[no-untyped-def]
    k, rank, sizes = shape
    gen = torch.Generator().manual_seed(k + rank)
    slots = 4
    a_stacked, b_stacked = _weights(gen, slots, rank, k, sizes)
    rows = {"one-adapter": 40, "mixed-with-base": 37, "single-row": 1, "prefill-mixed": 203}.get(batch, 11)
    x = torch.randn(rows, k, generator=gen)
    y = torch.randn(rows, sum(sizes), generator=gen)
    if batch in ("mixed-with-base", "prefill-mixed"):
        indices = torch.randint(-1, slots, (rows,), generator=gen)
    elif batch == "decode-many-adapters":
        indices = torch.tensor([3, 0, -1, 3, 1, 2, 1, 3, 2, 2, 3])
    else:
        indices = torch.full((rows,), 2)
    want = reference(x, y, a_stacked, b_stacked, sizes, indices, 0.5)
    for variant in variants():
        got = fused(variant, x, y, a_stacked, b_stacked, sizes, indices, 0.5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=variant)
        base_rows = indices < 0
        assert torch.equal(got[base_rows], y[base_rows]), "rows without an adapter must stay untouched"


def test_columns_outside_the_layers_slices_are_never_written() -> None:
    gen = torch.Generator().manual_seed(0)
    a_stacked, b_stacked = _weights(gen, 2, 16, 64, (41,), extra=0)
    wide = torch.randn(20, 80, generator=gen)
    x = torch.randn(20, 64, generator=gen)
    indices = torch.ones(20, dtype=torch.long)
    want = reference(x, wide[:, :41], a_stacked, b_stacked, (41,), indices, 1.0)
    for variant in variants():
        got = wide.clone()
        kernel = lora_kernel.load_f32(variant)
        assert kernel is not None
        layer = lora_kernel.PackedLayer(a_stacked, b_stacked, (41,))
        assert lora_kernel.run(kernel, layer, x, got[:, :41], torch.arange(20).int(), indices.int(), 1.0)
        torch.testing.assert_close(got[:, :41], want, rtol=1e-5, atol=1e-5)
        assert torch.equal(got[:, 41:], wide[:, 41:])


def test_a_float32_kernel_never_takes_bf16_blocks_and_the_bf16_kernel_never_float32() -> None:
    gen = torch.Generator().manual_seed(1)
    a_stacked, b_stacked = _weights(gen, 2, 8, 64, (32,))
    kernel = lora_kernel.load_f32("avx2")
    assert kernel is not None
    bf16_layer = lora_kernel.PackedLayer(
        tuple(w.bfloat16() for w in a_stacked), tuple(w.bfloat16() for w in b_stacked), (32,)
    )
    assert lora_kernel.bind(kernel, bf16_layer) is None
    bf16 = lora_kernel.load()
    if bf16 is not None:
        assert lora_kernel.bind(bf16, lora_kernel.PackedLayer(a_stacked, b_stacked, (32,))) is None
    layer = lora_kernel.PackedLayer(a_stacked, b_stacked, (32,))
    call = lora_kernel.bind(kernel, layer)
    assert call is not None
    rows = lora_kernel.Rows(torch.arange(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32))
    x, y = torch.randn(4, 64).bfloat16(), torch.randn(4, 32).bfloat16()
    assert not call(x, y, rows, 1.0), "bf16 activations go back to the torch path"


def test_a_float32_adapter_taken_from_its_own_weights_gives_its_outputs() -> None:
    """CompiledLoRA.take for float32 layers: the slot points at blocks packed from the adapter's own
    weights (rank 8 in a rank-16 layer), the same blocks packing vLLM's stacked weights gives."""
    gen = torch.Generator().manual_seed(2)
    a_stacked, b_stacked = _weights(gen, 3, 16, 64, (40, 24), extra=0)
    x = torch.randn(6, 64, generator=gen)
    y = torch.randn(6, 64, generator=gen)
    plan = StepPlan(torch.full((6,), 2), torch.full((6,), 2))
    compiled = CompiledLoRA()
    assert compiled.run(y.clone(), x, a_stacked, b_stacked, (40, 24), plan, 1.0), "float32 binds the op"
    lora_a = [torch.randn(8, 64, generator=gen) * 0.05 for _ in range(2)]
    lora_b = [torch.randn(n, 8, generator=gen) * 0.05 for n in (40, 24)]
    copies: list[int] = []
    assert compiled.take(a_stacked, 2, lora_a, lora_b, lambda: copies.append(2))
    adapter_a = tuple(torch.zeros_like(w) for w in a_stacked)
    adapter_b = tuple(torch.zeros_like(w) for w in b_stacked)
    for wa, wb, a, b in zip(adapter_a, adapter_b, lora_a, lora_b, strict=True):
        wa[2, 0, :8] = a
        wb[2, 0, : b.shape[0], :8] = b
    want = reference(x, y, adapter_a, adapter_b, (40, 24), torch.full((6,), 2), 1.0)
    got = y.clone()
    assert compiled.run(got, x, a_stacked, b_stacked, (40, 24), plan, 1.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not copies, "vLLM's copy waits while only the compiled op reads the layer"
    for w, a in zip(a_stacked, adapter_a, strict=True):
        w[2].copy_(a[2])
    for w, b in zip(b_stacked, adapter_b, strict=True):
        w[2].copy_(b[2])
    layer = lora_kernel.PackedLayer(a_stacked, b_stacked, (40, 24))
    taken = compiled._layers[id(a_stacked)][1]._held[2]  # type: ignore[index]
    packed = layer.pack(2)
    assert torch.equal(taken[0], packed[0]) and torch.equal(taken[1], packed[1])


def test_the_float32_variant_follows_the_cpu() -> None:
    assert lora_kernel.f32_variant(ZEN3, "auto") == "avx2"
    assert lora_kernel.f32_variant(SKYLAKE_X, "auto") == "avx512"  # AVX512 without bf16: float32 op
    assert lora_kernel.f32_variant(SAPPHIRE_RAPIDS, "auto") == "avx512"
    assert lora_kernel.f32_variant(GRAVITON2, "auto") is None  # ARM: the torch path
    assert lora_kernel.f32_variant({"avx", "avx2"}, "auto") is None  # AVX2 without FMA


def test_a_forced_variant_runs_only_where_the_cpu_has_it() -> None:
    assert lora_kernel.f32_variant(SAPPHIRE_RAPIDS, "avx2") == "avx2"
    assert lora_kernel.f32_variant(ZEN3, "avx512") is None, "never an instruction the CPU faults on"
    assert lora_kernel.f32_variant(SAPPHIRE_RAPIDS, "torch") is None


@pytest.mark.parametrize(
    ("setting", "f32", "bf16"),
    [("avx2", "avx2", False), ("torch", None, False), ("auto", "own", True), ("AVX2 ", "avx2", False)],
)
def test_the_environment_variable_chooses_the_kernels(monkeypatch, setting, f32, bf16) -> None:  # type: ignore[no-untyped-def]
    own = lora_kernel.f32_variant(want="auto")
    monkeypatch.setenv(lora_kernel.ENV_KERNEL, setting)
    lora_kernel.load.cache_clear()
    lora_kernel.load_f32.cache_clear()
    try:
        kernel = lora_kernel.for_dtype(torch.float32)
        assert (kernel.name if kernel else None) == (own if f32 == "own" else f32)
        assert (lora_kernel.for_dtype(torch.bfloat16) is not None) == (bf16 and lora_kernel.cpu_supported())
    finally:
        monkeypatch.delenv(lora_kernel.ENV_KERNEL)
        lora_kernel.load.cache_clear()
        lora_kernel.load_f32.cache_clear()


def test_an_unknown_setting_is_logged_and_means_auto(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(lora_kernel.ENV_KERNEL, "avx1024")
    assert lora_kernel.requested() == "auto"
    assert "avx1024" in caplog.text


@pytest.mark.slow
def test_a_float32_engine_serves_adapters_through_each_variant_as_the_torch_path_does(
    tmp_path, tiny_base
) -> None:  # type: ignore[no-untyped-def]
    """A float32 vLLM engine (what `--dtype float32` and `--dtype auto` on AVX2 CPUs serve): its LoRA
    layers run on this CPU's variant and on AVX2 forced, adapters taking turns in one slot, and each
    gives the torch path's greedy tokens."""
    import json
    import os
    import subprocess
    import sys

    from tests.serving.fixtures import random_adapter

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    first = random_adapter(tmp_path / "a", 8, targets)
    second = random_adapter(tmp_path / "b", 4, targets)
    cmd = [sys.executable, "-m", "tests.serving.bf16_engine", str(tiny_base.path), str(first), str(second)]
    runs = {}
    # "avx2" forced only where the CPU's own choice is another variant (each setting starts an engine)
    forced = ("avx2",) if lora_kernel.f32_variant(want="auto") != "avx2" else ()
    for setting in ("torch", "auto", *forced):
        env = {**os.environ, lora_kernel.ENV_KERNEL: setting}
        proc = subprocess.run([*cmd, "float32"], capture_output=True, text=True, timeout=300, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, proc.stderr[-3000:]
        runs[setting] = json.loads(lines[-1].removeprefix("RESULT "))
    assert runs["torch"]["kernel"] is None and runs["torch"]["layers_bound"] == 0
    assert runs["auto"]["kernel"] == lora_kernel.f32_variant(want="auto")
    assert all(runs[s]["kernel"] == s for s in forced)
    for setting in ("auto", *forced):
        out = runs[setting]
        assert out["layers_bound"] > 0, f"{setting}: no LoRA layer ran on the compiled op"
        assert out["a"] != out["base"] and out["b"] != out["a"], "adapters must change the outputs"
        assert out["a_again"] == out["a"], "an adapter back in a re-used slot must give its own outputs"
        for key in ("base", "a", "b"):
            assert out[key] == runs["torch"][key], (setting, key)


def test_the_install_step_builds_the_float32_libraries_where_the_compiler_has_no_amx(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`make setup` with a compiler that rejects the bf16 library's AMX flags (an older gcc) still
    builds the float32 ones: an AVX2 machine gets its op."""
    import os
    import shutil
    import subprocess
    import sys

    cc = tmp_path / "cc"
    gcc = shutil.which("gcc")
    assert gcc
    cc.write_text(
        f'#!/bin/sh\ncase "$*" in *amx*) echo "unknown -mamx-tile" >&2; exit 1;; esac\nexec {gcc} "$@"\n'
    )
    cc.chmod(0o755)
    env = {"LORA_PLATFORM_HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"], "CC": str(cc)}
    proc = subprocess.run(
        [sys.executable, "-m", "serving.engine.cpu.lora_kernel"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    built = sorted(p.name.split("-")[0] for p in (tmp_path / "home" / "kernels").glob("*.so"))
    assert built == ["lora_f32_avx2", "lora_f32_avx512"], proc.stdout
    assert "lora_bf16 not built" in proc.stdout
