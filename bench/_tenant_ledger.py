"""Part 3 of bench.llm_tenants: what a reserve + settle pair costs from two processes at once, through the
mmap+flock ledger (kubeforge.llm.tenancy.ledger), SQLite in WAL mode, and a budget process over a Unix socket."""

from __future__ import annotations

import multiprocessing
import socket
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

def _ledger_worker(kind: str, path: str, count: int, out) -> None:
    if kind == "mmap+flock":
        from kubeforge.llm.tenancy.ledger import BudgetLedger

        ledger = BudgetLedger(path)

        def pair() -> None:
            ledger.reserve("a", 1, 1e12)
            ledger.settle("a", 0.5, 1e12)
    elif kind == "sqlite-wal":
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")

        def change(delta: float) -> None:
            db.execute("BEGIN IMMEDIATE")
            (level,) = db.execute("SELECT level FROM budget WHERE tenant='a'").fetchone()
            db.execute("UPDATE budget SET level=?, stamp=? WHERE tenant='a'", (level + delta, time.monotonic()))
            db.execute("COMMIT")

        def pair() -> None:
            change(-1)
            change(0.5)
    else:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        stream = client.makefile("rwb")

        def pair() -> None:
            for line in (b"reserve a 1\n", b"settle a 0.5\n"):
                stream.write(line)
                stream.flush()
                stream.readline()
    for _ in range(200):
        pair()
    started = time.perf_counter()
    for _ in range(count):
        pair()
    out.put((time.perf_counter() - started) / count)


def _budget_process(path: str, ready) -> None:
    import socketserver

    levels: dict[str, float] = {}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                verb, tenant, amount = line.split()
                levels[tenant] = levels.get(tenant, 0.0) + (-1 if verb == b"reserve" else 1) * float(amount)
                self.wfile.write(b"ok\n")
                self.wfile.flush()

    with socketserver.ThreadingUnixStreamServer(path, Handler) as server:
        ready.set()
        server.serve_forever()


def measure_ledgers(count: int = 3000) -> dict:
    context = multiprocessing.get_context("fork")
    results = {}
    work = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    for kind in ("mmap+flock", "sqlite-wal", "unix-socket-process"):
        path, helper = str(work / kind), None
        if kind == "sqlite-wal":
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE budget (tenant TEXT PRIMARY KEY, level REAL, stamp REAL)")
            db.execute("INSERT INTO budget VALUES ('a', 0, 0)")
            db.close()
        elif kind == "unix-socket-process":
            ready = context.Event()
            helper = context.Process(target=_budget_process, args=(path, ready), daemon=True)
            helper.start()
            ready.wait(10)
        out = context.Queue()
        workers = [context.Process(target=_ledger_worker, args=(kind, path, count, out)) for _ in range(2)]
        for process in workers:
            process.start()
        per_pair = [out.get(timeout=300) for _ in workers]
        for process in workers:
            process.join(30)
        if helper is not None:
            helper.terminate()
        results[kind] = {"us_per_reserve_settle": round(statistics.mean(per_pair) * 1e6, 1), "processes": 2}
    return results


