"""Serving benchmark: kubeforge's BentoML service vs a naive server and a null app, in one run, interleaved.

Servers (all on one uvicorn worker, the same HTTP stack: uvloop/httptools when installed, else asyncio/h11;
``--stack h11`` hides uvloop/httptools from every server):
(a) kubeforge: `kubeforge.serving.service` with its defaults (1 worker, 1 inference thread, batching and adaptive
    admission at their defaults) on the compressed model the gate picks (ONNX Runtime int8).
(b) naive: FastAPI + uvicorn, the uncompressed fp32 torch model, one forward per request.
(c) null: an ASGI app that reads the body and answers a constant: the ceiling of the stack through ASGI.
Also measured: (a) with its fast path off (``KUBEFORGE_SERVE_FAST_PATH=false``: /predict through ASGI too), and a
null httptools protocol answering a constant from its parser callbacks (the floor below ASGI that kubeforge's fast
path stands on; with httptools only).
All serve (or pretend to serve) the MLP 64-1024-1024-10 trained on digits and get identical payloads, one digits row
per request. Loopback only; the load generator shares the 2 cores with the server under test, or with ``--pin``
runs on its own half of them (the servers on the other half, each alone while it is measured: the others idle), as
when the clients are other machines; the figures then go to bench/results/serving_pinned.json.

Part 1, equal workers: wrk (`apt-get install wrk`; else bench.serving_load) at 1, 16 and 64 connections for a
fixed duration; throughput, p50/p99, errors and the server's CPU per request. Targets at 64: kubeforge >= 3x naive and
>= 60 % of null.
Part 2, overload (bench.serving_overload): closed-loop clients (bench.serving_load: latencies kept apart for 2xx and
503) at 1x, 2x, 8x and 16x the concurrency that saturates kubeforge (the smallest of 1, 2, 4, 8, 16, 32 clients
reaching 90 % of the best goodput, each level's best of three sweeps), for kubeforge with its defaults, kubeforge with
its latency target sized for this model and naive, once with clients that send again at once (wrk-like, and with the
null httptools protocol as the floor) and once with clients that honour Retry-After; goodput, p50/p99 of accepted
requests, p99 of 503s, errors, server RSS, the server's CPU and the load generator's. Targets: goodput at 8x and 16x
>= 85 % of the peak, accepted p99 <= 2x the p99 at 1x, 503 p99 <= 5 ms, RSS within 10 % of the 1x level, no
connection errors, naive beaten at every level.
Every level runs `--repeats` times with the servers interleaved, medians reported; the 1-minute load average is
recorded before and after, and each run's CPU steal (the share of the machine the hypervisor gave to other guests),
since the machine is shared; the overload goodput targets are also given per repeat (each repeat's levels against
that repeat's best), which a neighbour slowing a whole repeat does not move, and per second of the server's CPU, which
CPU taken from the server does not move.

    python -m bench.serving [--seconds 5] [--overload-seconds 3] [--repeats 3] [--stack auto|h11] [--pin]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from bench._harness import (add_pin_option, cpu_seconds, cpu_times, free_port, on_cpus, pinned_cpus, pinned_name,
                            placement, steal_pct, stop, versions, wait_ready, write)
from bench.serving_overload import (MODES, closed_loop, median_of, overload_targets, run_overload, saturated_median_ms,
                                     saturation, sized_target_ms)

CLIENTS = (1, 16, 64)
STARTUP_TIMEOUT_S = 120

NULL_SERVER = textwrap.dedent("""
    import sys
    import uvicorn

    BODY = b'{"ok":true}'
    HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
""")
# the floor below ASGI: the same uvicorn + httptools protocol answering a constant from its parser callbacks, as
# kubeforge's fast path does (kubeforge.serving.fastpath); only with httptools
NULL_PROTOCOL_SERVER = textwrap.dedent("""
    import sys
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    BODY = b'{"ok":true}'
    ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 11\\r\\n\\r\\n" + BODY

    class NullProtocol(HttpToolsProtocol):
        def on_headers_complete(self):
            pass

        def on_body(self, body):
            pass

        def on_message_complete(self):
            self.transport.write(ANSWER)

    async def app(scope, receive, send):
        raise RuntimeError("every request is answered by the protocol")

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", http=NullProtocol,
                lifespan="off")
