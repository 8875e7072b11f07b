"""Running and compiling pipelines: the one library module that touches KFP (imported lazily by the CLI).

Locally, kfp's SubprocessRunner(use_venv=False) runs each component in this interpreter's environment, which already
has kubeforge installed, so nothing is installed at run time. Outputs land in ``<runs>/<pipeline>-<timestamp>/``,
with each step's output in ``<step>/log.txt`` (kubeforge.run_output) and a ``summary.json``.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeforge.config import ConfigError, PlatformConfig, RunConfig
from kubeforge.run_output import KfpOutput, RunListener, StepFailure, capture_kfp_output, strip_ansi

# The project's error types for problems a user can cause (their settings, data or model files): a step failing
# with one of them (or a subclass) is bad input, anything else an internal failure.
USER_ERRORS = ("DataError", "ConfigError", "ModelError", "CompressionError", "CheckpointError")
_RUN_DIR_SUFFIX = re.compile(r"-\d{4}(?:-\d{2}){5}-\d{6}$")  # kfp.local's -%Y-%m-%d-%H-%M-%S-%f


class PipelineRunError(RuntimeError):
    """A local pipeline run failed. The message is the cause in the failing step's own words; ``details`` holds the
    rest of a multi-line message, ``log`` the step's log file, and ``user_error`` says whether it was bad input."""

    def __init__(self, message: str, *, step: str | None = None, log: Path | None = None, details: str = "",
                 user_error: bool = False, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.step, self.log, self.details, self.user_error, self.run_dir = step, log, details, user_error, run_dir


class _Silent:
    """The listener when nobody watches: the steps' output still goes to their log files."""

    def begin(self, pipeline: str, steps: list[str], profile: str) -> None: ...
    def end(self) -> None: ...
    def step_started(self, step: str) -> None: ...
    def step_line(self, step: str, line: str) -> None: ...
    def step_progress(self, step: str, progress: Any) -> None: ...
    def step_finished(self, step: str, status: str, seconds: float) -> None: ...
    def other_line(self, line: str) -> None: ...


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


def pipeline_steps(pipeline: Any) -> list[str]:
    """The steps of a built pipeline, each after the steps it needs (by depth, then name: kfp.local's own order
    varies between runs), named as the run directory names them."""
    spec = pipeline.pipeline_spec
    order: list[str] = []

    def walk(dag: Any) -> None:
        depth: dict[str, int] = {}

        def depth_of(task: str) -> int:
            if task not in depth:
                needs = [name for name in dag.tasks[task].dependent_tasks if name in dag.tasks]
                depth[task] = 1 + max((depth_of(name) for name in needs), default=-1)
            return depth[task]

        for task in sorted(dag.tasks, key=lambda name: (depth_of(name), name)):
            component = spec.components[dag.tasks[task].component_ref.name]
            if component.WhichOneof("implementation") == "dag":
                walk(component.dag)
            else:
                order.append(dag.tasks[task].component_ref.name.removeprefix("comp-"))

    walk(spec.root.dag)
    return order


def is_user_error(error_type: str) -> bool:
    """Whether an exception type, as a traceback names it (``kubeforge.data.DataError``), is one of USER_ERRORS or
    a subclass of one."""
    module, _, name = error_type.rpartition(".")
    if name in USER_ERRORS:
        return True
    if not module.startswith("kubeforge"):
        return False
    try:
        error_class = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(error_class, type) and any(base.__name__ in USER_ERRORS for base in error_class.__mro__)


def failure_error(failure: StepFailure, run_dir: Path | None) -> PipelineRunError:
    first, _, rest = failure.message.partition("\n")
    user_error = is_user_error(failure.error_type) if failure.error_type else False
    short_type = failure.error_type.rpartition(".")[2]
    if not first:
        cause = f"{failure.step} failed with {short_type} (no message)"
    elif user_error or not failure.error_type:
        cause = first.rstrip(":")
    else:
        cause = f"{short_type}: {first}"
    return PipelineRunError(cause, step=failure.step, log=failure.log, details=rest.strip(), user_error=user_error,
                            run_dir=run_dir)


def _new_run_dir(runs_root: Path, pipeline_name: str, existing: set[str]) -> Path | None:
    """The run directory kfp.local created for this run: the new ``<pipeline>-<timestamp>`` under the runs root."""
    fresh = sorted(path for path in runs_root.glob(f"{pipeline_name}-*")
                   if path.is_dir() and path.name not in existing
                   and _RUN_DIR_SUFFIX.search(path.name) and path.name[:-27] == pipeline_name)
    return fresh[0] if fresh else None


def _find_output(run_dir: Path, task: str, output: str) -> Path:
    matches = sorted(run_dir.glob(f"{task}*/{output}"))
    if not matches:
        raise PipelineRunError(f"run {run_dir} has no {task}/{output} output")
    return matches[0]


def _classifier_results(run_dir: Path) -> dict[str, Any]:
    from kubeforge.evaluation import Evaluation
    from kubeforge.steps import load_train_result

    trained = load_train_result(_find_output(run_dir, "train", "trained_model"))
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
    return {"training": {key: trained[key] for key in ("best_epoch", "epochs_run", "stopped_early", "device",
                                                       "samples_per_second", "parameters")},
            "test": evaluation.headline(), "compression": compression}


def pipeline_kind(pipeline: str) -> str:
    """'classifier' or 'language-model': which results a run of ``pipeline`` has."""
    from kubeforge_pipelines import pipeline_entry

    return getattr(pipeline_entry(pipeline), "kind", "classifier")


def summarise(run_dir: Path, pipeline: str, params: dict[str, Any], profile: str, seconds: float) -> dict[str, Any]:
    """What a reader wants first: the settings, the headline metrics and where the artifacts are."""
    if pipeline_kind(pipeline) == "language-model":
        from kubeforge.lm.steps import summarise_lm_run

        results = summarise_lm_run(run_dir)
    else:
        results = _classifier_results(run_dir)
    return {
        "pipeline": pipeline,
        "run_id": run_dir.name,
        "profile": profile,
        "wall_seconds": round(seconds, 2),
        "params": params,
        "training": results["training"],
        "test": results["test"],
        "compression": results.get("compression"),
        "artifacts": {path.parent.name + "/" + path.name: str(path.relative_to(run_dir))
                      for path in sorted(run_dir.glob("*/*"))},
    }


def run_local(name: str, overrides: dict[str, Any], platform: PlatformConfig, *, profile: str | None = None,
              runs_dir: str | Path = "runs", enable_caching: bool = False,
              listener: RunListener | None = None) -> LocalRun:
    """Run ``name`` through kfp.local. Data problems visible up front raise DataError before any step starts
    (kubeforge.preflight); a failed step raises PipelineRunError with the step's own error message. ``listener``
    (a kubeforge.live view) hears about every step as it runs."""
    from kubeforge.preflight import preflight
    from kubeforge_pipelines import build_pipeline, pipeline_entry

    reason = pipeline_entry(name).cluster_only
    if reason:
        raise ConfigError(f"{name} runs only on a Kubeflow cluster (kubeforge submit): {reason}")
    params = resolve_params(name, overrides)
    preflight(params)

    from kfp import local

    profile_name = platform.profile(profile or platform.default_profile).name
    pipeline = build_pipeline(name, platform, profile_name)
    steps = pipeline_steps(pipeline)
    spec_name = pipeline.pipeline_spec.pipeline_info.name
    runs_root = Path(runs_dir).resolve()
    runs_root.mkdir(parents=True, exist_ok=True)
    existing = {path.name for path in runs_root.iterdir()}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(runs_root),
               enable_caching=enable_caching, raise_on_error=True)
    watcher = listener or _Silent()
    output = KfpOutput(steps, watcher, lambda: _new_run_dir(runs_root, spec_name, existing))
    watcher.begin(name, steps, profile_name)
    started = time.perf_counter()
    try:
        with capture_kfp_output(output):
            task = pipeline(**params)
    except Exception as exc:  # kfp raises RuntimeError naming the failed task; the step's log says why
        failure = output.failure()
        if failure is not None:
            raise failure_error(failure, output.run_dir) from exc
        text = strip_ansi(str(exc)).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise PipelineRunError(f"pipeline {name} failed: {first_line}", run_dir=output.run_dir) from exc
    finally:
        watcher.end()
    seconds = time.perf_counter() - started
    produced = Path(task.output.path)  # the pipeline's single output: the report HTML
    run_dir = produced.parents[1]
    report = run_dir / "report.html"
    shutil.copyfile(produced, report)
    summary = summarise(run_dir, name, params, profile_name, seconds)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return LocalRun(pipeline=name, run_dir=run_dir, report=report, summary=summary)
