"""One JSON line per request, for billing and investigation: time, tenant, key id, model, prompt and completion
tokens, status, latency (and time to first token, whether it streamed, the worker's pid). Never the prompt or the
completion unless ``include_text`` is set (KUBEFORGE_LLM_AUDIT_INCLUDE_TEXT=true): texts are the tenants' data.

Every line is written with one ``write`` on a file opened with O_APPEND, so the workers of a pod can share one file
without interleaving lines; ``-`` writes to standard output instead (the container log, where a log shipper picks
it up). Lines carry ``"event": "kubeforge.llm.request"`` so readers can skip whatever else shares the stream.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

EVENT = "kubeforge.llm.request"


def utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class AuditLog:
    def __init__(self, destination: str, include_text: bool = False):
        self.destination = destination
        self.include_text = include_text
        if destination == "-":
            self._fd = sys.stdout.fileno()
        else:
            Path(destination).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def record(self, *, tenant: str | None, key_id: str | None, model: str | None, prompt_tokens: int,
               completion_tokens: int, status: int, latency_s: float, ttft_s: float | None, stream: bool,
               error: str | None = None, prompt: Any = None, completion: Any = None, path: str = "") -> None:
        line: dict[str, Any] = {"event": EVENT, "time": utc_now(), "tenant": tenant, "key_id": key_id,
                                "model": model, "path": path, "prompt_tokens": prompt_tokens,
                                "completion_tokens": completion_tokens, "status": status,
                                "latency_ms": round(latency_s * 1000, 2),
                                "ttft_ms": None if ttft_s is None else round(ttft_s * 1000, 2),
                                "stream": stream, "pid": os.getpid()}
        if error:
            line["error"] = error
        if self.include_text:
            line["prompt"], line["completion"] = prompt, completion
        os.write(self._fd, (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        if self.destination != "-":
            os.close(self._fd)


def read_audit(streams: Iterable[TextIO]) -> Iterator[dict[str, Any]]:
    """The audit records in ``streams``; other lines (a container log's) are skipped."""
    for stream in streams:
        for line in stream:
            line = line.strip()
            if not line.startswith("{") or EVENT not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == EVENT:
                yield record