""")
# on PYTHONPATH of every server with --stack h11: uvicorn's "auto" then picks asyncio and h11
HIDE_FAST_STACK = 'import sys\nsys.modules["uvloop"] = None\nsys.modules["httptools"] = None\n'


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


def wrk_load(url: str, payloads: list[bytes], clients: int, seconds: int, workdir: Path,
             cpus: set[int] | None = None) -> dict:
    bodies = ", ".join("[=[" + body.decode() + "]=]" for body in payloads[:64])  # JSON holds "]]"
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.format(bodies=bodies))
    threads = min(2, clients)
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s",
                           str(script), url], capture_output=True, text=True, check=True, start_new_session=True,
                          preexec_fn=on_cpus(cpus))
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    requests, status_errors, socket_errors, p50, p99, duration_us = line.split()[1:]
    elapsed = int(duration_us) / 1e6
    return {"clients": clients, "requests": int(requests), "seconds": round(elapsed, 2),
            "req_per_s": round(int(requests) / elapsed, 1), "p50_ms": round(float(p50), 2),
            "p99_ms": round(float(p99), 2), "errors": int(status_errors) + int(socket_errors)}


def bentoml_serve() -> list[str]:
    """kubeforge's service under ``bentoml serve`` on loopback; ``{port}`` is filled in by ``start_server``."""
    return [str(Path(sys.executable).parent / "bentoml"), "serve", "kubeforge.serving.service:KubeforgeClassifier",
            "--host", "127.0.0.1", "--port", "{port}"]


def kubeforge_env(model_dir: Path) -> dict[str, str]:
    """What kubeforge's service needs to serve a model directory, such as the compressed model from
    ``prepare_models`` (``start_server`` gives each server its BentoML home)."""
    return {"KUBEFORGE_MODEL_DIR": str(model_dir)}


def write_payloads(root: Path, payloads: list[bytes]) -> Path:
    """The request bodies as bench.serving_load reads them."""
    path = root / "payloads.json"
    path.write_text(json.dumps([body.decode() for body in payloads]))
    return path


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


def start(command: list[str], env: dict, log: Path, cpus: set[int] | None = None) -> subprocess.Popen:
    """Each server in its own session, as BentoML's workers are: with the kernel's autogroup scheduling a session is
    one scheduling group, so a server sharing the benchmark's session would share its CPU share with the load
    generator."""
    return subprocess.Popen(command, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=on_cpus(cpus))


def start_server(stack: contextlib.ExitStack, command: list[str], env: dict, root: Path,
                 cpus: set[int] | None = None) -> tuple[str, subprocess.Popen, Path]:
    """Start a server on a free port (``{port}`` in ``command``), stopped when ``stack`` closes: its URL, process
    and log. Each gets its own BentoML home: a BentoML server empties the Prometheus directory there when it starts,
    so servers sharing one would read each other's metrics, or none."""
    port = free_port()
    log = root / f"{port}.log"
    env = {"BENTOML_HOME": str(root / f"bentoml-home-{port}"), **env}
    process = start([str(port) if part == "{port}" else part for part in command], env, log, cpus)
    stack.callback(stop, process)
    return f"http://127.0.0.1:{port}", process, log


def warm_up(url: str, process: subprocess.Popen, log: Path, payload_file: Path, cpus: set[int] | None = None) -> None:
    """Until the server is ready, then a second of load that is not recorded."""
    wait_ready(url, process, STARTUP_TIMEOUT_S, log)
    closed_loop(url, payload_file, 8, 1, False, cpus)


