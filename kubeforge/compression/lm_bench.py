"""The one harness for the uncompressed LM and every candidate, each opened from its directory through
``kubeforge.lm.inference`` exactly as the service opens it, so the figures are the served model's.

Quality: held-out perplexity (the loss tokens of the held-out fine-tuning set, as lm-evaluate counts them) from the
runner's prefill logits, and greedy agreement: the share of the first 32 greedy tokens, on held-out prompts, that
equal the uncompressed model's at the same position (a row that emits EOS counts as EOS from there on).
Speed: decode tokens/s at batch 1 and 8 (32 decode steps after the prompt, EOS ignored, prefill not counted; batch
size over the median step time, so a step another process preempts does not move it) and time to first token
(prefill of a 128-token prompt plus the argmax, median of 3). Fixed intra-op threads; ``rounds`` rounds, each
re-warmed, every measurement taken for all candidates back to back. The fastest round is reported (every round is
kept in ``rounds``): on a shared machine noise only ever slows a single-threaded step down, so the least disturbed
round is the closest to what the model costs, and a busy spell cannot favour one candidate.
"""

from __future__ import annotations

import hashlib
import math
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from kubeforge.compression.bench import cpu_flags
from kubeforge.lm.inference import CausalLMRunner, greedy_generate, open_runner

AGREEMENT_TOKENS = 32
DECODE_STEPS = 32
SPEED_BATCHES = (1, 8)
TTFT_TOKENS = 128
TTFT_REPEATS = 3
SCORE_BATCH = 8
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx.data", ".onnx_data")
IGNORE_INDEX = -100


@dataclass
class LMMeasurement:
    name: str
    kind: str
    precision: str
    size_bytes: int  # weight files (safetensors / onnx) as stored
    directory_bytes: int  # with config and tokenizer files
    size_ratio: float  # baseline size / this size
    parameters: int
    parameter_share: float  # of the baseline's
    perplexity: float
    perplexity_increase_pct: float  # vs the baseline (negative = better)
    greedy_agreement: float
    decode_tokens_s_b1: float
    decode_tokens_s_b8: float
    ms_per_token_b1: float
    ttft_ms: float
    ttft_prompt_tokens: int
    sha256: str  # of the main weight file, so the served file can be matched to the measured one
    rounds: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    build_seconds: float = 0.0
    passed: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    """The held-out rows, prompts and token ids every candidate is measured on."""

    heldout: Any  # TokenBatches of the held-out fine-tuning set (right-padded, labels -100 off the loss)
    prompts: list[list[int]]  # held-out prompts' token ids
    ttft_prompt: list[int]
    pad_id: int
    eos_id: int | None


def environment() -> dict[str, Any]:
    import os

    versions = {}
    for name in ("torch", "torchao", "transformers", "onnxruntime", "onnx", "onnxscript", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "versions": versions}


def weight_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def heldout_perplexity(runner: CausalLMRunner, batches: Any) -> float:
    """exp(mean next-token cross-entropy over the loss tokens), from the runner's prefill logits."""
    total, count = 0.0, 0
    ids_all = batches.input_ids.numpy()
    mask_all = batches.attention_mask.numpy()
    labels_all = batches.labels.numpy()
    for start in range(0, len(ids_all), SCORE_BATCH):
        ids, mask = ids_all[start:start + SCORE_BATCH], mask_all[start:start + SCORE_BATCH]
        width = int(mask.sum(axis=1).max())  # right padding: drop all-pad columns
        logits, _ = runner.prefill(ids[:, :width], mask[:, :width])
        targets = labels_all[start:start + SCORE_BATCH, 1:width]
        counted = targets != IGNORE_INDEX
        logits = logits[:, :-1].astype(np.float64)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=-1))
        picked = np.take_along_axis(shifted, np.where(counted, targets, 0)[..., None], axis=-1)[..., 0]
        total += float(((log_norm - picked) * counted).sum())
        count += int(counted.sum())
    if count == 0:
        raise ValueError("the held-out rows have no loss tokens")
    loss = total / count
    return math.exp(loss) if loss < 700 else float("inf")


def greedy_tokens(runner: CausalLMRunner, workload: Workload) -> np.ndarray:
    """[prompts, AGREEMENT_TOKENS] greedy tokens, EOS-filled after a row's EOS."""
    rows = []
    for start in range(0, len(workload.prompts), SPEED_BATCHES[-1]):
        generation = greedy_generate(runner, workload.prompts[start:start + SPEED_BATCHES[-1]], AGREEMENT_TOKENS,
                                     pad_id=workload.pad_id, eos_id=workload.eos_id)
        fill = workload.eos_id if workload.eos_id is not None else -1
        rows += [tokens + [fill] * (AGREEMENT_TOKENS - len(tokens)) for tokens in generation.tokens]
    return np.array(rows, dtype=np.int64)


def _warm(runner: CausalLMRunner, workload: Workload) -> None:
    greedy_generate(runner, workload.prompts[:1], 4, pad_id=workload.pad_id, stop_at_eos=False)


