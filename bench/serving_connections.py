"""Where goodput goes at 16x overload: open connections, sending clients, or the concurrency limit they run into.

At 512 polite clients on one worker kubeforge kept ~81 % of its peak with a sized latency target (bench.serving_sizing),
and a profile had more loop and socket time there. The explanations predict different things: a cost per open
connection would show with connections that are merely open; a cost of refusing (the refused coming back) would
vanish under a limit above every client, which refuses nobody; a cost of the limit binding would vanish with a limit
well above the saturating concurrency. So, side by side on the same model and load generator as bench.serving, each
server (the adaptive limit with the sized target, and fixed limits) at three loads, interleaved, ``--repeats``
medians, the CPU steal recorded per run: ``--clients`` closed-loop clients alone; the same with ``--idle``
keep-alive connections opened beside them that never send; and ``--clients + --idle`` polite clients, all sending.
Each run also records the rows per inference call (from the server's /metrics) and the server's CPU per answer.
``--pin`` runs the servers and the load generator on separate CPUs.

    python -m bench.serving_connections [--clients 32] [--idle 480] [--target-ms 2.7] [--fixed 64 1024] [--repeats 4]
                                        [--pin]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from bench._harness import add_pin_option, metric_total, pinned_cpus, pinned_name, placement, write
from bench.serving import bentoml_serve, kubeforge_env, prepare_models, start_server, warm_up, write_payloads
from bench.serving_overload import closed_loop, median_of
from kubeforge.serving.meters import FLUSH_INTERVAL_S

BATCH_ROWS = "kubeforge_inference_batch_rows"


def idle_connections(url: str, count: int) -> contextlib.ExitStack:
    """``count`` TCP connections to the server that stay open and send nothing, closed with the returned stack."""
    address = urlsplit(url)
    with contextlib.ExitStack() as stack:  # a connection that fails closes the ones already open
        for _ in range(count):
            stack.enter_context(socket.create_connection((address.hostname, address.port)))
        return stack.pop_all()


def batch_rows(url: str) -> tuple[float, float]:
    """Rows and inference calls the server has counted so far (its ``kubeforge_inference_batch_rows`` histogram),
    read once the meters' last flush has happened."""
    time.sleep(2 * FLUSH_INTERVAL_S)
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return metric_total(text, BATCH_ROWS + "_sum"), metric_total(text, BATCH_ROWS + "_count")


def measured(url: str, process_pid: int, payload_file: Path, clients: int, seconds: float,
             client_cpus: set[int] | None = None, honour: bool = True) -> dict:
    """One window of polite clients (``honour``: they honour Retry-After), with the rows per inference call and the
    server's CPU per answer in it."""
    rows, calls = batch_rows(url)
    run = closed_loop(url, payload_file, clients, seconds, honour, client_cpus, server_pid=process_pid)
    rows_after, calls_after = batch_rows(url)
    run["rows_per_call"] = round((rows_after - rows) / (calls_after - calls), 1) if calls_after > calls else None
    answers = run["requests_per_s"]
    run["server_cpu_us_per_answer"] = round(10_000 * run["server_cpu_pct"] / answers, 1) if answers else None
    run["server_kernel_us_per_answer"] = round(10_000 * run["server_kernel_cpu_pct"] / answers, 1) if answers else None
    return run


def loads(clients: int, idle: int) -> dict[str, tuple[int, int]]:
    """Each load by name: (sending clients, idle connections beside them)."""
    return {f"{clients} clients": (clients, 0), f"{clients} clients + {idle} idle connections": (clients, idle),
            f"{clients + idle} polite clients": (clients + idle, 0)}


def summarize(runs: list[dict], base_goodput: float | None) -> dict:
    """Medians over the repeats; the goodput also as a share of ``base_goodput`` (the clients alone)."""
    goodput = median_of(runs, "goodput_per_s")
    return {"goodput_per_s": goodput, "goodput_runs": [run["goodput_per_s"] for run in runs],
            "pct_of_clients_alone": round(100 * goodput / base_goodput, 1) if goodput and base_goodput else None,
            "accepted_p99_ms": median_of(runs, "accepted_p99_ms"),
            "rows_per_call": median_of(runs, "rows_per_call"),
            "server_cpu_us_per_answer": median_of(runs, "server_cpu_us_per_answer"),
            "shed_503": sum(run["shed_503"] for run in runs),
            "connection_errors": sum(run["connection_errors"] for run in runs),
            "cpu_steal_pct_runs": [run["cpu_steal_pct"] for run in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="the saturating concurrency")
    parser.add_argument("--idle", type=int, default=480, help="connections beside them (together: 16x of 32)")
    parser.add_argument("--target-ms", type=float, default=2.7, help="the adaptive limit's latency target")
    parser.add_argument("--fixed", type=int, nargs="*", default=[64, 1024],
                        help="fixed limits to compare (one above every client refuses nobody)")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    add_pin_option(parser)
    args = parser.parse_args()
    if args.clients < 1 or args.idle < 1 or args.target_ms <= 0 or args.repeats < 1 or args.seconds <= 0 \
            or any(limit < 1 for limit in args.fixed):
        parser.error("--clients, --idle, --repeats and --fixed must be >= 1, --target-ms and --seconds > 0")
    server_cpus, client_cpus = pinned_cpus(args, parser)
    load_before = os.getloadavg()[0]
    variants = {f"adaptive, {args.target_ms} ms target": {"KUBEFORGE_SERVE_LATENCY_TARGET_MS": str(args.target_ms)}}
    variants |= {f"fixed limit {limit}": {"KUBEFORGE_SERVE_LIMIT_MODE": "fixed",
                                          "KUBEFORGE_SERVE_MAX_CONCURRENCY": str(limit)} for limit in args.fixed}
    runs: dict[str, dict[str, list[dict]]] = {name: {} for name in variants}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        _, int8, payloads = prepare_models(root)
        payload_file = write_payloads(root, payloads)
        servers = {}
        for name, env in variants.items():
            url, process, log = start_server(stack, bentoml_serve(), {**kubeforge_env(int8), **env}, root,
                                             server_cpus)
            warm_up(url, process, log, payload_file, client_cpus)
            servers[name] = url, process
        for _ in range(args.repeats):
            for load, (sending, idle) in loads(args.clients, args.idle).items():
                for name, (url, process) in servers.items():
                    with idle_connections(url, idle):
                        run = measured(url, process.pid, payload_file, sending, args.seconds, client_cpus)
                    runs[name].setdefault(load, []).append(run)
    alone = next(iter(loads(args.clients, args.idle)))
    by_server = {name: {load: summarize(levels, median_of(by_load[alone], "goodput_per_s"))
                        for load, levels in by_load.items()} for name, by_load in runs.items()}
    write(pinned_name("serving_connections", args), {
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "cpu_placement": placement(server_cpus, client_cpus), "clients": args.clients, "idle": args.idle,
        "seconds": args.seconds, "repeats": args.repeats,
        "by_server": by_server,
    }, command=f"python -m bench.serving_connections --clients {args.clients} --idle {args.idle} --target-ms "
               f"{args.target_ms} --fixed {' '.join(map(str, args.fixed))} --seconds {args.seconds} "
               f"--repeats {args.repeats}" + (" --pin" if args.pin else ""))


if __name__ == "__main__":
    main()