def summarize(runs: list[dict]) -> dict:
    """Medians over the interleaved repeats (errors are summed: one is one too many)."""
    middle = {key: median_of(runs, key)
              for key in ("req_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request", "cpu_steal_pct")}
    return {"clients": runs[0]["clients"], **middle, "errors": sum(run["errors"] for run in runs),
            "requests": sum(run["requests"] for run in runs), "repeats": len(runs),
            "req_per_s_runs": [run["req_per_s"] for run in runs],
            "cpu_steal_pct_runs": [run["cpu_steal_pct"] for run in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per level of part 1")
    parser.add_argument("--overload-seconds", type=float, default=3, help="per level of part 2")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per level; medians are reported")
    parser.add_argument("--stack", choices=("auto", "h11"), default="auto")
    parser.add_argument("--saturation", type=int, default=0, help="clients that saturate kubeforge (0: measure)")
    add_pin_option(parser)
    args = parser.parse_args()
    server_cpus, client_cpus = pinned_cpus(args, parser)
    use_wrk = shutil.which("wrk") is not None
    bentoml = bentoml_serve()
    ours, naive, null = "kubeforge (BentoML, ONNX int8, 1 worker)", "naive (FastAPI, torch fp32, 1 worker)", \
        "null ASGI app (the stack's ceiling)"
    ours_asgi, null_protocol = "kubeforge, fast path off (all through ASGI)", "null httptools protocol (below ASGI)"
    load_before = os.getloadavg()[0]
    runs: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        fp32, int8, payloads = prepare_models(root)
        payload_file = write_payloads(root, payloads)
        stack_env: dict[str, str] = {}
        if args.stack == "h11":
            (root / "stack").mkdir()
            (root / "stack" / "sitecustomize.py").write_text(HIDE_FAST_STACK)
            stack_env = {"PYTHONPATH": str(root / "stack")}
        served = kubeforge_env(int8)
        servers = {ours: (bentoml, served),
                   ours_asgi: (bentoml, {**served, "KUBEFORGE_SERVE_FAST_PATH": "false"}),
                   naive: ([sys.executable, "-c", NAIVE_SERVER, str(fp32), "{port}"], {}),
                   null: ([sys.executable, "-c", NULL_SERVER, "{port}"], {})}
        if args.stack == "auto" and versions("httptools")["httptools"] != "not installed":
            servers[null_protocol] = ([sys.executable, "-c", NULL_PROTOCOL_SERVER, "{port}"], {})
        running: dict[str, tuple[str, subprocess.Popen]] = {}

        def launch(names: list[str]) -> None:
            """Start the named servers at once, then wait for each and warm it up (not recorded)."""
            logs = {}
            for name in names:
                command, env = servers[name]
                url, process, logs[name] = start_server(stack, command, {**env, **stack_env}, root, server_cpus)
                running[name] = (url, process)
            for name in names:
                warm_up(*running[name], logs[name], payload_file, client_cpus)

        launch(list(servers))
        runs.update({name: {clients: [] for clients in CLIENTS} for name in servers})
        for _ in range(args.repeats):
            for clients in CLIENTS:
                for name, (url, process) in running.items():
                    cpu = cpu_seconds(process.pid)
                    if use_wrk:
                        counters = cpu_times()
                        result = wrk_load(url, payloads, clients, args.seconds, root, client_cpus)
                        result["cpu_steal_pct"] = steal_pct(counters, cpu_times())
                    else:  # bench.serving_load measures the steal of its own window
                        loaded = closed_loop(url, payload_file, clients, args.seconds, False, client_cpus)
                        result = {"clients": clients, "requests": loaded["ok"] + loaded["shed_503"],
                                  "req_per_s": loaded["requests_per_s"], "p50_ms": loaded["accepted_p50_ms"],
                                  "p99_ms": loaded["accepted_p99_ms"], "cpu_steal_pct": loaded["cpu_steal_pct"],
                                  "errors": loaded["shed_503"] + loaded["other_status"] + loaded["connection_errors"]}
                    result["server_cpu_us_per_request"] = round(
                        (cpu_seconds(process.pid) - cpu) * 1e6 / max(result["requests"], 1), 1)
                    runs[name][clients].append(result)
        if args.saturation:
            saturating, sweep = args.saturation, {}
            saturated_p50 = saturated_median_ms(running[ours][0], payload_file, saturating, 1, client_cpus)
        else:
            saturating, sweep, saturated_p50 = saturation(running[ours][0], payload_file, cpus=client_cpus)
        target_ms = sized_target_ms(saturated_p50)
        sized = f"kubeforge, latency_target_ms={target_ms} (the saturated median + 40 %, as docs/serving.md sizes it)"
        servers[sized] = (bentoml, {**served, "KUBEFORGE_SERVE_LATENCY_TARGET_MS": str(target_ms)})
        launch([sized])
        polite = {name: running[name] for name in (ours, sized, naive)}
        floor = {null_protocol: running[null_protocol]} if null_protocol in running else {}
        overload_results = run_overload({MODES[0]: {**polite, **floor}, MODES[1]: polite}, payload_file, saturating,
                                        args.overload_seconds, args.repeats, client_cpus)
    results = {name: [summarize(levels[clients]) for clients in CLIENTS] for name, levels in runs.items()}
    floor_levels = overload_results[MODES[0]].get(null_protocol, [])
    top = {name: levels[-1]["req_per_s"] for name, levels in results.items()}

    def per_repeat(a: str, b: str, digits: int) -> list[float]:
        return [round(x["req_per_s"] / y["req_per_s"], digits) for x, y in zip(runs[a][64], runs[b][64], strict=True)]
    stack_used = "asyncio + h11" if args.stack == "h11" else (
        "uvloop + httptools" if versions("uvloop", "httptools")["httptools"] != "not installed" else "asyncio + h11")
    write(pinned_name("serving", args), {
        "load_generator": ("wrk" if use_wrk else "bench.serving_load") + " (part 1), bench.serving_load (part 2); "
                          "one digits row per request, same machine",
        "cpu_placement": placement(server_cpus, client_cpus),
        "http_stack": stack_used, "stack_versions": versions("uvicorn", "uvloop", "httptools", "h11"),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "equal_workers": {
            "results": results,
            "ratio_to_naive_at_64": round(top[ours] / top[naive], 2),
            "ratio_to_null_at_64": round(top[ours] / top[null], 3),
            "ratio_to_naive_at_64_per_repeat": per_repeat(ours, naive, 2),
            "ratio_to_null_at_64_per_repeat": per_repeat(ours, null, 3),
            "fast_path_off_ratio_to_null_at_64": round(top[ours_asgi] / top[null], 3),
            "fast_path_speedup_at_64_per_repeat": per_repeat(ours, ours_asgi, 2),
            **({"ratio_to_null_protocol_at_64": round(top[ours] / top[null_protocol], 3)}
               if null_protocol in top else {}),
            "meets_target": {"ge_3x_naive": top[ours] >= 3 * top[naive],
                             "ge_60pct_of_null": top[ours] >= 0.6 * top[null],
                             "zero_errors": results[ours][-1]["errors"] == 0}},
        "overload": {"saturating_clients": saturating, "saturation_sweep_goodput": sweep,
                     "saturated_p50_ms": saturated_p50, "sized_latency_target_ms": target_ms,
                     "results": overload_results,
                     "targets": {mode: {name: overload_targets(by_name[name], by_name[naive]) for name in (ours, sized)}
                                 for mode, by_name in overload_results.items()},
                     "floor_null_protocol_p99_ms": [level["accepted_p99_ms"] for level in floor_levels],
                     "floor_null_protocol_littles_law_cycle_ms": [level["littles_law_cycle_ms"]
                                                                  for level in floor_levels]},
    }, command=f"python -m bench.serving --seconds {args.seconds} --overload-seconds {args.overload_seconds} "
               f"--repeats {args.repeats} --stack {args.stack}" + (" --pin" if args.pin else ""))


if __name__ == "__main__":
    main()
