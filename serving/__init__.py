"""OpenAI-compatible multi-LoRA server on an in-process vLLM engine."""
