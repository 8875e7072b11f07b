"""`kubeforge runs`: the local runs in a runs directory, one run in full, or two side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from kubeforge.config import ConfigError
from kubeforge.runs import RunRecord, compare_runs, find_run, format_value, list_runs, metric_rows

app = typer.Typer(no_args_is_help=True, help="Past local runs: list them, show one, compare two (from their "
                                             "summary.json).")
errors = Console(stderr=True)

RunsDirOption = Annotated[Path, typer.Option("--runs-dir", help="the runs directory `kubeforge run` wrote to")]
RunArgument = Annotated[str, typer.Argument(help="a run id (or a unique part of it), its directory, or 'latest'")]


def _console() -> Console:
    """The terminal's width on a terminal; wide lines in a pipe, where nothing wraps them (run ids are long)."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 200))


def _fail(message: str) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _find(reference: str, runs_dir: Path) -> RunRecord:
    try:
        return find_run(reference, runs_dir)
    except ConfigError as exc:
        _fail(str(exc))


def _wall(record: RunRecord) -> str:
    return f"{record.wall_seconds:.1f} s" if record.wall_seconds is not None else "-"


def _headline(record: RunRecord) -> str:
    return f"{record.headline[0]} {format_value(record.headline[1])}" if record.headline else "-"


@app.command("list")
def list_command(
    runs_dir: RunsDirOption = Path("runs"),
    pipeline: Annotated[str, typer.Option("--pipeline", help="only runs of this pipeline")] = "",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="at most this many, newest first")] = 50,
) -> None:
    """The runs, newest first: id, pipeline, when, headline metric, chosen candidate, wall time."""
    console = _console()
    records, incomplete = list_runs(runs_dir)
    records = [record for record in records if not pipeline or record.pipeline == pipeline]
    if not records:
        console.print(f"no runs in {runs_dir}" + (f" of {pipeline}" if pipeline else ""), highlight=False)
    else:
        table = Table("run", "pipeline", "when", "headline", "chosen", "wall time")
        for record in records[:limit]:
            table.add_row(record.run_id, record.pipeline, record.started.strftime("%Y-%m-%d %H:%M"),
                          _headline(record), record.chosen or "-", _wall(record))
        console.print(table)
    if incomplete:
        console.print(f"{len(incomplete)} run director{'y' if len(incomplete) == 1 else 'ies'} without a summary "
                      f"(failed or still running): {', '.join(path.name for path in incomplete[:3])}"
                      f"{', ...' if len(incomplete) > 3 else ''}", highlight=False, soft_wrap=True)


@app.command("show")
def show_command(run: RunArgument, runs_dir: RunsDirOption = Path("runs")) -> None:
    """One run: its settings, metrics, artifacts and report."""
    console = _console()
    record = _find(run, runs_dir)
    console.print(f"{record.run_id}  ({record.pipeline}, profile {record.summary.get('profile', '?')}, "
                  f"{record.started:%Y-%m-%d %H:%M}, wall time {_wall(record)})",
                  highlight=False, soft_wrap=True)
    metrics = Table("metric", "value", title="metrics")
    for name, value in metric_rows(record.summary):
        metrics.add_row(name, format_value(value))
    console.print(metrics)
    settings = Table("setting", "value", title="settings")
    for name, value in (record.summary.get("params") or {}).items():
        settings.add_row(name, format_value(value))
    console.print(settings)
    artifacts = Table("artifact", "path", title="artifacts")
    for name, relative in (record.summary.get("artifacts") or {}).items():
        artifacts.add_row(name, str(record.path / relative))
    console.print(artifacts)
    console.print(f"report: {record.report or '-'}\nrun directory: {record.path}", highlight=False, soft_wrap=True)


@app.command("compare")
def compare_command(first: RunArgument, second: RunArgument, runs_dir: RunsDirOption = Path("runs")) -> None:
    """Two runs side by side: every metric with its change, and the settings that differ."""
    console = _console()
    a, b = _find(first, runs_dir), _find(second, runs_dir)
    metric_diffs, setting_diffs = compare_runs(a, b)
    metrics = Table("metric", a.run_id, b.run_id, "change", title="metrics")
    for row in metric_diffs:
        metrics.add_row(row.name, format_value(row.first), format_value(row.second), row.delta)
    console.print(metrics)
    if setting_diffs:
        settings = Table("setting", a.run_id, b.run_id, title="settings that differ")
        for row in setting_diffs:
            settings.add_row(row.name, format_value(row.first), format_value(row.second))
        console.print(settings)
    else:
        console.print("settings: identical", highlight=False)
