"""The budget ledger: token buckets and concurrency counts held across processes, dead processes' counts cleared."""

from __future__ import annotations

import multiprocessing
import os
import signal

from kubeforge.llm.tenancy.ledger import BudgetLedger


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_bucket_holds_a_minute_of_tokens_and_refills_continuously(tmp_path):
    clock = Clock()
    ledger = BudgetLedger(tmp_path / "l", clock=clock)
    assert ledger.reserve("a", 50, 60) == 0.0
    assert ledger.reserve("a", 20, 60) == 10.0  # 10 left, 1 token/s: 10 s until 20 are there
    clock.now += 10
    assert ledger.reserve("a", 20, 60) == 0.0
    ledger.settle("a", 15, 60)  # a reservation used 15 tokens fewer than it took
    assert ledger.level("a", 60) == 15
    clock.now += 3600
    assert ledger.level("a", 60) == 60  # never more than a minute's budget
    assert ledger.reserve("b", 60, 60) == 0.0  # tenants do not share a bucket


def test_concurrency_is_counted_per_tenant(tmp_path):
    ledger = BudgetLedger(tmp_path / "l")
    assert ledger.acquire("a", 2, 60) and ledger.acquire("a", 2, 60)
    assert not ledger.acquire("a", 2, 60)
    assert ledger.acquire("b", 1, 60)
    ledger.release("a")
    assert ledger.in_flight("a") == 1 and ledger.acquire("a", 2, 60)


def _hold(path, ready, done):
    ledger = BudgetLedger(path)
    ledger.acquire("a", 10, 60)
    ledger.reserve("a", 40, 60)
    ready.set()
    done.wait(30)


def _spin(path, count, result):
    ledger = BudgetLedger(path)
    taken = sum(ledger.reserve("c", 1, 600) == 0.0 for _ in range(count))
    result.put(taken)


def test_processes_share_the_budget(tmp_path):
    context = multiprocessing.get_context("fork")
    path = tmp_path / "l"
    ledger = BudgetLedger(path)
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(path, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        assert ledger.in_flight("a") == 1  # the other process's request counts here
        assert ledger.reserve("a", 30, 60) > 0  # it took 40 of 60
        assert not ledger.acquire("a", 1, 60)
    finally:
        done.set()
        holder.join(30)
    results = context.Queue()
    spinners = [context.Process(target=_spin, args=(path, 400, results)) for _ in range(2)]
    for process in spinners:
        process.start()
    taken = [results.get(timeout=60) for _ in spinners]
    for process in spinners:
        process.join(30)
    assert 600 <= sum(taken) <= 610  # 600 tokens/min: the two never take more than one bucket (plus the refill)


def _die_holding(path, ready):
    ledger = BudgetLedger(path)
    ledger.acquire("a", 5, 60)
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_process_does_not_keep_its_slots(tmp_path):
    context = multiprocessing.get_context("fork")
    path = tmp_path / "l"
    ledger = BudgetLedger(path)
    ready = context.Event()
    process = context.Process(target=_die_holding, args=(path, ready))
    process.start()
    process.join(30)
    assert ready.is_set() and ledger.in_flight("a") == 1
    assert ledger.acquire("a", 1, 60)  # the dead row is cleared when it would refuse


def test_a_new_server_session_starts_empty(tmp_path):
    path = tmp_path / "l"
    ledger = BudgetLedger(path)
    ledger.acquire("a", 1, 60)
    with open(path, "r+b") as handle:  # what a previous session (another parent process) left behind
        handle.seek(8)
        handle.write(b"\x01" * 16)
    assert BudgetLedger(path).in_flight("a") == 0
