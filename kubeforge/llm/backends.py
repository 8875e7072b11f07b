"""The engine's model backends: what runs a batch's prefill and decode steps and keeps its KV cache.

The engine (kubeforge.llm.engine) schedules rows; a backend computes them. Both backends hand back the last
position's logits per row as a torch tensor and a batch object whose rows join (``extend``), leave (``select``) and
repeat (``repeat_rows``, n choices of one prompt) between steps:

- ``TorchBackend``: a transformers model with per-row LoRA adapters (kubeforge.llm.adapters), its batch a
  left-padded DynamicCache (kubeforge.llm.kv_batch). Serves plain Hugging Face directories.
- ``RunnerBackend``: a ``kubeforge.lm.inference`` runner, the one the compression harness measured: ONNX Runtime
  over ``model.onnx`` or torch over a torchao-quantised directory. Its batch is the runner's DecodeState, joined and
  split with ``concat_states`` / ``select_rows``. No adapters: a LoRA fine-tune is merged before it is compressed.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import DynamicCache

from kubeforge.llm.adapters import AdapterBank
from kubeforge.llm.kv_batch import KVBatch, check_full_attention, prefill_inputs
from kubeforge.lm.inference import (DecodeState, artifact_kind, concat_states, left_pad, open_runner, read_model_config,
                                    select_rows)
from kubeforge.models import ModelError


class RowBatch(Protocol):
    rows: int

    def extend(self, other: Any) -> None: ...

    def select(self, rows: list[int]) -> None: ...

    def repeat_rows(self, counts: list[int]) -> None: ...


class ModelBackend(Protocol):
    kind: str  # "torch" (transformers + adapters), "onnx" or "torchao" (through a kubeforge.lm.inference runner)
    device: torch.device  # where the logits are (and sampling runs)
    pad_id: int

    def prefill(self, prompts: list[list[int]], slots: list[int]) -> tuple[torch.Tensor, RowBatch]:
        """The last position's logits [rows, vocab] of each prompt (left-padded together) and their batch."""

    def decode(self, batch: Any, tokens: list[int], slots: list[int]) -> torch.Tensor:
        """Feed one token per row of ``batch``; the logits [rows, vocab] of the next."""


class TorchBackend:
    kind = "torch"

    def __init__(self, bank: AdapterBank, pad_id: int):
        self.bank = bank
        self.pad_id = pad_id
        self.device = bank.device
        accepted = inspect.signature(bank.model.forward).parameters
        self._cache_keyword = "cache" if "cache" in accepted else "past_key_values"
        # compute the prefill's logits for the last position only (the LM head over every prompt token is waste)
        self._prefill_extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self._checked_cache = False

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: DynamicCache,
                 slots: list[int], **extra: Any) -> torch.Tensor:
        with self.bank.rows(slots):
            output = self.bank.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                     **{self._cache_keyword: cache}, **extra)
        return output.logits[:, -1, :]

    def prefill(self, prompts: list[list[int]], slots: list[int]) -> tuple[torch.Tensor, KVBatch]:
        ids, mask, positions = prefill_inputs(prompts, self.pad_id, self.device)
        cache = DynamicCache(config=self.bank.model.config)
        padded = len({len(prompt) for prompt in prompts}) > 1
        logits = self._forward(ids, mask if padded else None, positions, cache, slots, **self._prefill_extra)
        if not self._checked_cache:
            check_full_attention(cache)
            self._checked_cache = True
        return logits, KVBatch(cache=cache, mask=mask, lengths=[len(prompt) for prompt in prompts])

    def decode(self, batch: KVBatch, tokens: list[int], slots: list[int]) -> torch.Tensor:
        ids = torch.tensor([[token] for token in tokens], device=self.device)
        mask, positions = batch.decode_inputs()
        return self._forward(ids, mask, positions, batch.cache, slots)


@dataclass
class RunnerBatch:
    state: DecodeState

    @property
    def rows(self) -> int:
        return int(self.state.attention_mask.shape[0])

    def extend(self, other: RunnerBatch) -> None:
        self.state = concat_states([self.state, other.state])

    def select(self, rows: list[int]) -> None:
        self.state = select_rows(self.state, rows)

    def repeat_rows(self, counts: list[int]) -> None:
        self.select([row for row, count in enumerate(counts) for _ in range(count)])


