"""Adaptive batching on the worker's event loop: rows of concurrent requests go through one inference call.

Nothing waits for a batch to fill: the batcher runs as soon as the loop is free and takes every request that arrived
meanwhile (up to ``max_batch_size`` rows), so one client sees batch-1 latency and many clients share calls. Each
request carries its deadline (from kubeforge.serving.admission); one whose deadline has passed when its batch is
formed is dropped before inference (Overloaded: the caller answers 503), never answered late after the work was
done. Inference runs on the loop thread: a batch of this size takes tens of microseconds, less than a hand-off to a
thread.

While the server is shedding, the batcher lets the loop read its sockets after every ``ANSWERS_PER_TURN`` answers
(``yield_between()``), so a request that arrives meanwhile is refused within a fraction of a millisecond instead of
after every queued request has been answered: otherwise a 503 waited as long as an answer (~3 ms at 8x overload
here). Only while refusing works (kubeforge.serving.admission's ``shedding``): clients that send again at once turn a
faster 503 into the next refusal sooner, and the server would spend itself refusing; then, and when nobody is being
refused (a new request would only queue behind the others), the queue is served in one go.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

ANSWERS_PER_TURN = 16  # ~0.5 ms of answering here (encode and write), between two reads of the sockets


class Overloaded(RuntimeError):
    """A request's deadline passed before its inference started; the caller answers 503."""


class Waiter(Protocol):
    """Who gets a request's probabilities: an asyncio.Future, or the fast path's exchange (kubeforge.serving.fastpath),
    which answers from the callback without a task or a future."""

    def cancelled(self) -> bool: ...
    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


@dataclass(slots=True)
class _Queued:
    rows: np.ndarray
    future: Waiter
    deadline: float


class MicroBatcher:
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch_size: int,
                 on_batch: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 yield_between: Callable[[], bool] | None = None):
        self.infer = infer
        self.yield_between = yield_between  # let the loop read its sockets between answers
        self.on_batch = on_batch  # e.g. a histogram's observe, called with each call's row count
        self.max_batch_size = max_batch_size
        self.clock = clock  # the clock the deadlines were taken from
        self._queue: deque[_Queued] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.calls = 0  # inference calls and rows served, for tests and the benchmark
        self.rows = 0

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    async def predict(self, rows: np.ndarray, deadline: float = math.inf) -> np.ndarray:
        if not self.enabled or len(rows) >= self.max_batch_size:
            if self.clock() > deadline:
                raise Overloaded("the deadline passed before inference started")
            return self._infer(rows)
        future = asyncio.get_running_loop().create_future()
        self.submit(rows, future, deadline)
        return await future

    def submit(self, rows: np.ndarray, waiter: Waiter, deadline: float = math.inf) -> None:
        """Queue rows for the next batch; the waiter gets their probabilities or the failure. Call on the loop."""
        if not self.enabled or len(rows) >= self.max_batch_size:
            try:
                if self.clock() > deadline:
                    raise Overloaded("the deadline passed before inference started")
                result = self._infer(rows)
            except Exception as exc:
                waiter.set_exception(exc)
            else:
                waiter.set_result(result)
            return
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="kubeforge-batcher")
        self._queue.append(_Queued(rows, waiter, deadline))
        self._wakeup.set()

    def _infer(self, rows: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.rows += len(rows)
        if self.on_batch is not None:
            self.on_batch(len(rows))
        return self.infer(rows)

    def _next_batch(self) -> list[tuple[np.ndarray, Waiter]]:
        now = self.clock()
        batch: list[tuple[np.ndarray, Waiter]] = []
        size = 0
        while self._queue and size + len(self._queue[0].rows) <= self.max_batch_size:
            item = self._queue.popleft()
            if item.future.cancelled():  # the client went away
                continue
            if now > item.deadline:
                item.future.set_exception(Overloaded("the deadline passed before inference started"))
                continue
            batch.append((item.rows, item.future))
            size += len(item.rows)
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(0)  # one more loop turn: requests read in this turn join the batch
            answered = 0
            while self._queue:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    probabilities = self._infer(np.concatenate([rows for rows, _ in batch]))
                except Exception as exc:  # every waiting request gets the failure, the batcher keeps running
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for rows, future in batch:
                    if not future.done():  # a client gone while its answer waited for a turn: skipped
                        future.set_result(probabilities[start:start + len(rows)])
                    start += len(rows)
                    answered += 1
                    if answered >= ANSWERS_PER_TURN and self.yield_between is not None and self.yield_between():
                        answered = 0
                        await asyncio.sleep(0)  # the loop reads what arrived: refusals go out now
