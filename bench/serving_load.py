"""A closed-loop HTTP/1.1 load generator that keeps latencies apart by answer: 2xx, 503 and everything else.

wrk reports one latency histogram for all answers, so it cannot say how fast a 503 came back or what the accepted
requests saw; this one can. Each of ``--clients`` keep-alive connections sends its next request as soon as the
previous answer arrived (``--honour-retry-after``: as long after a 503 as its ``retry-after-ms``, or else its
``Retry-After`` seconds, say, as OpenAI's clients do).
Raw asyncio protocols on uvloop when installed: about 15-25 µs of client CPU per request, so it shares the cores with
the server under test as lightly as Python allows. Prints one JSON object, with the share of the machine's CPU
stolen by the hypervisor during the window (``cpu_steal_pct``), the load generator's own CPU (``client_cpu_pct``, of
one core) and, given ``--server-pid``, the server's (``server_cpu_pct``, its process tree, of which
``server_kernel_cpu_pct`` in the kernel): on a machine the two share, what the clients take is not the server's.

    python -m bench.serving_load URL --payloads FILE.json --clients 64 --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import numpy as np

from bench._harness import cpu_times, steal_pct, user_and_kernel_seconds


class Client(asyncio.Protocol):
    def __init__(self, run: Run):
        self.run = run
        self.buffer = bytearray()
        self.started = 0.0
        self.sent = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        run = self.run
        if run.stopping or self.transport is None or self.transport.is_closing():
            return
        self.sent += 1
        self.started = time.perf_counter()
        self.transport.write(run.requests[self.sent % len(run.requests)])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            retry_after = retry_after_ms = 0.0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
                elif line.startswith(b"retry-after:"):
                    retry_after = float(line[12:])
                elif line.startswith(b"retry-after-ms:"):
                    retry_after_ms = float(line[15:])
            if retry_after_ms > 0:  # read first, as OpenAI's clients do
                retry_after = retry_after_ms / 1000
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            del self.buffer[:end + 4 + length]
            self.run.record(status, self.started, time.perf_counter())
            if status == 503 and self.run.honour_retry_after and retry_after > 0:
                asyncio.get_running_loop().call_later(retry_after, self.send)
            else:
                self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.run.stopping:
            self.run.connection_errors += 1


class Run:
    def __init__(self, requests: list[bytes], honour_retry_after: bool):
        self.requests = requests
        self.honour_retry_after = honour_retry_after
        self.stopping = False
        self.recording = False
        self.window_start = float("inf")  # perf_counter when recording began
        self.latencies: dict[str, list[float]] = {"2xx": [], "503": [], "other": []}
        self.connection_errors = 0

    def record(self, status: int, sent: float, answered: float) -> None:
        """Answers inside the window to requests sent inside it: a request sent while the clients were still
        connecting (the server meets 16x its capacity at once) is warm-up, and its latency is the generator's."""
        if self.recording and sent >= self.window_start:
            kind = "2xx" if 200 <= status < 300 else "503" if status == 503 else "other"
            self.latencies[kind].append(answered - sent)


def http_requests(url: str, bodies: list[bytes]) -> list[bytes]:
    parts = urlsplit(url)
    return [(f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in bodies]


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


async def load(url: str, bodies: list[bytes], clients: int, seconds: float, warmup: float,
               honour_retry_after: bool, server_pid: int | None = None) -> dict:
    parts = urlsplit(url)
    run = Run(http_requests(url, bodies), honour_retry_after)
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(clients):
        try:
            connections.append(await loop.create_connection(lambda: Client(run), parts.hostname, parts.port))
        except OSError:
            run.connection_errors += 1
    await asyncio.sleep(warmup)  # every connection busy before recording starts
    run.recording = True
    started = run.window_start = time.perf_counter()
    counters, own = cpu_times(), time.process_time()
    server_before = user_and_kernel_seconds(server_pid) if server_pid else (0.0, 0.0)
    await asyncio.sleep(seconds)
    run.recording = False
    elapsed = time.perf_counter() - started
    stolen, own = steal_pct(counters, cpu_times()), time.process_time() - own
    server = None
    if server_pid:
        user, kernel = user_and_kernel_seconds(server_pid)
        server = user - server_before[0], kernel - server_before[1]
    run.stopping = True
    for transport, _ in connections:
        transport.close()
    ok, shed, other = run.latencies["2xx"], run.latencies["503"], run.latencies["other"]
    return {"clients": clients, "seconds": round(elapsed, 2), "goodput_per_s": round(len(ok) / elapsed, 1),
            "requests_per_s": round((len(ok) + len(shed) + len(other)) / elapsed, 1),
            "ok": len(ok), "shed_503": len(shed), "other_status": len(other),
            "connection_errors": run.connection_errors,
            "accepted_p50_ms": percentile_ms(ok, 50), "accepted_p99_ms": percentile_ms(ok, 99),
            "shed_p50_ms": percentile_ms(shed, 50), "shed_p99_ms": percentile_ms(shed, 99),
            "answer_mean_ms": round(float(np.mean(ok + shed + other)) * 1000, 2) if ok or shed or other else None,
            "cpu_steal_pct": stolen, "client_cpu_pct": round(100 * own / elapsed, 1),
            "server_cpu_pct": round(100 * sum(server) / elapsed, 1) if server is not None else None,
            "server_kernel_cpu_pct": round(100 * server[1] / elapsed, 1) if server is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--payloads", required=True, help="a JSON list of request bodies (strings)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--honour-retry-after", action="store_true")
    parser.add_argument("--server-pid", type=int, help="measure this process tree's CPU during the window")
    args = parser.parse_args()
    bodies = [body.encode() for body in json.loads(open(args.payloads).read())]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(load(args.url, bodies, args.clients, args.seconds, args.warmup,
                                 args.honour_retry_after, args.server_pid))))


if __name__ == "__main__":
    main()
