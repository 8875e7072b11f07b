"""The one inference path for causal LMs: prefill and incremental decode with a KV cache, greedy generation on top.

The compression harness measures every candidate through this module and the LM service loads the chosen artifact
through it, so the speed and the completions a report shows are the ones served. A runner is one of:

- ``TorchRunner``: any transformers causal LM (plain, merged LoRA, torchao-quantised, layer-pruned, a student);
- ``OnnxRunner``: an ONNX Runtime session over a graph exported with the past keys/values as inputs and outputs
  (``past.{layer}.key|value`` in, ``present.{layer}.key|value`` out), so each decode step feeds one new token.

Both take and return numpy arrays and compute position ids the same way (from the attention mask), so left-padded
batches decode alike. Decode states of either kind join (``concat_states``) and shrink (``select_rows``) between
steps, which is how the LM service batches requests continuously over a runner. Opening an ONNX directory imports
neither torch nor transformers: an ONNX-only worker stays small and starts fast.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ONNX_MODEL_FILE = "model.onnx"
TORCHAO_FILE = "torchao.json"  # present in a torch directory whose weights are torchao-quantised
CONFIG_FILE, TOKENIZER_FILE = "config.json", "tokenizer.json"
INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"


def past_names(layers: int, prefix: str = "past") -> list[str]:
    """Graph names of the cache tensors, key then value per layer (``present`` for the outputs)."""
    return [f"{prefix}.{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position of each token among its row's real tokens (0 on left padding), as transformers' generate does."""
    positions = np.cumsum(mask, axis=1, dtype=np.int64) - 1
    np.maximum(positions, 0, out=positions)
    return positions


@dataclass
class DecodeState:
    """What one decode step needs from the steps before it. A torch cache is updated in place, so feed each state
    to ``decode`` once."""

    attention_mask: np.ndarray  # int64 [batch, tokens so far]
    next_positions: np.ndarray  # int64 [batch]
    cache: Any  # list of numpy arrays (ONNX) or a transformers Cache (torch)


class CausalLMRunner(Protocol):
    kind: str  # "torch" or "onnx"
    context_length: int

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, *, last_only: bool = False
                ) -> tuple[np.ndarray, DecodeState]:
        """Logits of every position [batch, tokens, vocab] (float32; the last position only, [batch, 1, vocab],
        with ``last_only``) and the state to decode from."""

    def decode(self, next_ids: np.ndarray, state: DecodeState) -> tuple[np.ndarray, DecodeState]:
        """Logits of the one new token per row [batch, vocab] and the state after it."""


class _Runner:
    kind = "abstract"
    context_length = 0

    def _forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: Any,
                 last_only: bool = False) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, *, last_only: bool = False
                ) -> tuple[np.ndarray, DecodeState]:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, tokens] with at least one token, got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else np.ascontiguousarray(attention_mask, dtype=np.int64)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask {mask.shape} does not match input_ids {ids.shape}")
        if ids.shape[1] > self.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the model's context of {self.context_length}")
        logits, cache = self._forward(ids, mask, positions_from_mask(mask), None, last_only)
        return logits, DecodeState(mask, mask.sum(axis=1).astype(np.int64), cache)

    def decode(self, next_ids: np.ndarray, state: DecodeState) -> tuple[np.ndarray, DecodeState]:
        ids = np.ascontiguousarray(next_ids, dtype=np.int64).reshape(-1, 1)
        if state.attention_mask.shape[1] >= self.context_length:
            raise ValueError(f"the sequence already fills the model's context of {self.context_length} tokens")
        mask = np.concatenate([state.attention_mask, np.ones_like(ids)], axis=1)
        logits, cache = self._forward(ids, mask, state.next_positions.reshape(-1, 1), state.cache)
        return logits[:, -1], DecodeState(mask, state.next_positions + 1, cache)


