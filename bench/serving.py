"""kubeforge's BentoML service vs a naive server, under the same load, in one run, interleaved.

(a) kubeforge: `kubeforge.serving.service` on the compressed model the gate picks (ONNX Runtime int8), settings from
    KUBEFORGE_SERVE_* (2 workers, 1 inference thread each, on this 2-core machine; batching at its defaults,
    max_batch_size 64 rows and max_latency_ms 20).
(a') the same service with batching off (max_batch_size 1), to show what batching adds.
(b) naive baseline: FastAPI + uvicorn (1 process), the uncompressed fp32 torch model, one forward per request.
All serve the same MLP 64-1024-1024-10 trained on digits and get identical payloads (digits rows, one per request)
from the same load generator: wrk (C, epoll; `apt-get install wrk`) with N connections for a fixed duration, or, where
wrk is missing, an aiohttp client with a fixed request count. Loopback only. The load generator shares the 2 cores
with the server under test, which caps both sides alike. Every level runs `--repeats` times, servers interleaved
(a, a', b, a, a', b, ...), and the medians are reported; the 1-minute load average is recorded before and after,
since the machine may be shared.

    python -m bench.serving [--seconds 5] [--repeats 3] [--requests 3000]
Target at 64 clients: >= 2.0x the baseline's throughput, p99 no worse, zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from bench._harness import write

CLIENTS = (1, 16, 64)

NAIVE_SERVER = textwrap.dedent("""
    import sys
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from kubeforge.models import load_model

    model, spec = load_model(sys.argv[1])
    app = FastAPI()

    class Request(BaseModel):
        instances: list[list[float]]

    @app.post("/predict")
    def predict(request: Request):
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.tensor(request.instances)), dim=1)
        return {"predictions": [{"class_index": int(p.argmax()), "probabilities": p.tolist()} for p in probabilities]}

    @app.get("/readyz")
    def ready():
        return "ok"

    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s")


async def load(url: str, payloads: list[bytes], clients: int, requests: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            try:
                async with session.post(url + "/predict", data=payloads[i % len(payloads)],
                                        headers={"content-type": "application/json"}) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": requests, "seconds": round(elapsed, 2),
            "req_per_s": round(requests / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "errors": errors}


WRK_SCRIPT = """
bodies = {{{bodies}}}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/predict", {{["Content-Type"] = "application/json"}}, bodies[(counter % #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %f %f %d\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration))
end
"""


def wrk_load(url: str, payloads: list[bytes], clients: int, seconds: int, workdir: Path) -> dict:
    bodies = ", ".join("[=[" + body.decode() + "]=]" for body in payloads[:64])  # JSON holds "]]"
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.format(bodies=bodies))
    threads = min(2, clients)
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s",
                           str(script), url], capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    requests, status_errors, socket_errors, p50, p99, duration_us = line.split()[1:]
    elapsed = int(duration_us) / 1e6
    return {"clients": clients, "requests": int(requests), "seconds": round(elapsed, 2),
            "req_per_s": round(int(requests) / elapsed, 1), "p50_ms": round(float(p50), 2),
            "p99_ms": round(float(p99), 2), "errors": int(status_errors) + int(socket_errors)}


