"""The compress step: check every requested candidate, build and measure them beside the baseline, gate, and write
the chosen model directory (the format serving loads) with a full JSON report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubeforge.compression.artifact import save_candidate
from kubeforge.compression.bench import environment, measure_all
from kubeforge.compression.candidate import Candidate, CompressionError, linear_layers
from kubeforge.compression.cast import cast
from kubeforge.compression.distill import distill
from kubeforge.compression.onnx_int8 import check_onnx_int8, onnx_int8
from kubeforge.compression.prune import check_structured, prune_structured, prune_unstructured
from kubeforge.compression.quantize import check_int8_dynamic, int8_dynamic
from kubeforge.compression.select import select
from kubeforge.config import COMPRESSION_METHODS, CompressConfig
from kubeforge.data import Splits, read_splits
from kubeforge.models import load_model

REPORT_FILE = "compression.json"
BASELINE = "baseline (fp32)"


@dataclass(frozen=True)
class _Context:
    splits: Splits
    config: CompressConfig

    @property
    def data(self):
        s = self.splits
        return s.X_train, s.y_train, s.X_val, s.y_val


@dataclass(frozen=True)
class Method:
    check: Callable[[Candidate, _Context], None]  # raises CompressionError before any work
    apply: Callable[[Candidate, _Context], Candidate]
    keeps_architecture: bool  # False when it changes layers, so later methods must re-check on the new model


def _fp32_torch(name: str) -> Callable[[Candidate, _Context], None]:
    def check(candidate: Candidate, context: _Context) -> None:
        if candidate.kind != "torch" or candidate.spec.precision != "fp32":
            raise CompressionError(f"{name} must come before any quantisation or cast in a chain")
    return check


def _check_int8(candidate: Candidate, context: _Context) -> None:
    _fp32_torch("int8-dynamic")(candidate, context)
    check_int8_dynamic(candidate.module)


def _check_onnx(candidate: Candidate, context: _Context) -> None:
    _fp32_torch("onnx-int8")(candidate, context)
    check_onnx_int8(candidate.module, context.splits.X_train)


def _check_structured(candidate: Candidate, context: _Context) -> None:
    _fp32_torch("prune-structured")(candidate, context)
    check_structured(candidate.module, candidate.spec.config.model)


def _check_weights(name: str) -> Callable[[Candidate, _Context], None]:
    def check(candidate: Candidate, context: _Context) -> None:
        _fp32_torch(name)(candidate, context)
        if not linear_layers(candidate.module):
            raise CompressionError(f"{name} needs a model with Linear layers")
    return check


METHODS: dict[str, Method] = {
    "int8-dynamic": Method(_check_int8, lambda c, x: int8_dynamic(c), True),
    "onnx-int8": Method(_check_onnx, lambda c, x: onnx_int8(c, x.splits.X_train, x.config.calibration_batches),
                        True),
    "prune-structured": Method(_check_structured, lambda c, x: prune_structured(
        c, x.data, x.config.prune_fraction, x.config.finetune_epochs), False),
    "prune-unstructured": Method(_check_weights("prune-unstructured"), lambda c, x: prune_unstructured(
        c, x.data, x.config.target_sparsity, x.config.finetune_epochs), True),
    "distill": Method(_fp32_torch("distill"), lambda c, x: distill(
        c, x.data, x.config.student_hidden_sizes, x.config.distill_epochs, x.config.distill_temperature,
        x.config.distill_alpha), False),
    "fp16": Method(_fp32_torch("fp16"), lambda c, x: cast(c, "fp16"), True),
    "bf16": Method(_fp32_torch("bf16"), lambda c, x: cast(c, "bf16"), True),
}
assert set(METHODS) == set(COMPRESSION_METHODS), "config.COMPRESSION_METHODS and METHODS must agree"


def _precision_after(method: str) -> str | None:
    return {"int8-dynamic": "int8-dynamic", "fp16": "fp16", "bf16": "bf16"}.get(method)


def validate_request(baseline: Candidate, context: _Context) -> None:
    """Every problem found before any training or export starts."""
    for chain in context.config.compress_methods:
        steps = chain.split("+")
        probe = baseline
        for position, method in enumerate(steps):
            if method not in METHODS:
                raise CompressionError(f"unknown compression method {method!r}")
            if probe.kind == "onnx" or probe.spec.precision != "fp32":
                raise CompressionError(f"in {chain!r}, {method} cannot follow {steps[position - 1]} "
                                       "(quantised/cast/ONNX models are final)")
            METHODS[method].check(probe, context)
            if method == "onnx-int8":
                probe = Candidate(name=chain, spec=probe.spec, onnx=b"probe")
            elif _precision_after(method):
                probe = Candidate(name=chain, spec=probe.spec.model_copy(update={"precision": _precision_after(
                    method)}), module=probe.module)
            elif not METHODS[method].keeps_architecture:
                spec = probe.spec.model_copy(update={"config": probe.spec.config.model_copy(update={"model": "mlp"})})
                probe = Candidate(name=chain, spec=spec, module=probe.module)


def build_chain(baseline: Candidate, chain: str, context: _Context) -> Candidate:
    candidate = Candidate(name=chain, spec=baseline.spec, module=baseline.module, notes=[])
    for method in chain.split("+"):
        candidate = METHODS[method].apply(candidate, context)
        candidate.name = chain
    return candidate


def compress_step(splits_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
                  config: CompressConfig) -> dict:
    splits = read_splits(splits_dir)
    model, spec = load_model(model_dir)
    baseline = Candidate(name=BASELINE, spec=spec, module=model)
    context = _Context(splits=splits, config=config)
    validate_request(baseline, context)

    built: dict[str, Candidate] = {}
    build_seconds: dict[str, float] = {}
    for chain in config.compress_methods:
        started = time.perf_counter()
        built[chain] = build_chain(baseline, chain, context)
        build_seconds[chain] = time.perf_counter() - started
    base, *measurements = measure_all([baseline, *built.values()], splits.X_test, splits.y_test,
                                      threads=config.bench_threads, runs=config.bench_runs)
    for chain, result in zip(built, measurements, strict=True):
        result.notes.append(f"built in {build_seconds[chain]:.1f} s")

    report = {"baseline": base.to_dict(), "candidates": [m.to_dict() for m in measurements],
              "max_accuracy_drop": config.max_accuracy_drop, "objective": config.objective,
              "environment": environment(), "config": config.model_dump(), "chosen": None, "gate": "failed"}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        chosen = select(measurements, config.max_accuracy_drop, config.objective)
    except CompressionError:
        (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
        raise
    report.update(chosen=chosen.name, gate="passed")
    save_candidate(built[chosen.name], out_dir)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def load_report(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / REPORT_FILE).read_text())


def _rows(report: dict) -> list[dict]:
    return [report["baseline"], *report["candidates"]]


def to_markdown(report: dict) -> str:
    lines = ["# Compression", "",
             f"Gate: at most {report['max_accuracy_drop']} accuracy points lost; objective: {report['objective']}. "
             f"Chosen: **{report['chosen'] or 'none (gate failed)'}**.", "",
             "| candidate | accuracy | drop (pt) | F1 | size KiB | size × | gzip KiB | params | sparsity "
             "| p50 b1 ms | p99 b1 ms | p50 b32 ms | rows/s |",
             "| --- " * 13 + "|"]
    for m in _rows(report):
        lines.append(f"| {m['name']} | {m['accuracy']:.4f} | {m['accuracy_drop']:.2f} | {m['f1_macro']:.4f} | "
                     f"{m['size_bytes'] / 1024:.1f} | {m['size_ratio']:.2f} | {m['gzip_bytes'] / 1024:.1f} | "
                     f"{m['parameters']:,} | {m['sparsity']:.2f} | {m['p50_ms_b1']:.3f} | {m['p99_ms_b1']:.3f} | "
                     f"{m['p50_ms_b32']:.3f} | {m['throughput_rows_s']:,.0f} |")
    lines += ["", "Notes:"] + [f"- {m['name']}: {'; '.join(m['notes'])}" for m in report["candidates"]]
    env = report["environment"]
    lines += ["", f"Measured on {env['cores']} cores, CPU flags {', '.join(env['cpu_flags']) or 'none'}; "
              + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "."]
    return "\n".join(lines) + "\n"


def report_section(report: dict):
    """Accuracy vs latency, marker area proportional to size; the table beneath."""
    import matplotlib.pyplot as plt

    from kubeforge.report import Section, figure_to_img, table_html

    rows = _rows(report)
    fig, axis = plt.subplots(figsize=(7, 4))
    biggest = max(m["size_bytes"] for m in rows)
    # candidates often tie on accuracy and sit close in latency: stack the labels of near neighbours downwards
    span_x = (max(m["p50_ms_b1"] for m in rows) - min(m["p50_ms_b1"] for m in rows)) or 1.0
    span_y = (max(m["accuracy"] for m in rows) - min(m["accuracy"] for m in rows)) or 1.0
    placed: list[tuple[float, float]] = []
    for m in rows:
        x, y = m["p50_ms_b1"], m["accuracy"]
        axis.scatter(x, y, s=40 + 800 * m["size_bytes"] / biggest, alpha=0.6,
                     edgecolors="black", color="tab:red" if m["name"] == report["chosen"] else "tab:blue")
        crowd = sum(abs(x - px) < 0.15 * span_x and abs(y - py) < 0.08 * span_y for px, py in placed)
        axis.annotate(m["name"], (x, y), fontsize=8, xytext=(6, 6 - 11 * crowd), textcoords="offset points")
        placed.append((x, y))
    axis.margins(x=0.12, y=0.15)  # room for the labels of the outermost points
    axis.set_xlabel("p50 latency at batch 1 (ms)")
    axis.set_ylabel("test accuracy")
    axis.set_title("accuracy vs latency (marker area ~ size on disk; red = chosen)")
    table = table_html(["candidate", "accuracy", "drop (pt)", "size ×", "params", "sparsity", "p50 b1 ms",
                        "p99 b1 ms", "p50 b32 ms"],
                       [(m["name"], m["accuracy"], m["accuracy_drop"], m["size_ratio"], m["parameters"],
                         m["sparsity"], m["p50_ms_b1"], m["p99_ms_b1"], m["p50_ms_b32"]) for m in rows])
    chosen = report["chosen"] or "none (gate failed)"
    body = (f"<p>Chosen: <b>{chosen}</b> (objective {report['objective']}, max drop "
            f"{report['max_accuracy_drop']} points).</p>" + figure_to_img(fig, "compression trade-off") + table)
    return Section("Compression", body)


def summary_metrics(report: dict) -> dict[str, float]:
    """Flat numbers for the KFP Metrics artifact."""
    metrics: dict[str, float] = {}
    for m in _rows(report):
        key = m["name"].replace(" ", "_").replace("(", "").replace(")", "").replace("+", "_")
        metrics[f"{key}_accuracy"] = round(m["accuracy"], 5)
        metrics[f"{key}_p50_ms"] = round(m["p50_ms_b1"], 4)
        metrics[f"{key}_size_ratio"] = m["size_ratio"]
    chosen = next((m for m in report["candidates"] if m["name"] == report["chosen"]), None)
    if chosen:
        metrics.update(chosen_accuracy=round(chosen["accuracy"], 5), chosen_accuracy_drop=chosen["accuracy_drop"],
                       chosen_size_ratio=chosen["size_ratio"], chosen_p50_ms=round(chosen["p50_ms_b1"], 4),
                       chosen_p99_ms=round(chosen["p99_ms_b1"], 4))
    return metrics