class TorchRunner(_Runner):
    """A transformers causal LM with its DynamicCache, in eval mode under inference_mode."""

    kind = "torch"

    def __init__(self, model: Any):
        import torch

        self.model = model.eval()
        self._torch = torch
        self.device = next(model.parameters()).device
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.context_length = int(config.max_position_embeddings)
        accepted = inspect.signature(model.forward).parameters
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}

    def _forward(self, ids, mask, positions, cache, last_only=False):
        torch = self._torch
        from transformers import DynamicCache

        with torch.inference_mode():
            if cache is None:
                cache = DynamicCache(config=self.model.config)
            # no padding: no mask, so transformers takes its causal fast path instead of building one per step
            attention = None if mask.all() else torch.from_numpy(mask).to(self.device)
            output = self.model(input_ids=torch.from_numpy(ids).to(self.device), attention_mask=attention,
                                position_ids=torch.from_numpy(positions).to(self.device), cache=cache, use_cache=True,
                                **(self._keep_last if last_only else {}))
            logits = output.logits[:, -1:] if last_only else output.logits
            return logits.float().cpu().numpy(), cache


class OnnxRunner(_Runner):
    """An ONNX Runtime session over a kubeforge LM graph (see the module docstring for its inputs and outputs)."""

    kind = "onnx"

    def __init__(self, session: Any, context_length: int):
        import onnxruntime as ort

        self.session = session
        self.context_length = context_length
        inputs = {item.name: item for item in session.get_inputs()}
        self.past_names = sorted((name for name in inputs if name.startswith("past.")), key=_cache_order)
        missing = {INPUT_IDS, ATTENTION_MASK, POSITION_IDS} - set(inputs)
        if missing or not self.past_names:
            raise ValueError(f"not a kubeforge LM graph: inputs {sorted(inputs)} lack "
                             f"{sorted(missing) or 'past.<layer>.key/value'}")
        self.output_names = [LOGITS] + [name.replace("past.", "present.", 1) for name in self.past_names]
        # cache tensors are [batch, kv_heads, tokens, head_dim]; the heads and head size are fixed in the graph
        self._cache_shapes = [(int(inputs[name].shape[1]), int(inputs[name].shape[3])) for name in self.past_names]
        self._run_options = ort.RunOptions()  # reused: None costs a little on every call

    def _empty_cache(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, heads, 0, size), dtype=np.float32) for heads, size in self._cache_shapes]

    def _forward(self, ids, mask, positions, cache, last_only=False):
        feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask, POSITION_IDS: np.ascontiguousarray(positions)}
        feeds.update(zip(self.past_names, cache if cache is not None else self._empty_cache(len(ids))))
        outputs = self.session.run(self.output_names, feeds, self._run_options)
        return (outputs[0][:, -1:] if last_only else outputs[0]), outputs[1:]


def _cache_order(name: str) -> tuple[int, int]:
    _, layer, kind = name.split(".")
    return int(layer), 0 if kind == "key" else 1


def concat_states(states: Sequence[DecodeState]) -> DecodeState:
    """One state with the rows of ``states`` in order, each left-padded to the widest (mask 0, cache zeros): rows
    decode on as they would alone. The inputs' caches may be reused, so use only the result."""
    if not states:
        raise ValueError("nothing to concatenate")
    width = max(state.attention_mask.shape[1] for state in states)
    masks, caches = [], []
    for state in states:
        extra = width - state.attention_mask.shape[1]
        masks.append(np.pad(state.attention_mask, ((0, 0), (extra, 0))) if extra else state.attention_mask)
        caches.append([_left_pad(tensor, extra) for tensor in _cache_tensors(state.cache)])
    joined = [_concat([cache[index] for cache in caches]) for index in range(len(caches[0]))]
    return DecodeState(np.concatenate(masks), np.concatenate([state.next_positions for state in states]),
                       _with_tensors(states[0].cache, joined))


def select_rows(state: DecodeState, rows: Sequence[int]) -> DecodeState:
    """The ``rows`` of ``state`` in that order (a row may repeat), without the leading columns that are padding in
    every kept row. The input's cache may be reused, so use only the result."""
    if not rows:
        raise ValueError("select at least one row")
    index = np.asarray(rows, dtype=np.int64)
    mask = state.attention_mask[index]
    cut = int(np.argmax(mask.any(axis=0)))  # every row holds a real token, so some column is filled
    tensors = [_take(tensor, index, cut) for tensor in _cache_tensors(state.cache)]
    return DecodeState(np.ascontiguousarray(mask[:, cut:]), state.next_positions[index],
                       _with_tensors(state.cache, tensors))


