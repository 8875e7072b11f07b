"""Causal language models: sources, corpora, training (full and LoRA), evaluation; the same steps as classifiers."""
