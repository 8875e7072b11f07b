"""Builders shared by the LM compression tests: lm-data splits on disk and a tiny trained Llama (hidden 64).

Everything is built here, offline, in seconds: Python's own documentation is the corpus and its docstrings the
fine-tuning set; the model is trained briefly so its greedy completions are not noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HIDDEN, LAYERS, VOCAB, CONTEXT, MAX_LENGTH = 64, 4, 320, 96, 48


def write_lm_splits(root: Path, *, train_examples: int = 96, heldout_examples: int = 12,
                    corpus: bool = True) -> Path:
    """The lm-data step's layout: finetune/{train,heldout}.jsonl (and corpus/ when asked), no network."""
    from kubeforge.lm.corpus import pydoc_topics, stdlib_docstring_examples, write_items

    examples = stdlib_docstring_examples(limit=train_examples + heldout_examples)
    write_items(examples[:train_examples], root / "finetune" / "train.jsonl")
    write_items(examples[train_examples:], root / "finetune" / "heldout.jsonl")
    if corpus:
        documents = pydoc_topics()[:12]
        write_items(documents[:10], root / "corpus" / "train.jsonl")
        write_items(documents[10:], root / "corpus" / "heldout.jsonl")
    return root


def build_tiny_lm(directory: Path, data_dir: Path, *, steps: int = 60, layers: int = LAYERS, seed: int = 0,
                  architecture: str = "llama") -> Path:
    """A Llama with hidden 64 (or a GPT-2 of the same size), tokenizer trained on the corpus, a few AdamW steps on
    the fine-tuning rows; saved as safetensors + JSON."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from kubeforge.compression.lm_distill import train_student
    from kubeforge.lm.corpus import read_documents, read_examples
    from kubeforge.lm.sequences import encode_examples
    from kubeforge.lm.tokenizer import train_tokenizer

    texts = [d.text for d in read_documents(data_dir / "corpus" / "train.jsonl")]
    tokenizer = train_tokenizer(texts, VOCAB, model_max_length=CONTEXT)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=4, vocab_size=len(tokenizer),
                                           n_positions=CONTEXT, **special))
    else:
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=CONTEXT,
            tie_word_embeddings=True, **special))
    if steps:
        rows = encode_examples(read_examples(data_dir / "finetune" / "train.jsonl"), tokenizer, MAX_LENGTH)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train_student(model, rows, steps=steps, seed=seed, learning_rate=3e-3)
        finally:
            torch.set_num_threads(threads)
    model.eval().save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def lm_settings(**overrides):
    """An LMCompressConfig sized for tests: one timing round, few training steps."""
    from kubeforge.config import LMCompressConfig

    values = dict(lm_compress_methods=["int8-weight"], lm_bench_rounds=1, lm_distill_steps=4, heal_steps=2,
                  int4_group_size=16, max_perplexity_increase=50.0, min_greedy_agreement=0.0)
    values.update(overrides)
    return LMCompressConfig(**values)


def lm_data_config(**overrides):
    from kubeforge.config import LMDataConfig

    return LMDataConfig(**{"max_length": MAX_LENGTH, "eval_prompts": 4, **overrides})


def random_llama(*, hidden: int = 32, layers: int = 2, vocab: int = VOCAB, context: int = 64, seed: int = 0,
                 tied: bool = True):
    """An untrained Llama (for interface tests that need no learnt behaviour)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                        max_position_embeddings=context, tie_word_embeddings=tied,
                                        bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()


def corpus_tokenizer(context: int = 64):
    from pydoc_data.topics import topics

    from kubeforge.lm.tokenizer import train_tokenizer

    return train_tokenizer([topics[name][:2000] for name in sorted(topics)[:10]], VOCAB, model_max_length=context)


@pytest.fixture
def offline_one_thread(monkeypatch, tmp_path_factory):
    """Offline Hub with an empty cache, and one torch thread: the machine is shared, and two threads ran training
    10x slower than one under its load."""
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    home = tmp_path_factory.mktemp("empty-hf-home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