def _cache_tensors(cache: Any) -> list[Any]:
    """The cache as [key, value] per layer, [batch, kv_heads, tokens, head_dim]: numpy (ONNX) or torch tensors."""
    if isinstance(cache, list):
        return cache
    odd = {type(layer).__name__ for layer in cache.layers if type(layer).__name__ != "DynamicLayer"}
    if odd:  # a sliding window or a recurrent state is not a per-token column that padding can line up
        raise ValueError(f"decode states with {', '.join(sorted(odd))} cache layers cannot be joined or split; "
                         "only full-attention caches can")
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


def _with_tensors(cache: Any, tensors: list[Any]) -> Any:
    if isinstance(cache, list):
        return tensors
    for number, layer in enumerate(cache.layers):
        layer.keys, layer.values = tensors[2 * number], tensors[2 * number + 1]
    return cache


def _left_pad(tensor: Any, columns: int) -> Any:
    if columns == 0:
        return tensor
    shape = tuple(tensor.shape[:2]) + (columns,) + tuple(tensor.shape[3:])
    if isinstance(tensor, np.ndarray):
        return np.concatenate([np.zeros(shape, tensor.dtype), tensor], axis=2)
    import torch

    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)


def _concat(tensors: list[Any]) -> Any:
    if isinstance(tensors[0], np.ndarray):
        return np.concatenate(tensors)
    import torch

    return torch.cat(tensors)


def _take(tensor: Any, index: np.ndarray, cut: int) -> Any:
    if isinstance(tensor, np.ndarray):
        return np.ascontiguousarray(tensor[index][:, :, cut:])  # ONNX Runtime reads contiguous inputs
    import torch

    return tensor.index_select(0, torch.from_numpy(index).to(tensor.device))[:, :, cut:]


