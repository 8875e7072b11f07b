"""Tiny causal LMs (hidden 48, two layers, ~60k parameters) and LoRA adapters made with peft, built on disk once per
session: everything the LLM service tests serve. Offline: nothing here may reach the Hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kubeforge.llm.server import LLMServer

TEST_VOCAB = 320
TEST_CONTEXT = 96


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    home = tmp_path_factory.mktemp("empty-hf-home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


def build_tiny_lm(destination: Path, *, seed: int = 0, context: int = TEST_CONTEXT, layers: int = 2) -> Path:
    """A randomly initialised Llama with a byte-level BPE trained on Python's own docs, saved as safetensors."""
    import torch
    from pydoc_data.topics import topics
    from transformers import LlamaConfig, LlamaForCausalLM

    from kubeforge.lm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([topics[name][:2000] for name in sorted(topics)[:10]], TEST_VOCAB,
                                model_max_length=context)
    config = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=context,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so greedy text varies instead of repeating
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(destination, safe_serialization=True)
    tokenizer.save_pretrained(destination)
    return destination


def build_adapter(base_dir: Path, destination: Path, *, seed: int, rank: int = 4,
                  targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A LoRA adapter with random A and B (peft's init_lora_weights=False), so it changes the base's output."""
    import torch
    from peft import LoraConfig, get_peft_model

    from kubeforge.lm.sources import load_causal_lm

    model, _ = load_causal_lm(base_dir)
    torch.manual_seed(seed)
    wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                               init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 0.5)
    wrapped.save_pretrained(destination, safe_serialization=True)
    return destination


@pytest.fixture(scope="session")
def llm_base_dir(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("llm-base") / "model")


@pytest.fixture(scope="session")
def llm_adapters(tmp_path_factory, llm_base_dir) -> dict[str, Path]:
    """Two adapters of different ranks and targets: alpha (q, v; r 4) and beta (q, k, v, o; r 8)."""
    root = tmp_path_factory.mktemp("llm-adapters")
    return {"alpha": build_adapter(llm_base_dir, root / "alpha", seed=1),
            "beta": build_adapter(llm_base_dir, root / "beta", seed=2, rank=8,
                                  targets=("q_proj", "k_proj", "v_proj", "o_proj"))}


@pytest.fixture(scope="session")
def watched_adapters(tmp_path_factory):
    return tmp_path_factory.mktemp("watched-adapters")


@pytest.fixture(scope="session")
def llm_server(llm_base_dir, llm_adapters, watched_adapters, tmp_path_factory):
    running = LLMServer(tmp_path_factory.mktemp("llm-server"), KUBEFORGE_LLM_MODEL=str(llm_base_dir),
                        KUBEFORGE_LLM_ADAPTERS=",".join(f"{n}={p}" for n, p in llm_adapters.items()),
                        KUBEFORGE_LLM_ADMIN_API="true", KUBEFORGE_LLM_ADAPTERS_DIR=str(watched_adapters),
                        KUBEFORGE_LLM_WATCH_INTERVAL_S="0.3", KUBEFORGE_LLM_MAX_TOKENS_LIMIT="64",
                        KUBEFORGE_LLM_DEFAULT_MAX_TOKENS="16", KUBEFORGE_LLM_MAX_N="4",
                        KUBEFORGE_LLM_MAX_PAYLOAD_BYTES="65536", KUBEFORGE_LLM_THREADS="1")
    try:
        running.wait("/readyz", 200)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def llm_tokenizer(llm_base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_base_dir)
