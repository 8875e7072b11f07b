"""Running and compiling pipelines: the one library module that touches KFP (imported lazily by the CLI).

Locally, kfp's SubprocessRunner(use_venv=False) runs each component in this interpreter's environment, which already
has kubeforge installed, so nothing is installed at run time. Outputs land in ``<runs>/<pipeline>-<timestamp>/``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeforge.config import ConfigError, PlatformConfig, RunConfig


class PipelineRunError(RuntimeError):
    """A local pipeline run failed; the message names the failing task when kfp reports it."""


@dataclass(frozen=True)
class LocalRun:
    pipeline: str
    run_dir: Path
    report: Path
    summary: dict[str, Any] = field(default_factory=dict)


def resolve_params(pipeline: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validated arguments of ``pipeline``: RunConfig defaults with the overrides applied (raises ConfigError)."""
    from kubeforge_pipelines import pipeline_entry

    entry = pipeline_entry(pipeline)
    fixed = sorted(set(overrides) & set(entry.fixed))
    if fixed:
        raise ConfigError(f"parameter {fixed[0]!r} cannot be set for {pipeline}: it is fixed when the pipeline is "
                          "compiled (a volume mount path must be static in KFP)")
    flat = RunConfig.from_flat(overrides, entry.sections).to_flat(entry.sections)
    return {name: value for name, value in flat.items() if name not in entry.fixed}


def compile_pipeline(name: str, output: str | Path, platform: PlatformConfig, profile: str | None = None, *,
                     cache_training: bool = False) -> Path:
    """Write the KFP IR of ``name``; training stays uncached unless ``cache_training`` (a cluster caches by default)."""
    from kfp import compiler

    from kubeforge_pipelines import build_pipeline

    pipeline = build_pipeline(name, platform, profile, cache_training=cache_training)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(output))
    return output


def _find_output(run_dir: Path, task: str, output: str) -> Path:
    matches = sorted(run_dir.glob(f"{task}*/{output}"))
    if not matches:
        raise PipelineRunError(f"run {run_dir} has no {task}/{output} output")
    return matches[0]


def summarise(run_dir: Path, pipeline: str, params: dict[str, Any], profile: str, seconds: float) -> dict[str, Any]:
    """What a reader wants first: the settings, the headline metrics and where the artifacts are."""
    from kubeforge.evaluation import Evaluation
    from kubeforge.steps import load_train_result

    model_dir = _find_output(run_dir, "train", "trained_model")
    trained = load_train_result(model_dir)
    evaluation = Evaluation.load(_find_output(run_dir, "evaluate", "evaluation"))
    compression = None
    reports = sorted(run_dir.glob("compress*/compressed_model/compression.json"))
    if reports:
        report = json.loads(reports[0].read_text())
        chosen = next((m for m in report["candidates"] if m["name"] == report["chosen"]), None)
        compression = {"chosen": report["chosen"], "gate": report["gate"],
                       "max_accuracy_drop": report["max_accuracy_drop"],
                       "model_dir": str(reports[0].parent.relative_to(run_dir)),
                       **({key: chosen[key] for key in ("accuracy", "accuracy_drop", "size_bytes", "size_ratio",
                                                        "p50_ms_b1", "p99_ms_b1", "precision", "kind")}
                          if chosen else {})}
    return {
        "pipeline": pipeline,
        "run_id": run_dir.name,
        "profile": profile,
        "wall_seconds": round(seconds, 2),
        "params": params,
        "training": {key: trained[key] for key in ("best_epoch", "epochs_run", "stopped_early", "device",
                                                    "samples_per_second", "parameters")},
        "test": evaluation.headline(),
        "compression": compression,
        "artifacts": {path.parent.name + "/" + path.name: str(path.relative_to(run_dir))
                      for path in sorted(run_dir.glob("*/*"))},
    }


def run_local(name: str, overrides: dict[str, Any], platform: PlatformConfig, *, profile: str | None = None,
              runs_dir: str | Path = "runs", enable_caching: bool = False) -> LocalRun:
    from kfp import local

    from kubeforge_pipelines import build_pipeline, pipeline_entry

    reason = pipeline_entry(name).cluster_only
    if reason:
        raise ConfigError(f"{name} runs only on a Kubeflow cluster (kubeforge submit): {reason}")
    params = resolve_params(name, overrides)
    profile_name = platform.profile(profile or platform.default_profile).name
    pipeline = build_pipeline(name, platform, profile_name)
    runs_root = Path(runs_dir).resolve()
    runs_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(runs_root),
               enable_caching=enable_caching, raise_on_error=True)
    started = time.perf_counter()
    try:
        task = pipeline(**params)
    except Exception as exc:  # kfp raises RuntimeError naming the failed task; keep its first line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineRunError(f"pipeline {name} failed: {first_line}") from exc
    seconds = time.perf_counter() - started
    produced = Path(task.output.path)  # the pipeline's single output: the report HTML
    run_dir = produced.parents[1]
    report = run_dir / "report.html"
    shutil.copyfile(produced, report)
    summary = summarise(run_dir, name, params, profile_name, seconds)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return LocalRun(pipeline=name, run_dir=run_dir, report=report, summary=summary)
