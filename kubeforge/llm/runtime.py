"""What one worker serves: the base model, its adapters by name, the engine; and the adapter lifecycle.

The base model is a plain Hugging Face directory (transformers, adapters allowed) or a compressed artifact of the
lm-compress step, ONNX or torchao, run through kubeforge.lm.inference's runner (no adapters: see
kubeforge.llm.backends).

Names map to adapter slots under one lock, taken also while a request resolves its model and queues its choices,
so an adapter being unloaded is never picked by a request that is half-way in. Unloading removes the name at once
(new requests get 404) and frees the weights once no queued or running sequence uses them.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kubeforge.llm.adapters import BASE_SLOT, AdapterBank, AdapterInfo
from kubeforge.llm.backends import load_model
from kubeforge.llm.engine import Engine, EngineLimits
from kubeforge.llm.errors import APIError, model_not_found
from kubeforge.llm.generation import Generation
from kubeforge.llm.metrics import LLMMetrics
from kubeforge.llm.sampling import SamplingParams
from kubeforge.llm.settings import LLMServeConfig
from kubeforge.llm.tenancy.fair import Share
from kubeforge.models import ModelError


def resolve_adapter_source(source: str, cache_root: Path) -> Path:
    """A local adapter directory for a directory or URI (the one resolver: kubeforge.lm.sources)."""
    from kubeforge.lm.sources import check_checkpoint_files, parse_model_source, resolve_model_source

    parsed = parse_model_source(source)
    if parsed.scheme == "scratch":
        raise ModelError(f"{source}: an adapter is a directory or URI, not a scratch model")
    destination = Path(tempfile.mkdtemp(prefix="adapter-", dir=cache_root))
    directory = resolve_model_source(source, destination)
    check_checkpoint_files(directory)
    if not (directory / "adapter_config.json").is_file():
        raise ModelError(f"{source}: not a LoRA adapter (no adapter_config.json)")
    return directory


@dataclass
class LLMRuntime:
    engine: Engine
    bank: AdapterBank | None  # None when the base takes no adapters (a compressed ONNX / torchao artifact)
    tokenizer: Any
    config: LLMServeConfig
    metrics: LLMMetrics
    base_source: str
    context_length: int
    vocab_size: int = 0  # the model's embedding rows (0: not stated)
    created: int = field(default_factory=lambda: int(time.time()))
    cache_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kubeforge-llm-")))

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, int] = {}  # served adapter name -> slot
        self._busy: set[str] = set()  # names being loaded right now
        self._loaded_at: dict[str, int] = {}

    @classmethod
    def load(cls, base_dir: str | Path, config: LLMServeConfig, metrics: LLMMetrics, *,
             base_source: str | None = None) -> LLMRuntime:
        """Load the base model (kubeforge.llm.backends.load_model: checked safetensors, or the compressed artifact
        through kubeforge.lm.inference) and start the engine."""
        if config.threads:
            torch.set_num_threads(config.threads)
        loaded = load_model(Path(base_dir), config)
        limits = EngineLimits(max_running=config.max_running, max_waiting=config.max_waiting,
                              max_batch_tokens=config.max_batch_tokens, max_prefill_tokens=config.max_prefill_tokens,
                              retry_after_s=config.retry_after_s)
        engine = Engine(loaded.backend, loaded.tokenizer, context_length=loaded.context_length, limits=limits,
                        metrics=metrics, eos_token_ids=loaded.eos_token_ids, base_name=config.base_name)
        engine.start()
        return cls(engine=engine, bank=loaded.bank, tokenizer=loaded.tokenizer, config=config, metrics=metrics,
                   base_source=base_source or str(base_dir), context_length=loaded.context_length,
                   vocab_size=loaded.vocab_size)

    # ---- names -----------------------------------------------------------------------------------------------

    def served(self) -> list[tuple[str, AdapterInfo | None]]:
        """(name, adapter info or None for the base), base first."""
        with self._lock:
            names = dict(self._names)
        infos = {info.slot: info for info in self.bank.adapters.values()} if self.bank is not None else {}
        return [(self.config.base_name, None)] + [(name, infos.get(slot)) for name, slot in sorted(names.items())]

    def adapter_names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def submit(self, model_name: str, prompts: list[list[int]], params: SamplingParams, n: int,
               loop: asyncio.AbstractEventLoop, share: Share | None = None) -> Generation:
        """Resolve ``model_name`` and queue the choices in one step (see the module docstring)."""
        with self._lock:
            if model_name == self.config.base_name:
                slot = BASE_SLOT
            elif model_name in self._names:
                slot = self._names[model_name]
            else:
                raise model_not_found(model_name, [self.config.base_name, *self._names])
            generation = Generation(model_name, loop, self.config.max_queue_wait_s)
            generation.share = share  # the tenant and its weight, for the engine's fair admission
            return self.engine.submit(generation, prompts, params, n, slot)

    def check_model(self, model_name: str) -> None:
        with self._lock:
            if model_name != self.config.base_name and model_name not in self._names:
                raise model_not_found(model_name, [self.config.base_name, *self._names])

    # ---- adapter lifecycle (blocking: call from a worker thread) ---------------------------------------------

    def load_adapter(self, name: str, source: str) -> AdapterInfo:
        if self.bank is None:
            raise APIError(400, f"the base model is a compressed {self.engine.backend.kind} artifact, which serves no "
                           "LoRA adapters (a fine-tune's adapter is merged into the model before compression); to "
                           "serve adapters, serve the uncompressed base model", param="lora_path",
                           code="adapters_unsupported")
        with self._lock:
            if name == self.config.base_name or name in self._names or name in self._busy:
                raise APIError(409, f"the name {name!r} is already served or being loaded", param="lora_name",
                               code="adapter_exists")
            if name in self.bank.adapters:
                raise APIError(409, f"the adapter {name!r} is being unloaded (its last requests are running); retry "
                               "in a moment", param="lora_name", code="adapter_draining", retry_after_s=1)
            self._busy.add(name)
        try:
            directory = resolve_adapter_source(source, self.cache_root)
            info = self.engine.call_between_steps(lambda: self.bank.load(name, directory, source)).result()
        except ModelError as exc:
            raise APIError(400, str(exc), param="lora_path", code="invalid_adapter") from None
        finally:
            with self._lock:
                self._busy.discard(name)
        with self._lock:
            self._names[name] = info.slot
            self._loaded_at[name] = int(time.time())
        return info

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._names:
                raise model_not_found(name, [self.config.base_name, *self._names])
            slot = self._names.pop(name)
            self._loaded_at.pop(name, None)

        self.engine.retire_slot(slot, lambda: self.bank.unload(name))

    def loaded_at(self, name: str) -> int:
        return self._loaded_at.get(name, self.created)

    def warm_up(self) -> None:
        """One short greedy generation, so the first client pays no lazy initialisation."""
        loop = asyncio.new_event_loop()
        try:
            prompt = self.tokenizer("warm up", add_special_tokens=True)["input_ids"] or [self.engine.pad_id]
            generation = self.submit(self.config.base_name, [prompt], SamplingParams(max_tokens=2, temperature=0.0),
                                     1, loop)

            async def drain() -> None:
                async for _ in generation.events():
                    pass

            loop.run_until_complete(asyncio.wait_for(drain(), timeout=600))
        finally:
            loop.close()

    def close(self) -> None:
        self.engine.stop()