class RunnerBackend:
    """A kubeforge.lm.inference runner; every row is the base model (slot 0)."""

    device = torch.device("cpu")  # runners hand back numpy logits

    def __init__(self, runner: Any, pad_id: int, kind: str):
        self.runner = runner
        self.pad_id = pad_id
        self.kind = kind
        self._checked_cache = runner.kind == "onnx"  # the ONNX export takes full-attention decoders only

    def prefill(self, prompts: list[list[int]], slots: list[int]) -> tuple[torch.Tensor, RunnerBatch]:
        ids, mask = left_pad(prompts, self.pad_id)
        logits, state = self.runner.prefill(ids, mask, last_only=True)
        if not self._checked_cache:
            check_full_attention(state.cache)
            self._checked_cache = True
        return torch.from_numpy(np.ascontiguousarray(logits[:, -1])), RunnerBatch(state)

    def decode(self, batch: RunnerBatch, tokens: list[int], slots: list[int]) -> torch.Tensor:
        logits, batch.state = self.runner.decode(np.asarray(tokens, dtype=np.int64), batch.state)
        return torch.from_numpy(np.ascontiguousarray(logits))


@dataclass
class LoadedModel:
    backend: ModelBackend
    tokenizer: Any
    bank: AdapterBank | None  # None: the backend takes no adapters
    eos_token_ids: set[int]
    context_length: int
    vocab_size: int


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("KUBEFORGE_LLM_DEVICE=cuda but CUDA is not available on this machine; use auto or cpu")
    return torch.device("cuda" if preference in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def pick_dtype(preference: str, device: torch.device) -> torch.dtype:
    if preference == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, preference)


def _ids(value: Any) -> set[int]:
    """An ``eos_token_id`` setting (one id, a list, or None) as a set."""
    return {int(v) for v in (value if isinstance(value, list) else [value]) if v is not None}


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    return _ids(getattr(model.generation_config, "eos_token_id", None)) | _ids(tokenizer.eos_token_id)


def pad_token_id(tokenizer: Any, eos: set[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)


def load_model(directory: Path, config: Any) -> LoadedModel:
    """The backend for ``directory`` (settings: kubeforge.llm.settings.LLMServeConfig); see the module docstring."""
    from kubeforge.lm.sources import load_causal_lm, model_context_length

    kind = artifact_kind(directory)
    if kind == "torch":
        device = pick_device(config.device)
        model, tokenizer = load_causal_lm(directory, device=str(device), dtype=pick_dtype(config.dtype, device))
        model.eval()
        eos = eos_token_ids(model, tokenizer)
        bank = AdapterBank(model)
        return LoadedModel(TorchBackend(bank, pad_token_id(tokenizer, eos)), tokenizer, bank, eos,
                           model_context_length(model), int(getattr(model.config, "vocab_size", 0) or 0))
    if kind == "onnx" and config.device == "cuda":
        raise ModelError(f"{directory}: an ONNX model is served by ONNX Runtime on the CPU; "
                         "KUBEFORGE_LLM_DEVICE=cuda cannot apply (use auto or cpu)")
    if config.dtype not in ("auto", "float32"):
        raise ModelError(f"{directory}: a compressed {kind} model runs at the precision it was measured at; "
                         f"KUBEFORGE_LLM_DTYPE={config.dtype} cannot apply (use auto)")
    from transformers import AutoTokenizer

    runner = open_runner(directory, threads=config.threads,
                         device="cpu" if kind == "onnx" else str(pick_device(config.device)))
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    eos = _configured_eos(directory) | _ids(tokenizer.eos_token_id)
    model_config = read_model_config(directory)
    backend = RunnerBackend(runner, pad_token_id(tokenizer, eos), kind)
    return LoadedModel(backend, tokenizer, None, eos, runner.context_length,
                       int(model_config.get("vocab_size") or 0))


def _configured_eos(directory: Path) -> set[int]:
    """The EOS ids of generation_config.json (when present) and config.json."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((directory / name).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        ids |= _ids(value)
    return ids
