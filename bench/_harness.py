"""Shared benchmark plumbing: machine facts, interleaved repetition, and one JSON file per benchmark."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_flags() -> list[str]:
    """The SIMD flags that decide int8/fp32 kernel speed, so figures from different machines can be compared."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "f16c", "amx_int8", "sse4_2")
                return [flag for flag in line.split(":", 1)[1].split() if flag in wanted]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(*packages: str) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "versions": versions("torch", "kfp", "onnxruntime", "bentoml", "numpy")}


def interleaved(candidates: dict[str, Callable[[], float | None]], repeats: int) -> dict[str, list[float]]:
    """Run A, B, A, B, ... so drift in machine load hits every candidate alike; returns seconds per run.

    A candidate may return its own measured seconds (e.g. excluding set-up); otherwise wall time is used.
    """
    timings: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            started = time.perf_counter()
            measured = run()
            timings[name].append(measured if measured is not None else time.perf_counter() - started)
    return timings


def median(values: list[float]) -> float:
    return statistics.median(values)


def write(name: str, result: dict, command: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": command, "machine": machine(),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))
    return path