def onnx_session(source: bytes | str | Path, threads: int = 1) -> Any:
    """Fixed intra-op threads, no spinning (idle spinning steals the cores other requests need), all graph
    optimisations (constant folding also materialises the transposed tied embedding once, at load)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                providers=["CPUExecutionProvider"])


def read_model_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable model config ({exc})") from None
    return config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config


def artifact_kind(directory: str | Path) -> str:
    """'onnx' (model.onnx, run by ONNX Runtime), 'torchao' (torchao.json: torchao-quantised weights) or 'torch' (a
    plain Hugging Face directory): what every reader of a kubeforge LM directory dispatches on."""
    directory = Path(directory)
    return ("onnx" if (directory / ONNX_MODEL_FILE).is_file() else
            "torchao" if (directory / TORCHAO_FILE).is_file() else "torch")


def open_runner(directory: str | Path, *, threads: int = 1, device: str = "cpu") -> CausalLMRunner:
    """The runner for any LM directory kubeforge writes: ONNX (model.onnx), torchao-quantised (torchao.json) or a
    plain Hugging Face directory. ``threads`` is the ONNX session's intra-op count; torch uses the process's."""
    directory = Path(directory)
    if artifact_kind(directory) == "onnx":
        return OnnxRunner(onnx_session(directory / ONNX_MODEL_FILE, threads),
                          int(read_model_config(directory)["max_position_embeddings"]))
    return TorchRunner(load_torch_lm(directory, device=device))


def load_torch_lm(directory: str | Path, *, device: str = "cpu") -> Any:
    """A torch causal LM from a kubeforge directory; torchao weights are rebuilt as torchao describes them."""
    directory = Path(directory)
    if artifact_kind(directory) == "torchao":
        from kubeforge.compression.lm_quantize import load_torchao_model

        return load_torchao_model(directory, device=device)
    from kubeforge.lm.sources import load_causal_lm

    return load_causal_lm(directory, device=device)[0].eval()


@dataclass
class Generation:
    tokens: list[list[int]]  # per prompt, the new tokens up to (not including) the first EOS when stopping at EOS
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int
    batch: int
    rows_at_eos: list[bool] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # each decode step (incl. its argmax)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.batch * self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def median_step_tokens_per_second(self) -> float:
        """Tokens/s from the median decode step: robust to the odd step another process preempts."""
        if not self.step_seconds:
            return 0.0
        ordered = sorted(self.step_seconds)
        middle = len(ordered) // 2
        median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        return self.batch / median if median > 0 else 0.0


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    if not prompts or any(len(row) == 0 for row in prompts):
        raise ValueError("every prompt needs at least one token (start empty prompts with the BOS token)")
    width = max(len(row) for row in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, tokens in enumerate(prompts):
        ids[row, width - len(tokens):] = tokens
        mask[row, width - len(tokens):] = 1
    return ids, mask


def greedy_generate(runner: CausalLMRunner, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                    pad_id: int, eos_id: int | None = None, stop_at_eos: bool = True) -> Generation:
    """Greedy decoding of a left-padded batch. With ``stop_at_eos`` a row that emits EOS is done (it keeps being
    fed EOS until every row is done); without it every row gets exactly ``max_new_tokens`` (for timing)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    ids, mask = left_pad(prompts, pad_id)
    if ids.shape[1] + max_new_tokens - 1 > runner.context_length:
        raise ValueError(f"{ids.shape[1]} prompt tokens + {max_new_tokens} new tokens exceed the model's context "
                         f"of {runner.context_length}")
    started = time.perf_counter()
    logits, state = runner.prefill(ids, mask, last_only=True)
    next_ids = logits[:, -1].argmax(axis=-1)
    prefill_seconds = time.perf_counter() - started
    generated = [next_ids]
    done = np.zeros(len(ids), dtype=bool)
    step_seconds: list[float] = []
    started = time.perf_counter()
    while len(generated) < max_new_tokens:
        if stop_at_eos and eos_id is not None:
            done |= next_ids == eos_id
            if done.all():
                break
            next_ids = np.where(done, eos_id, next_ids)
        step_started = time.perf_counter()
        logits, state = runner.decode(next_ids, state)
        next_ids = logits.argmax(axis=-1)
        step_seconds.append(time.perf_counter() - step_started)
        generated.append(next_ids)
    decode_seconds = time.perf_counter() - started
    matrix = np.stack(generated, axis=1).tolist()
    tokens, at_eos = [], []
    for row in matrix:
        if stop_at_eos and eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id)]
            at_eos.append(True)
        else:
            at_eos.append(False)
        tokens.append(row)
    return Generation(tokens=tokens, prefill_seconds=prefill_seconds, decode_seconds=decode_seconds,
                      decode_steps=len(step_seconds), batch=len(ids), rows_at_eos=at_eos, step_seconds=step_seconds)


class LightTokenizer:
    """The directory's tokenizer.json through the ``tokenizers`` library alone (no torch, no transformers), with the
    special-token ids from config.json; encodes as kubeforge trains and evaluates (no special tokens added)."""

    def __init__(self, directory: str | Path):
        from tokenizers import Tokenizer

        directory = Path(directory)
        self.tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        config = read_model_config(directory)
        self.eos_token_id = _first_id(config.get("eos_token_id"))
        self.bos_token_id = _first_id(config.get("bos_token_id"))
        pad = _first_id(config.get("pad_token_id"))
        self.pad_token_id = pad if pad is not None else self.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def complete(runner: CausalLMRunner, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy completions of text prompts (the generated text only, up to the first EOS), one batch."""
    encoded = [tokenizer.encode(prompt) or [tokenizer.bos_token_id] for prompt in prompts]
    if any(row == [None] for row in encoded):
        raise ValueError("an empty prompt needs a BOS token and the tokenizer has none")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generation = greedy_generate(runner, encoded, max_new_tokens, pad_id=int(pad), eos_id=tokenizer.eos_token_id)
    return [tokenizer.decode(tokens) for tokens in generation.tokens]
