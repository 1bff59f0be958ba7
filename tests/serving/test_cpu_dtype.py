"""`--dtype auto` on CPU: the model's bf16 only where the CPU has bf16 instructions; float32 on
AVX2-only machines, where bf16 products are emulated (3.5x slower on SmolLM2, docs/design-notes.md)."""

from __future__ import annotations

from serving.engine.cpu.lora_kernel import cpu_dtype

ZEN3 = {"avx", "avx2", "fma", "f16c", "bmi2"}  # AMD EPYC Milan: no AVX512 at all
ZEN4 = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16"}
GRAVITON2 = {"fp", "asimd", "aes", "crc32", "atomics", "asimddp"}  # ARM Neoverse N1: no BF16
GRAVITON3 = GRAVITON2 | {"sve", "bf16", "i8mm"}


def test_auto_is_float32_on_a_cpu_without_bf16_instructions() -> None:
    assert cpu_dtype("auto", ZEN3) == "float32"
    assert cpu_dtype("auto", ZEN3 | {"avx512f", "avx512bw"}) == "float32"  # AVX512 without BF16
    assert cpu_dtype("auto", GRAVITON2) == "float32"


def test_auto_keeps_the_models_dtype_where_bf16_runs_in_hardware() -> None:
    assert cpu_dtype("auto", ZEN4) == "auto"
    assert cpu_dtype("auto", SAPPHIRE_RAPIDS) == "auto"
    assert cpu_dtype("auto", GRAVITON3) == "auto"


def test_auto_is_kept_where_the_cpu_cannot_be_read() -> None:
    assert cpu_dtype("auto", set()) == "auto"


def test_an_explicit_dtype_is_kept() -> None:
    assert cpu_dtype("bfloat16", ZEN3) == "bfloat16"
    assert cpu_dtype("float32", SAPPHIRE_RAPIDS) == "float32"
