"""Past local runs, read back from each run directory's summary.json (what `kubeforge runs` shows).

Classifier and language-model runs write the same top-level keys (pipeline, run_id, profile, wall_seconds, params,
training, test, compression, artifacts); only the metric names inside differ, so nothing here names a metric except
the headline, which is the first of HEADLINE_METRICS a run's test results have.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeforge.config import ConfigError

SUMMARY = "summary.json"
HEADLINE_METRICS = ("accuracy", "perplexity")
METRIC_SECTIONS = ("test", "training", "compression")
LATEST = ("latest", "last")
_STAMP = re.compile(r"-(\d{4})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{6})$")


@dataclass(frozen=True)
class RunRecord:
    path: Path
    summary: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or self.path.name)

    @property
    def pipeline(self) -> str:
        return str(self.summary.get("pipeline", "?"))

    @property
    def started(self) -> datetime.datetime:
        """From the run id kfp.local gives (``<pipeline>-%Y-%m-%d-%H-%M-%S-%f``, local time), else the file's age."""
        stamp = _STAMP.search(self.path.name)
        if stamp:
            return datetime.datetime(*map(int, stamp.groups()))
        return datetime.datetime.fromtimestamp((self.path / SUMMARY).stat().st_mtime)

    @property
    def headline(self) -> tuple[str, Any] | None:
        test = self.summary.get("test") or {}
        return next(((name, test[name]) for name in HEADLINE_METRICS if name in test), None)

    @property
    def chosen(self) -> str | None:
        compression = self.summary.get("compression") or {}
        return compression.get("chosen")

    @property
    def wall_seconds(self) -> float | None:
        return self.summary.get("wall_seconds")

    @property
    def report(self) -> Path | None:
        report = self.path / "report.html"
        return report if report.is_file() else None


def format_value(value: Any) -> str:
    """One cell: 4 decimals for small floats, thousands separators for big numbers, lists as written."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def read_run(path: Path) -> RunRecord:
    summary_file = path / SUMMARY
    if not summary_file.is_file():
        raise ConfigError(f"{path} has no {SUMMARY}: the run failed or has not finished (its step logs are in "
                          f"{path}/<step>/log.txt)")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{summary_file}: unreadable ({exc})") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{summary_file}: not a run summary (expected a JSON object)")
    return RunRecord(path=path, summary=summary)


def list_runs(runs_dir: str | Path) -> tuple[list[RunRecord], list[Path]]:
    """(runs with a summary, newest first; run directories without a readable one: failed or still running)."""
    root = Path(runs_dir)
    records, incomplete = [], []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            records.append(read_run(path))
        except ConfigError:
            if _STAMP.search(path.name):
                incomplete.append(path)
    records.sort(key=lambda record: (record.started, record.run_id), reverse=True)
    return records, incomplete


def find_run(reference: str, runs_dir: str | Path) -> RunRecord:
    """A run by directory path, run id, a unique part of its id, or ``latest`` (raises ConfigError)."""
    root = Path(runs_dir)
    direct = Path(reference)
    for candidate in (direct, root / reference):
        if candidate.is_dir() and (candidate / SUMMARY).exists():
            return read_run(candidate)
    if (root / reference).is_dir():
        return read_run(root / reference)
    records, _ = list_runs(root)
    if reference in LATEST:
        if not records:
            raise ConfigError(f"no runs in {root} (kubeforge run writes them there)")
        return records[0]
    matches = [record for record in records if reference in record.run_id]
    prefixed = [record for record in matches if record.run_id.startswith(reference)]
    matches = prefixed or matches
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(f"no run {reference!r} in {root}; `kubeforge runs list` shows the runs there")
    names = ", ".join(record.run_id for record in matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise ConfigError(f"run {reference!r} is ambiguous in {root}: {names}")


def metric_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) of every metric, test first; names carry their section except for test results."""
    rows: list[tuple[str, Any]] = []
    for section in METRIC_SECTIONS:
        values = summary.get(section) or {}
        prefix = "" if section == "test" else f"{section} "
        rows.extend((f"{prefix}{name}", value) for name, value in values.items()
                    if not isinstance(value, (dict, list)))
    return rows


@dataclass(frozen=True)
class Difference:
    name: str
    first: Any
    second: Any

    @property
    def delta(self) -> str:
        a, b = self.first, self.second
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        if not numeric:
            return ""
        change = b - a
        relative = f" ({change / a:+.1%})" if a else ""
        return f"{'+' if change >= 0 else ''}{format_value(change)}{relative}"


def _pairs(first: Iterable[tuple[str, Any]], second: Iterable[tuple[str, Any]]) -> list[Difference]:
    a, b = dict(first), dict(second)
    names = list(a) + [name for name in b if name not in a]
    return [Difference(name, a.get(name), b.get(name)) for name in names]


def _overview(record: RunRecord) -> list[tuple[str, Any]]:
    return [("pipeline", record.pipeline), ("profile", record.summary.get("profile")),
            ("wall seconds", record.wall_seconds)]


def compare_runs(first: RunRecord, second: RunRecord) -> tuple[list[Difference], list[Difference]]:
    """(metrics of both side by side with the change, settings that differ); pipeline, profile and wall time count
    as metrics here, being what a reader compares first."""
    metrics = _pairs(_overview(first) + metric_rows(first.summary), _overview(second) + metric_rows(second.summary))
    settings = [difference for difference in _pairs((first.summary.get("params") or {}).items(),
                                                    (second.summary.get("params") or {}).items())
                if difference.first != difference.second]
    return metrics, settings
