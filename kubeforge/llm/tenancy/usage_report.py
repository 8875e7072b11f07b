"""`kubeforge usage`: the audit log summarised per tenant and model for a time window."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubeforge.config import ConfigError

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``30m``/``2h``/``7d`` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    match = _AGO.match(text.strip())
    if match:
        return now - dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class UsageRow:
    tenant: str
    model: str
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    refused: int = 0  # other 4xx
    failed: int = 0  # 5xx, or the client gone
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)

    def add(self, record: dict) -> None:
        status = int(record.get("status") or 0)
        self.requests += 1
        self.ok += 200 <= status < 300
        self.rate_limited += status == 429
        self.refused += 400 <= status < 500 and status not in (429, 499)
        self.failed += status >= 500 or status == 499
        self.prompt_tokens += int(record.get("prompt_tokens") or 0)
        self.completion_tokens += int(record.get("completion_tokens") or 0)
        if record.get("latency_ms") is not None:
            self.latencies.append(float(record["latency_ms"]))
        if record.get("ttft_ms") is not None:
            self.ttfts.append(float(record["ttft_ms"]))

    def as_dict(self) -> dict:
        return {"tenant": self.tenant, "model": self.model, "requests": self.requests, "ok": self.ok,
                "rate_limited": self.rate_limited, "refused": self.refused, "failed": self.failed,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "latency_p50_ms": _percentile(self.latencies, 50), "latency_p95_ms": _percentile(self.latencies, 95),
                "ttft_p50_ms": _percentile(self.ttfts, 50)}


def summarise(records: Iterable[dict], since: dt.datetime | None = None, until: dt.datetime | None = None,
              tenant: str | None = None) -> list[UsageRow]:
    """One row per (tenant, model) of the records in [since, until); refusals before a tenant was known (no or a
    wrong key) under tenant "-" and model "-"."""
    rows: dict[tuple[str, str], UsageRow] = {}
    for record in records:
        try:
            moment = dt.datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
        except (KeyError, ValueError):
            continue
        if (since and moment < since) or (until and moment >= until):
            continue
        who, model = record.get("tenant") or "-", record.get("model") or "-"
        if tenant is not None and who != tenant:
            continue
        rows.setdefault((who, model), UsageRow(who, model)).add(record)
    return [rows[key] for key in sorted(rows)]
