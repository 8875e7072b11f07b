"""Prometheus metrics that cost nothing per request: counted in plain Python, written to Prometheus in the background.

Under BentoML every metric lives in multiprocess mode (one mmap file per worker, aggregated by /metrics), where one
``inc()``, ``set()`` or ``observe()`` costs 2-3 µs of locked file writes: four of them per request were a sixth of a
whole served request's CPU on the fast path. Here a request only adds to an int; a timer on the worker's event loop
hands the sums to prometheus_client every ``FLUSH_INTERVAL_S`` (scrapes come every 15-30 s, so nothing is lost but a
fraction of a second of freshness). Nothing is imported from prometheus_client until the first flush, which runs in
the worker, after BentoML has set up multiprocess collection.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Sequence
from typing import Any

FLUSH_INTERVAL_S = 0.25


class LocalCounter:
    """A labelled counter summed in Python; ``flush`` adds the increments to the Prometheus counter."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.registry: Any = None  # None: prometheus_client's default registry (set by Meters.add)
        self.pending: dict[tuple[str, ...], float] = {}
        self.totals: dict[tuple[str, ...], float] = {}  # everything counted so far, for tests and diagnostics
        self._metric: Any = None

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        self.pending[labels] = self.pending.get(labels, 0) + amount

    def total(self, labels: tuple[str, ...] = ()) -> float:
        return self.totals.get(labels, 0) + self.pending.get(labels, 0)

    def flush(self) -> None:
        if not self.pending:
            return
        if self._metric is None:
            from prometheus_client import Counter

            self._metric = Counter(self.name, self.documentation, self.labelnames, **_registry(self.registry))
        pending, self.pending = self.pending, {}
        for labels, amount in pending.items():
            (self._metric.labels(*labels) if labels else self._metric).inc(amount)
            self.totals[labels] = self.totals.get(labels, 0) + amount


class SampledGauge:
    """A gauge read from a callable at each flush (``livesum``: the pod's value is the sum over its workers)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float], labels: dict[str, str]):
        self.name, self.documentation, self.read, self.labels = name, documentation, read, labels
        self.registry: Any = None
        self._metric: Any = None
        self._last: float | None = None

    def flush(self) -> None:
        value = float(self.read())
        if value == self._last:
            return
        if self._metric is None:
            from prometheus_client import Gauge

            gauge = Gauge(self.name, self.documentation, list(self.labels), multiprocess_mode="livesum",
                          **_registry(self.registry))
            self._metric = gauge.labels(**self.labels) if self.labels else gauge
        self._metric.set(value)
        self._last = value


class LocalHistogram:
    """Latency observations bucketed in Python; ``flush`` writes the bucket counts and sum to Prometheus.

    prometheus_client has no bulk observe, so the flush adds to the child's bucket and sum values directly
    (``_buckets``/``_sum``, stable across prometheus_client 0.x; the version is pinned in constraints.txt).
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], labelnames: Sequence[str] = ()):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = list(buckets)
        self.pending: dict[tuple[str, ...], list[float]] = {}  # per label set: one count per bucket (+Inf), then sum
        self.registry: Any = None
        self._metric: Any = None

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        counts = self.pending.get(labels)
        if counts is None:
            counts = self.pending[labels] = [0.0] * (len(self.bounds) + 2)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def flush(self) -> None:
        if not self.pending:
            return
        if self._metric is None:
            from prometheus_client import Histogram

            self._metric = Histogram(self.name, self.documentation, self.labelnames, buckets=self.bounds,
                                     **_registry(self.registry))
        pending, self.pending = self.pending, {}
        for labels, counts in pending.items():
            child = self._metric.labels(*labels) if labels else self._metric
            for index, count in enumerate(counts[:-1]):
                if count:
                    child._buckets[index].inc(count)
            child._sum.inc(counts[-1])


def _registry(registry: Any) -> dict:
    return {} if registry is None else {"registry": registry}


class Meters:
    """The metrics of one worker and the event-loop timer that flushes them (into ``registry``, default: the
    process's default registry, which BentoML's /metrics reads)."""

    def __init__(self, registry: Any = None) -> None:
        self.registry = registry
        self.meters: list[LocalCounter | SampledGauge | LocalHistogram] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, meter):
        meter.registry = self.registry
        self.meters.append(meter)
        return meter

    def start(self) -> None:
        """Arm the flush timer on the running loop (idempotent; called from the first request of a worker)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        self.flush()
        self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self._tick)

    def flush(self) -> None:
        for meter in self.meters:
            meter.flush()
