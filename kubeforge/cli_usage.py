"""`kubeforge usage [LOG ...]`: the LLM audit log summarised per tenant and model for a time window."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kubeforge.config import ConfigError


def usage(
    logs: Annotated[list[Path] | None, typer.Argument(
        help="audit logs (KUBEFORGE_LLM_AUDIT_LOG files, or saved `kubectl logs`; '-' or none: standard input)")] =
    None,
    since: Annotated[str | None, typer.Option(help="from: a duration ago (30m, 2h, 7d) or an ISO 8601 time")] = None,
    until: Annotated[str | None, typer.Option(help="until (excluded): a duration ago or an ISO 8601 time")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per row instead of a table")] = False,
) -> None:
    """Requests, refusals, tokens and latency per tenant and model (lines that are not audit records are skipped)."""
    from kubeforge.llm.tenancy.audit import read_audit
    from kubeforge.llm.tenancy.usage_report import parse_time, summarise

    errors = Console(stderr=True)
    try:
        start = parse_time(since) if since else None
        end = parse_time(until) if until else None
        with ExitStack() as stack:
            streams = [sys.stdin if str(p) == "-" else stack.enter_context(open(p)) for p in (logs or [Path("-")])]
            rows = summarise(read_audit(streams), start, end, tenant)
    except (ConfigError, OSError) as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.as_dict()))
        return
    table = Table("tenant", "model", "requests", "ok", "429", "other 4xx", "failed", "prompt tok", "completion tok",
                  "latency p50/p95 ms", "TTFT p50 ms", title="LLM usage")
    for row in rows:
        d = row.as_dict()
        table.add_row(d["tenant"], d["model"], str(d["requests"]), str(d["ok"]), str(d["rate_limited"]),
                      str(d["refused"]), str(d["failed"]), f"{d['prompt_tokens']:,}", f"{d['completion_tokens']:,}",
                      f"{_ms(d['latency_p50_ms'])} / {_ms(d['latency_p95_ms'])}", _ms(d["ttft_p50_ms"]))
    console = Console()
    (console if console.is_terminal else Console(width=max(console.width, 200))).print(table)  # pipes: no wrapping


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