def _decode_speed(runner: CausalLMRunner, workload: Workload, batch: int) -> float:
    prompts = [workload.prompts[i % len(workload.prompts)] for i in range(batch)]
    generation = greedy_generate(runner, prompts, DECODE_STEPS + 1, pad_id=workload.pad_id, stop_at_eos=False)
    return generation.median_step_tokens_per_second


def _ttft_ms(runner: CausalLMRunner, workload: Workload) -> float:
    prompt = np.array([workload.ttft_prompt], dtype=np.int64)
    times = []
    for _ in range(TTFT_REPEATS):
        started = time.perf_counter()
        logits, _ = runner.prefill(prompt)
        logits[:, -1].argmax(axis=-1)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _speed_round(runners: Sequence[CausalLMRunner], workload: Workload) -> list[dict[str, float]]:
    """One round: every runner re-warmed, then each measurement taken for all runners back to back, so the
    candidates of one measurement are seconds apart, not a whole round."""
    for runner in runners:
        _warm(runner, workload)
    figures: list[dict[str, float]] = [{} for _ in runners]
    for batch in SPEED_BATCHES:
        for index, runner in enumerate(runners):
            figures[index][f"decode_tokens_s_b{batch}"] = _decode_speed(runner, workload, batch)
    for index, runner in enumerate(runners):
        figures[index]["ttft_ms"] = _ttft_ms(runner, workload)
    return figures


def measure_all(directories: Sequence[tuple[str, Path]], workload: Workload, *, threads: int,
                rounds: int) -> list[LMMeasurement]:
    """The first directory is the uncompressed baseline. Every model is opened from disk through the inference
    module; quality first, then the speed rounds, interleaved."""
    import torch

    if not directories:
        raise ValueError("measure_all needs at least the baseline")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runners = [open_runner(directory, threads=threads) for _, directory in directories]
        perplexities = [heldout_perplexity(runner, workload.heldout) for runner in runners]
        tokens = [greedy_tokens(runner, workload) for runner in runners]
        per_round: list[dict[str, list[float]]] = [{} for _ in runners]
        for _ in range(rounds):
            for index, figures in enumerate(_speed_round(runners, workload)):
                for key, value in figures.items():
                    per_round[index].setdefault(key, []).append(value)
    finally:
        torch.set_num_threads(previous)
    measurements = []
    for index, ((name, directory), runner) in enumerate(zip(directories, runners, strict=True)):
        measurements.append(_measurement(name, Path(directory), runner, perplexities[index],
                                         float((tokens[index] == tokens[0]).mean()), per_round[index],
                                         len(workload.ttft_prompt), measurements[0] if measurements else None))
    return measurements


def _parameters(directory: Path, runner: CausalLMRunner) -> int:
    if runner.kind == "onnx":
        from kubeforge.compression.lm_onnx import onnx_parameters

        return onnx_parameters((directory / "model.onnx").read_bytes())
    from kubeforge.compression.lm_quantize import torch_parameters

    return torch_parameters(runner.model)  # type: ignore[attr-defined]


def _precision(directory: Path, runner: CausalLMRunner) -> str:
    import json

    from kubeforge.lm.inference import TORCHAO_FILE, artifact_kind

    if runner.kind == "onnx":
        import onnx

        graph = onnx.load(str(directory / "model.onnx"), load_external_data=False).graph
        return "int8" if any(node.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for node in graph.node) \
            else "fp32"
    if artifact_kind(directory) == "torchao":
        return {"int8-weight": "int8", "int4-weight": "int4"}[json.loads((directory / TORCHAO_FILE).read_text())[
            "method"]]
    return "fp32"


def _measurement(name: str, directory: Path, runner: CausalLMRunner, perplexity: float, agreement: float,
                 rounds: dict[str, list[float]], ttft_tokens: int, baseline: LMMeasurement | None) -> LMMeasurement:
    files = weight_files(directory)
    size = sum(path.stat().st_size for path in files)
    parameters = _parameters(directory, runner)
    best = {key: (min if key == "ttft_ms" else max)(values) for key, values in rounds.items()}
    base_size = baseline.size_bytes if baseline else size
    base_perplexity = baseline.perplexity if baseline else perplexity
    return LMMeasurement(
        name=name, kind=runner.kind, precision=_precision(directory, runner), size_bytes=size,
        directory_bytes=sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()),
        size_ratio=round(base_size / size, 3), parameters=parameters,
        parameter_share=round(parameters / (baseline.parameters if baseline else parameters), 4),
        perplexity=perplexity, perplexity_increase_pct=round((perplexity / base_perplexity - 1) * 100, 3),
        greedy_agreement=round(agreement, 4), decode_tokens_s_b1=best["decode_tokens_s_b1"],
        decode_tokens_s_b8=best["decode_tokens_s_b8"], ms_per_token_b1=1000 / best["decode_tokens_s_b1"],
        ttft_ms=best["ttft_ms"], ttft_prompt_tokens=ttft_tokens, sha256=_sha256(files[0]) if files else "",
        rounds={key: [round(v, 4) for v in values] for key, values in rounds.items()})