def prepare_models(root: Path) -> tuple[Path, Path, list[bytes]]:
    from kubeforge.compression import Candidate
    from kubeforge.compression.artifact import save_candidate
    from kubeforge.compression.onnx_int8 import onnx_int8
    from kubeforge.config import DataConfig, ModelConfig, TrainConfig
    from kubeforge.data import load_table, split_table
    from kubeforge.models import ModelSpec, build_model, save_model
    from kubeforge.training import set_seed, train_model

    splits = split_table(load_table("digits"), DataConfig())
    spec = ModelSpec(config=ModelConfig(hidden_sizes=[1024, 1024]), input_dim=64, num_classes=10,
                     feature_names=splits.feature_names, class_names=splits.class_names,
                     scaler_mean=splits.scaler.mean.tolist(), scaler_scale=splits.scaler.scale.tolist())
    set_seed(0)
    model = build_model(spec)
    train_model(model, splits.X_train, splits.y_train, splits.X_val, splits.y_val,
                TrainConfig(epochs=10, learning_rate=1e-3, device="cpu"), root / "training", progress=False)
    save_model(model, spec, root / "fp32")
    save_candidate(onnx_int8(Candidate(name="onnx-int8", spec=spec, module=model.eval())), root / "int8")
    payloads = [json.dumps({"instances": [row.tolist()]}).encode() for row in splits.X_test]
    return root / "fp32", root / "int8", payloads


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (BentoML runs workers under an arbiter); Linux /proc only."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def summarize(runs: list[dict]) -> dict:
    """Medians over the interleaved repeats (errors are summed: one is one too many)."""
    middle = {key: round(statistics.median(run[key] for run in runs), 2)
              for key in ("req_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")}
    return {"clients": runs[0]["clients"], **middle, "errors": sum(run["errors"] for run in runs),
            "requests": sum(run["requests"] for run in runs), "repeats": len(runs),
            "req_per_s_runs": [run["req_per_s"] for run in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per level, for the aiohttp fallback")
    parser.add_argument("--seconds", type=int, default=5, help="per level, with wrk")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per level; medians are reported")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None
    bentoml = [str(Path(sys.executable).parent / "bentoml"), "serve", "kubeforge.serving.service:KubeforgeClassifier",
               "--host", "127.0.0.1", "--port", "{port}"]
    ours, unbatched, naive = ("kubeforge (BentoML, ONNX int8)", "kubeforge, batching off (max_batch_size 1)",
                              "naive (FastAPI, torch fp32)")
    load_before = os.getloadavg()[0]
    runs: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        fp32, int8, payloads = prepare_models(root)
        common = {"KUBEFORGE_MODEL_DIR": str(int8), "BENTOML_HOME": str(root / "bh"),
                  "KUBEFORGE_SERVE_WORKERS": str(args.workers), "KUBEFORGE_SERVE_THREADS": "1",
                  "KUBEFORGE_SERVE_MAX_CONCURRENCY": "1024"}
        servers = {ours: (bentoml, common),
                   unbatched: (bentoml, {**common, "KUBEFORGE_SERVE_MAX_BATCH_SIZE": "1"}),
                   naive: ([sys.executable, "-c", NAIVE_SERVER, str(fp32), "{port}"], {})}
        running: dict[str, tuple[str, subprocess.Popen]] = {}
        for name, (command, env) in servers.items():
            port = free_port()
            process = start([str(port) if part == "{port}" else part for part in command], env, root / f"{port}.log")
            stack.callback(stop, process)
            running[name] = (f"http://127.0.0.1:{port}", process)
        for name, (url, process) in running.items():
            wait_ready(url, process)
            asyncio.run(load(url, payloads, 8, 300))  # warm-up, not recorded
            runs[name] = {clients: [] for clients in CLIENTS}
        for _ in range(args.repeats):
            for clients in CLIENTS:
                for name, (url, process) in running.items():
                    cpu = cpu_seconds(process.pid)
                    if use_wrk:
                        result = wrk_load(url, payloads, clients, args.seconds, root)
                    else:
                        result = asyncio.run(load(url, payloads, clients, args.requests))
                    result["server_cpu_us_per_request"] = round(
                        (cpu_seconds(process.pid) - cpu) * 1e6 / max(result["requests"], 1), 1)
                    runs[name][clients].append(result)
    results = {name: [summarize(levels[clients]) for clients in CLIENTS] for name, levels in runs.items()}
    top = CLIENTS[-1]
    ratio = results[ours][-1]["req_per_s"] / results[naive][-1]["req_per_s"]
    paired = [a["req_per_s"] / b["req_per_s"] for a, b in zip(runs[ours][top], runs[naive][top], strict=True)]
    write("serving", {
        "load_generator": ("wrk" if use_wrk else "aiohttp") + ", one digits row per request, same machine "
                          "(shares the 2 cores with the server under test)",
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "results": results, "throughput_ratio_at_64": round(ratio, 2),
        "throughput_ratio_at_64_per_repeat": [round(r, 2) for r in paired],
        "batching_gain_at_64": round(results[ours][-1]["req_per_s"] / results[unbatched][-1]["req_per_s"], 2),
        "meets_target": {"throughput_2x": ratio >= 2.0,
                         "p99_no_worse": results[ours][-1]["p99_ms"] <= results[naive][-1]["p99_ms"],
                         "zero_errors": results[ours][-1]["errors"] == 0},
    }, command=f"python -m bench.serving --seconds {args.seconds} --repeats {args.repeats} --workers {args.workers}"
        if use_wrk else f"python -m bench.serving --requests {args.requests} --repeats {args.repeats}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


if __name__ == "__main__":
    main()
