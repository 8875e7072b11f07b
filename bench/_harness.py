"""Shared benchmark plumbing: machine facts, interleaved repetition, figures, servers under test on free ports,
scratch language models and prompts, and one JSON file per benchmark."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

# where results are written; tests point it elsewhere so a run of the suite leaves the recorded figures alone
RESULTS = Path(os.environ.get("KUBEFORGE_BENCH_RESULTS", Path(__file__).parent / "results"))


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


# ---- figures --------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator is not None and denominator else None


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (/proc/stat, all cores): user, nice, system, idle, iowait, irq, softirq, steal."""
    try:
        return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None


def steal_pct(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of the machine's CPU time the hypervisor gave to other guests between two cpu_times(): on a shared VM a
    slow repeat with a high figure was the neighbours, not the code under test."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    elapsed = sum(after) - sum(before)
    return round(100 * (after[7] - before[7]) / elapsed, 1) if elapsed > 0 else None


# ---- servers under test ---------------------------------------------------------------------------------------

def metric_total(text: str, name: str) -> float:
    """The sum of every sample in a Prometheus text page whose name starts with ``name`` (all its label sets)."""
    return sum(float(line.rsplit(maxsplit=1)[1]) for line in text.splitlines() if line.startswith(name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Until GET /readyz answers 200; a server that exits or never gets ready is an error with its log's tail."""
    import httpx

    def tail() -> str:
        return log.read_text()[-2000:] if log is not None else f"exit status {process.returncode}"

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited: {tail()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s: {tail()}")


def cpu_split() -> tuple[set[int], set[int]]:
    """The CPUs this process may use, halved: the first half for the servers under test, the rest for the load
    generator, so that the client's CPU is not taken from the server, as when its clients are other machines."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise ValueError(f"pinning servers and load generator apart needs 2 CPUs; this process may use {len(cpus)}")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def add_pin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pin", action="store_true",
                        help="servers on the first half of the CPUs, the load generator on the rest")


def pinned_name(name: str, args: argparse.Namespace) -> str:
    """A results file's name: pinned runs are kept apart from unpinned ones (they measure a different placement)."""
    return name + ("_pinned" if args.pin else "")


def pinned_cpus(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[set[int] | None, set[int] | None]:
    """The servers' and the load generator's CPUs for ``--pin`` (None, None: anywhere); too few CPUs is a usage
    error."""
    if not args.pin:
        return None, None
    try:
        return cpu_split()
    except ValueError as exc:
        parser.error(str(exc))


def placement(server_cpus: set[int] | None, client_cpus: set[int] | None) -> str:
    """Where the servers and the load generator ran, for a benchmark's results."""
    if server_cpus is None:
        return "servers and load generator share every CPU"
    return f"servers on CPU {sorted(server_cpus)}, load generator on CPU {sorted(client_cpus or ())}"


def on_cpus(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that runs a child on ``cpus`` (its threads and children inherit them); None: anywhere."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (BentoML runs workers under an arbiter); Linux /proc only."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        tree.append(current)
    return tree


def user_and_kernel_seconds(pid: int) -> tuple[float, float]:
    """CPU time of a process and all its descendants: (user, kernel). The kernel's share is the sockets' and the
    event loop's system calls, which a Python profile does not see."""
    user = kernel = 0.0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / os.sysconf("SC_CLK_TCK")
            kernel += int(fields[12]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return user, kernel


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants."""
    return sum(user_and_kernel_seconds(pid))


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


# ---- language models ------------------------------------------------------------------------------------------

def scratch_lm(root: Path, preset: str) -> Path:
    """A scratch Llama (the preset) with a byte-level BPE on Python's docs, as the LM benchmarks serve it."""
    from pydoc_data.topics import topics

    from kubeforge.config.language import LMModelConfig
    from kubeforge.lm.sources import build_scratch_model

    corpus = [topics[name][:3000] for name in sorted(topics)[:40]]
    return build_scratch_model(preset, root / "base", corpus, LMModelConfig(base_model=f"scratch:{preset}",
                                                                             tokenizer_vocab=2048,
                                                                             context_length=256), seed=0)


def pydoc_prompts(count: int, words: int) -> list[str]:
    """``count`` prompts of the first ``words`` words of Python's documentation topics."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    return [" ".join(topics[names[(i * 7) % len(names)]].split()[:words]) for i in range(count)]
