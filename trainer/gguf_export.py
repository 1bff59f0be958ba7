"""A registry version for llama.cpp and Ollama: `platform export REF --format gguf|gguf-merged|ollama`.

- `gguf`: the adapter as a GGUF LoRA, as llama.cpp's `convert_lora_to_gguf.py` writes it
  (`general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha`; each adapted weight's GGUF
  name plus `.lora_a` / `.lora_b`), loaded with `llama-server --lora FILE`.
- `gguf-merged`: the adapter merged into its base (peft `merge_and_unload`), as one GGUF model
  (f16, or q8_0 for the 2-D weights).
- `ollama`: the base model as GGUF (with its chat template in `tokenizer.chat_template`), the
  adapter GGUF, and a `Modelfile` (`FROM` the base, `ADAPTER` the adapter); `ollama create NAME -f
  Modelfile` in the folder.

The version's model card (README.md) and lineage.json are copied beside every export, with
`export.json` naming the version and files. The tensors are written with the `gguf` package (the
library llama.cpp's converters write with); the HF -> GGUF name mapping is the package's
`TensorNameMap`. What llama.cpp's converter script adds on top, for the Llama and Qwen2 families
only (the two whose details are reproduced here): Llama's q/k rows are permuted for its rotary
layout, a BPE vocabulary from `tokenizer.json`, and the hyperparameters llama.cpp reads.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.store import Version
from trainer.errors import TrainerError

FORMATS = ("gguf", "gguf-merged", "ollama")
QUANTS = ("f16", "q8_0")
ADAPTER_FILE = "adapter.gguf"


@dataclass(frozen=True)
class Arch:
    gguf_arch: Any
    """gguf.MODEL_ARCH member."""
    permute_qk: bool
    """Llama: q/k rows reordered for llama.cpp's rotary layout (convert_hf_to_gguf's `permute`)."""


def _arch(hf_config: dict[str, Any]) -> Arch:
    import gguf

    known = {
        "LlamaForCausalLM": Arch(gguf.MODEL_ARCH.LLAMA, True),
        "MistralForCausalLM": Arch(gguf.MODEL_ARCH.LLAMA, True),
        "Qwen2ForCausalLM": Arch(gguf.MODEL_ARCH.QWEN2, False),
    }
    names = hf_config.get("architectures") or []
    for name in names:
        if name in known:
            return known[name]
    raise TrainerError(
        f"GGUF export supports Llama, Mistral and Qwen2 base models; this base is {names or 'unknown'} "
        "(use llama.cpp's convert_lora_to_gguf.py on the version folder)"
    )


def _permute(rows: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """convert_hf_to_gguf.py's LlamaModel.permute, on a weight's (or lora_B's) output rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _rows(name: str, data: Any, hf: dict[str, Any], arch: Arch) -> Any:
    """Permute q/k output rows for Llama-family models; every other tensor as it is."""
    if not arch.permute_qk:
        return data
    heads = int(hf["num_attention_heads"])
    if name.endswith("q_proj"):
        return _permute(data, heads, heads)
    if name.endswith("k_proj"):
        return _permute(data, heads, int(hf.get("num_key_value_heads", heads)))
    return data


def _name_map(arch: Arch, hf: dict[str, Any]) -> Any:
    import gguf

    return gguf.get_tensor_name_map(arch.gguf_arch, int(hf["num_hidden_layers"]))


def write_lora_gguf(adapter_dir: Path, base_dir: Path, out: Path, name: str) -> Path:
    """The adapter in `adapter_dir` (peft, safetensors) as a GGUF LoRA for the base in `base_dir`."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    hf = json.loads((base_dir / "config.json").read_text())
    arch = _arch(hf)
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise TrainerError(
            "GGUF LoRA holds one alpha: adapters with rank_pattern/alpha_pattern cannot be exported"
        )
    rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    if cfg.get("use_rslora"):  # llama.cpp scales by alpha/r; rsLoRA's alpha/sqrt(r) needs alpha*sqrt(r)
        alpha *= math.sqrt(rank)
    names = _name_map(arch, hf)
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        stem = key.removeprefix("base_model.model.")
        for marker, part in ((".lora_A.", "a"), (".lora_B.", "b")):
            if marker in stem:
                pairs.setdefault(stem.split(marker)[0], {})[part] = value
                break
        else:
            raise TrainerError(f"{key}: not a LoRA factor; only plain LoRA adapters export to GGUF")
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    for module in sorted(pairs):
        dest = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if dest is None or set(pairs[module]) != {"a", "b"}:
            raise TrainerError(f"{module}: no llama.cpp tensor for this module (or half a LoRA pair)")
        a = np.ascontiguousarray(pairs[module]["a"], dtype=np.float32)
        b = np.ascontiguousarray(_rows(module, pairs[module]["b"].astype(np.float32), hf, arch))
        writer.add_tensor(f"{dest}.lora_a", a)
        writer.add_tensor(f"{dest}.lora_b", b)
    _finish(writer)
    return out


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model_gguf(model_dir: Path, out: Path, name: str, quant: str = "f16") -> Path:
    """A Hugging Face model folder (safetensors, BPE tokenizer.json) as one GGUF model file."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    if quant not in QUANTS:
        raise TrainerError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    hf = json.loads((model_dir / "config.json").read_text())
    arch = _arch(hf)
    names = _name_map(arch, hf)
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    _hyperparameters(writer, hf, name, quant)
    _vocabulary(writer, model_dir)
    qtype = gguf.GGMLQuantizationType.Q8_0 if quant == "q8_0" else gguf.GGMLQuantizationType.F16
    for f in sorted(model_dir.glob("*.safetensors")):
        for key, value in load_file(str(f)).items():
            dest = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if dest is None:
                raise TrainerError(f"{key}: no llama.cpp tensor for this weight")
            data = _rows(key.removesuffix(".weight"), value.astype(np.float32), hf, arch)
            if data.ndim == 1:  # norms stay f32, as llama.cpp's converter keeps them
                writer.add_tensor(dest, data)
                continue
            if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
                qt = gguf.GGMLQuantizationType.F16  # q8_0 needs rows in blocks of 32
            else:
                qt = qtype
            writer.add_tensor(dest, gguf.quants.quantize(data, qt), raw_dtype=qt)
    _finish(writer)
    return out


def _hyperparameters(writer: Any, hf: dict[str, Any], name: str, quant: str) -> None:
    import gguf

    heads = int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or hf["hidden_size"] // heads)
    rope = hf.get("rope_parameters") or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(int(hf.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(hf["hidden_size"]))
    writer.add_block_count(int(hf["num_hidden_layers"]))
    writer.add_feed_forward_length(int(hf["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(hf.get("num_key_value_heads", heads)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(hf.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(hf["vocab_size"]))


def _vocabulary(writer: Any, model_dir: Path) -> None:
    import gguf

    try:
        vocab = gguf.vocab.BpeVocab(model_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainerError(f"GGUF export needs a byte-level BPE tokenizer.json: {exc}") from exc
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.vocab.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    template = model_dir / "chat_template.jinja"
    if special.chat_template is None and template.is_file():
        special.chat_template = template.read_text()
    special.add_to_gguf(writer, quiet=True)


def export_version(
    version: Version, base_dir: Path, out: Path, fmt: str, quant: str = "f16", merged_dir: Path | None = None
) -> list[Path]:
    """Write `version` to the folder `out` in format `fmt`; returns the files written. `merged_dir`
    (gguf-merged) is the merged model's Hugging Face folder (`trainer.merge.merge`)."""
    if fmt not in FORMATS:
        raise TrainerError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out.mkdir(parents=True, exist_ok=True)
    stem = version.ref.replace("@", "-")
    written: list[Path] = []
    if fmt in ("gguf", "ollama"):
        written.append(write_lora_gguf(version.path, base_dir, out / ADAPTER_FILE, version.ref))
    if fmt == "gguf-merged":
        if merged_dir is None:
            raise TrainerError("gguf-merged needs the merged model folder")
        written.append(write_model_gguf(merged_dir, out / f"{stem}-{quant}.gguf", version.ref, quant))
    if fmt == "ollama":
        base_file = write_model_gguf(base_dir, out / f"base-{quant}.gguf", version.base_model, quant)
        written += [base_file, _modelfile(out, base_file.name, base_dir)]
    for f in ("README.md", "lineage.json"):  # the model card and lineage travel with the export
        if (version.path / f).is_file():
            shutil.copyfile(version.path / f, out / f)
            written.append(out / f)
    record = {"version": version.ref, "format": fmt, "quant": quant, "files": [p.name for p in written]}
    (out / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return [*written, out / "export.json"]


def _modelfile(out: Path, base_file: str, base_dir: Path) -> Path:
    """Ollama's Modelfile: the base, the adapter, and the chat template beside them. Ollama picks
    its prompt template from the base GGUF's `tokenizer.chat_template`; the Jinja file is copied
    for reference (Ollama's TEMPLATE is Go template syntax, not Jinja)."""
    lines = [f"FROM ./{base_file}", f"ADAPTER ./{ADAPTER_FILE}"]
    template = base_dir / "chat_template.jinja"
    if template.is_file():
        shutil.copyfile(template, out / "chat_template.jinja")
        lines.insert(
            0, "# chat template: chat_template.jinja (also in the base GGUF's tokenizer.chat_template)"
        )
    path = out / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def export(ref: str, out: Path, fmt: str, quant: str = "f16", registry_root: str | None = None) -> list[Path]:
    """`platform export`: resolve `ref` (its base must be the local one), merge it first for
    gguf-merged, and write the export into the folder `out` (which must be empty or new)."""
    import tempfile

    from trainer.loading import resolve_adapters
    from trainer.merge import merge

    if out.exists() and any(out.iterdir()):
        raise TrainerError(f"{out}: output folder is not empty")
    base, versions = resolve_adapters([ref], registry_root)
    version = versions[0]
    assert version is not None  # a reference, never `base`
    if fmt != "gguf-merged":
        return export_version(version, Path(base.path), out, fmt, quant)
    with tempfile.TemporaryDirectory() as tmp:
        merged = merge(version.ref, Path(tmp) / "merged", registry_root)
        return export_version(version, Path(base.path), out, fmt, quant, merged_dir=merged)
