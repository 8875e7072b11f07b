"""The one measurement harness for the baseline and every candidate, so numbers are comparable.

Latency: a fixed intra-op thread count, at least ``runs`` timed calls at batch 1 and batch 32, each call returning
class probabilities (so the softmax is timed for every candidate); p50/p99 from the per-call times. ``measure_all``
times the baseline and the candidates in interleaved rounds, each round re-warmed, so load from other processes on a
shared machine lands on all of them alike. Size: the bytes of the model file as saved (and gzip-compressed, which is
where unstructured sparsity shows). CPU flags and library versions are recorded because int8 speed depends on them.
"""

from __future__ import annotations

import gzip
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from kubeforge.compression.artifact import candidate_predictor, save_candidate
from kubeforge.compression.candidate import Candidate
from kubeforge.compression.prune import onnx_sparsity, weight_sparsity
from kubeforge.compression.quantize import dynamic_int8_linear_type

WARMUP = 10
BATCHES = (1, 32)
ROUNDS = 5


@dataclass
class Measurement:
    name: str
    kind: str
    precision: str
    size_bytes: int
    gzip_bytes: int
    size_ratio: float  # baseline size / this size
    parameters: int
    sparsity: float
    accuracy: float
    f1_macro: float
    accuracy_drop: float  # points vs baseline (positive = worse)
    p50_ms_b1: float
    p99_ms_b1: float
    p50_ms_b32: float
    p99_ms_b32: float
    throughput_rows_s: float  # at batch 32
    notes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_flags() -> list[str]:
    wanted = {"avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "fma"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(wanted & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def environment() -> dict:
    versions = {}
    for name in ("torch", "onnxruntime", "onnx", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "versions": versions}


def _batches(X: np.ndarray, batch: int, count: int) -> list[np.ndarray]:
    rows = np.resize(np.arange(len(X)), count * batch).reshape(count, batch)
    return [np.ascontiguousarray(X[r]) for r in rows]


def _latencies_ms(predict, inputs: list[np.ndarray]) -> np.ndarray:
    for item in inputs[:WARMUP]:
        predict(item)
    timed = inputs[WARMUP:]
    times = np.empty(len(timed))
    for i, item in enumerate(timed):
        started = time.perf_counter_ns()
        predict(item)
        times[i] = (time.perf_counter_ns() - started) / 1e6
    return times


def _parameters(candidate: Candidate) -> int:
    if candidate.onnx is not None:
        import onnx
        from onnx import numpy_helper

        return int(sum(numpy_helper.to_array(t).size for t in onnx.load_from_string(candidate.onnx).graph.initializer
                       if len(t.dims) >= 1 and t.name and not t.name.endswith(("_scale", "_zero_point"))))
    count = sum(p.numel() for p in candidate.module.parameters())
    if candidate.spec.precision == "int8-dynamic":  # packed int8 Linears hold their weights outside parameters()
        quantized = dynamic_int8_linear_type()
        count += sum(m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
                     for m in candidate.module.modules() if isinstance(m, quantized))
    return int(count)


def measure(candidate: Candidate, X_test: np.ndarray, y_test: np.ndarray, *, threads: int, runs: int,
            baseline: Measurement | None = None) -> Measurement:
    """One candidate on its own (one round); compare candidates with ``measure_all``."""
    (predicted, b1, b32), = _time_side_by_side([candidate], X_test, threads=threads, runs=runs, rounds=1)
    return _measurement(candidate, predicted, y_test, b1, b32, baseline)


def measure_all(candidates: Sequence[Candidate], X_test: np.ndarray, y_test: np.ndarray, *, threads: int, runs: int,
                rounds: int = ROUNDS) -> list[Measurement]:
    """The first candidate is the baseline; all are timed side by side in ``rounds`` interleaved rounds."""
    if not candidates:
        raise ValueError("measure_all needs at least the baseline")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    timed = _time_side_by_side(candidates, X_test, threads=threads, runs=runs, rounds=rounds)
    predicted, b1, b32 = timed[0]
    baseline = _measurement(candidates[0], predicted, y_test, b1, b32, None)
    return [baseline] + [_measurement(candidate, predicted, y_test, b1, b32, baseline)
                         for candidate, (predicted, b1, b32) in zip(candidates[1:], timed[1:], strict=True)]


def _time_side_by_side(candidates: Sequence[Candidate], X_test: np.ndarray, *, threads: int, runs: int,
                       rounds: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per candidate: predicted labels on X_test, batch-1 and batch-32 latencies (ms)."""
    per_round = -(-runs // rounds)  # at least ``runs`` timed calls in all
    inputs = {batch: [_batches(X_test, batch, per_round + WARMUP) for _ in range(rounds)] for batch in BATCHES}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictors = [candidate_predictor(candidate, threads) for candidate in candidates]
        predicted = [predict(X_test).argmax(axis=1) for predict in predictors]
        times: list[dict[int, list[np.ndarray]]] = [{batch: [] for batch in BATCHES} for _ in candidates]
        for round_index in range(rounds):
            for batch in BATCHES:
                for index, predict in enumerate(predictors):
                    times[index][batch].append(_latencies_ms(predict, inputs[batch][round_index]))
    finally:
        torch.set_num_threads(previous_threads)
    return [(labels, np.concatenate(latencies[1]), np.concatenate(latencies[32]))
            for labels, latencies in zip(predicted, times, strict=True)]


def _measurement(candidate: Candidate, predicted: np.ndarray, y_test: np.ndarray, b1: np.ndarray, b32: np.ndarray,
                 baseline: Measurement | None) -> Measurement:
    with tempfile.TemporaryDirectory() as tmp:
        model_file = save_candidate(candidate, tmp)
        size = model_file.stat().st_size
        gzip_size = len(gzip.compress(model_file.read_bytes(), compresslevel=6))
    accuracy = float(np.mean(predicted == y_test))
    sparsity = onnx_sparsity(candidate.onnx) if candidate.onnx is not None else (
        weight_sparsity(candidate.module) if candidate.spec.precision != "int8-dynamic" else 0.0)
    return Measurement(
        name=candidate.name, kind=candidate.kind, precision=candidate.spec.precision, size_bytes=size,
        gzip_bytes=gzip_size, size_ratio=round((baseline.size_bytes if baseline else size) / size, 3),
        parameters=_parameters(candidate), sparsity=round(sparsity, 4), accuracy=accuracy,
        f1_macro=float(f1_score(y_test, predicted, average="macro")),
        accuracy_drop=round(((baseline.accuracy if baseline else accuracy) - accuracy) * 100, 3),
        p50_ms_b1=float(np.percentile(b1, 50)), p99_ms_b1=float(np.percentile(b1, 99)),
        p50_ms_b32=float(np.percentile(b32, 50)), p99_ms_b32=float(np.percentile(b32, 99)),
        throughput_rows_s=float(32 / (np.percentile(b32, 50) / 1000)), notes=list(candidate.notes))
