"""The OpenAI-compatible language-model service: continuous batching over transformers, many LoRA adapters on one
base model, served by BentoML (see docs/llm-serving.md)."""
