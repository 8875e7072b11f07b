"""Progress lines a pipeline step prints, and how `kubeforge run` reads them back.

A step runs in a subprocess whose output kfp.local forwards line by line, so progress travels as text. Two forms
are understood:

- the explicit line ``KUBEFORGE_PROGRESS {json}`` (one line, printed to stdout or stderr and flushed), with the keys
  ``bar`` (str, which bar of the step: "train", "candidates", ...), ``done`` (int), ``total`` (int or null),
  ``unit`` (str: "epoch", "step", "candidate", ...), ``metrics`` (object of name -> number or short string, e.g.
  ``{"loss": 0.41}``) and ``label`` (str, what is being worked on now, e.g. a candidate's name); only ``bar`` and
  ``done`` are required. :func:`progress_line` writes it.
- a tqdm bar as tqdm prints it into a pipe (``train:  32%|###  | 13/40 [00:16<00:47, 1.75s/epoch, loss=0.08]``),
  because the training loops already draw one; its postfix becomes the metrics.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

PREFIX = "KUBEFORGE_PROGRESS "

_TQDM = re.compile(r"^(?P<desc>[\w .+-]{1,40}): *\d+%\|[^|]*\| *(?P<done>\d+)/(?P<total>\d+) "
                   r"\[(?P<inside>[^\]]*)\]\s*$")
_RATE_UNIT = re.compile(r"^(?:[\d.?]+)(?:s/(?P<per>\w+)|(?P<unit>\w+)/s)$")


@dataclass(frozen=True)
class Progress:
    bar: str
    done: int
    total: int | None = None
    unit: str = ""
    metrics: dict[str, float | str] = field(default_factory=dict)
    label: str = ""

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None

    def describe(self) -> str:
        """``epoch 13/40  val_loss 0.0813`` (plain text, for the live view and for logs)."""
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        parts = [f"{self.unit} {count}".strip()]
        if self.label:
            parts.append(self.label)
        parts.extend(f"{name} {_short(value)}" for name, value in self.metrics.items())
        return "  ".join(parts)


def _short(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def progress_line(bar: str, done: int, total: int | None = None, *, unit: str = "", label: str = "",
                  **metrics: float | str) -> str:
    payload: dict[str, Any] = {"bar": bar, "done": int(done), "total": None if total is None else int(total)}
    if unit:
        payload["unit"] = unit
    if label:
        payload["label"] = label
    if metrics:
        payload["metrics"] = metrics
    return PREFIX + json.dumps(payload, separators=(",", ":"))


def emit_progress(bar: str, done: int, total: int | None = None, *, unit: str = "", label: str = "",
                  stream: TextIO | None = None, **metrics: float | str) -> None:
    """Print one progress line for the live view of `kubeforge run` (harmless anywhere else: one short line)."""
    print(progress_line(bar, done, total, unit=unit, label=label, **metrics), file=stream or sys.stdout, flush=True)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _from_explicit(text: str) -> Progress | None:
    try:
        payload = json.loads(text)
        bar, done = str(payload["bar"]), int(payload["done"])
        total = payload.get("total")
        metrics = payload.get("metrics") or {}
        return Progress(bar=bar, done=done, total=None if total is None else int(total),
                        unit=str(payload.get("unit", "")), label=str(payload.get("label", "")),
                        metrics={str(k): v if isinstance(v, (int, float, str)) else str(v)
                                 for k, v in dict(metrics).items()})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _from_tqdm(match: re.Match[str]) -> Progress:
    unit, metrics = "", {}
    for part in (piece.strip() for piece in match["inside"].split(",")):
        name, sep, value = part.partition("=")
        if sep:
            metrics[name.strip()] = _number(value.strip())
            continue
        rate = _RATE_UNIT.match(part)
        if rate:
            unit = rate["per"] or rate["unit"] or unit
    return Progress(bar=match["desc"].strip(), done=int(match["done"]), total=int(match["total"]) or None,
                    unit=unit, metrics=metrics)


def parse_progress(line: str) -> Progress | None:
    """The progress a log line reports, or None for an ordinary line."""
    text = line.strip()
    if text.startswith(PREFIX.strip()):
        return _from_explicit(text[len(PREFIX.strip()):].strip())
    if "|" not in text or "/" not in text:
        return None
    match = _TQDM.match(text)
    return _from_tqdm(match) if match else None
