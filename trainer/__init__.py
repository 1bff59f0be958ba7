"""Fine-tuning: JSONL data -> LoRA/QLoRA adapter (transformers + peft) -> evaluation -> registry."""
