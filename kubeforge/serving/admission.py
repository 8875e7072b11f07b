"""Admission control: admit a request or shed it, with a reason, before any of its work is done.

One module for every kubeforge service (the classifier now, the language-model service later): the core knows
nothing about HTTP bodies, models or batches. A request is admitted while fewer than ``limit`` requests are in flight;
beyond that it may wait in a bounded FIFO queue for a slot; beyond the queue it is shed at once. A request that has
not started its work by its deadline (arrival + ``deadline_s``) is dropped before the work (``late``), never after.

The limit is either fixed (``max_concurrency``, sized from measured capacity: throughput x latency target, Little's
law) or adaptive: the same law applied to the live completion rate once per window (0.1 s or the target, whichever
is longer), so the limit follows the server's capacity when a neighbour takes the CPU; windows whose mean latency
misses ``latency_target_s`` may halve it, never below ``min_concurrency``. Shedding is a counter increment and a
503 with Retry-After: microseconds, so an overloaded server spends its CPU on the requests it admitted. Shedding
only helps when the refused clients go away for a while; clients that retry at once turn each refusal into another
request, and refusing them costs CPU and serves nobody. So a window with more than ``FUTILE_REFUSALS`` refusals per
completion, or (on the fast path, which knows its connections) whose refused mostly came back before half their
Retry-After, grows the limit toward its ceiling instead of shrinking it, and for ``FUTILE_HOLD_S`` after it the limit
does not shrink: the server then serves what it can rather than spending itself on 503s (a tight latency target
would otherwise spiral the limit down to its floor, or saw it up and down, refusing on every other window). Beyond
the ceiling such clients would be refused on every try, at nearly an answer's CPU where the HTTP exchange is most of
an answer; so for ``FUTILE_HOLD_S`` after a window whose refused connections mostly came back before half their
Retry-After (the fast path's evidence; many refusals per completion alone is also what a polite crowd's first burst
looks like, and polite clients are better told to go away), a caller that can wait without a task (the fast path) may
``park`` a request that finds no slot: no 503, the request keeps its place in a FIFO and gets the next slot a
completion frees, or a 503 (``deadline``) if ``deadline_s`` passes first, and costs no CPU while it waits (the fast
path leaves a large body unread meanwhile). One in ``PARK_PROBE_EVERY`` of them is refused anyway, so the windows
keep seeing whether the refused come straight back and renew the hold; once they stay away (polite clients) or stop
coming, the hold lapses and refusals resume. The same windows say, in either mode, whether the server is shedding and
whether that works (``shedding``), which the batcher reads (``slice_answers``): refusals are answered faster only
while the worker is full and refusing is not futile.

Metrics (``kubeforge_admission_*``, labelled by service): admitted, shed by reason, timed out (counters); current
limit, in flight, queue length, workers whose refusals are futile (gauges, summed over a pod's workers), all through
kubeforge.serving.meters.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from kubeforge.serving.meters import LocalCounter, Meters, SampledGauge

LimitMode = Literal["adaptive", "fixed"]
# Why a request was shed; the values are the `reason` label of kubeforge_admission_shed_total.
SHED_LIMIT = "concurrency_limit"  # the limit is reached and there is no queue
SHED_QUEUE_FULL = "queue_full"  # the limit is reached and the queue is full
SHED_DEADLINE = "deadline"  # waited in the queue until its deadline; also counted as timed out
SHED_NOT_READY = "not_ready"  # the service cannot serve yet (model loading)
SHED_REASONS = (SHED_LIMIT, SHED_QUEUE_FULL, SHED_DEADLINE, SHED_NOT_READY)

ADAPT_WINDOW_S = 0.1  # the adaptive limit is re-estimated at most this often (or once per latency target)
SMOOTHING = 0.5  # weight of the previous limit
# Refusals per completion beyond which shedding is futile (the refused come straight back): a 503 costs about half a
# served request of CPU here (docs/serving.md), so at this ratio refusals take about a ninth of the worker.
FUTILE_REFUSALS = 0.25
# ...and at or below which shedding works (the refused stay away): apart from the other, so that a server that
# answers refusals more slowly while they are futile (kubeforge.serving.batching) does not flip back each window
EFFECTIVE_REFUSALS = FUTILE_REFUSALS / 4
# After a window whose refused came straight back, the adaptive limit does not shrink for this long (it may grow):
# such clients are still there, and each shrink would only refuse them again (a refusal storm every other window);
# after one whose refused connections came back early, requests without a slot may be parked for as long
FUTILE_HOLD_S = 1.0
# While parking, one in this many requests without a slot is refused anyway (a probe): whether its client comes
# straight back is the evidence that renews the hold (a parked client sends nothing that could tell). Side by side at
# 512-1024 such clients (docs/serving.md): goodput as with a lapsing hold, a tenth of its 503s, 503 p99 64 -> 3 ms
PARK_PROBE_EVERY = 64
# What the last windows said about shedding: none in the last window ("idle"), refused who stay away ("effective"),
# refused who come straight back ("futile": more than FUTILE_REFUSALS refusals per completion, or most refused
# connections sending again before half their Retry-After; kept through windows without refusals, since a limit
# raised to hold such clients refuses nobody, and only a window that refuses and sees the refused stay away can tell)
Shedding = Literal["idle", "effective", "futile"]


class Parked(Protocol):
    """A request waiting for a slot without a task (kubeforge.serving.fastpath's exchange)."""

    def done(self) -> bool: ...  # answered or gone: skip it
    def resume(self, ticket: Ticket) -> None: ...  # a slot: go on with the request
    def expire(self, refusal: Shed) -> None: ...  # its deadline passed first: answer the refusal


@dataclass(frozen=True)
class AdmissionPolicy:
    """The rule, per worker. ``max_concurrency`` is the fixed limit, or the adaptive limit's ceiling."""

    max_concurrency: int
    max_queue: int = 0
    deadline_s: float = 1.0
    mode: LimitMode = "adaptive"
    latency_target_s: float = 0.05
    min_concurrency: int = 1
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_concurrency <= self.max_concurrency:
            raise ValueError(f"need 1 <= min_concurrency ({self.min_concurrency}) <= max_concurrency "
                             f"({self.max_concurrency})")
        if self.max_queue < 0 or self.deadline_s <= 0 or self.latency_target_s <= 0 or self.retry_after_s < 0:
            raise ValueError("max_queue and retry_after_s must be >= 0, deadline_s and latency_target_s > 0")
        if self.mode not in ("adaptive", "fixed"):
            raise ValueError(f"mode must be 'adaptive' or 'fixed', not {self.mode!r}")


def retry_headers(retry_after_s: int) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` in whole seconds (the standard), and ``retry-after-ms`` (read first by OpenAI's clients)
    spread at random over one to two times that: Retry-After has no fractions, so clients refused in the same burst
    would all come back in the same burst, and a synchronised return is the next overload."""
    if retry_after_s <= 0:
        return [(b"retry-after", b"0")]
    return [(b"retry-after", b"%d" % retry_after_s),
            (b"retry-after-ms", b"%d" % (retry_after_s * random.uniform(1000, 2000)))]


@dataclass(frozen=True, slots=True)
class Shed:
    """A refusal: answer 503 with ``Retry-After: retry_after_s`` and the message."""

    reason: str
    message: str
    retry_after_s: int


class Ticket:
    """An admitted request: when it arrived and by when its work must start."""

    __slots__ = ("arrived", "deadline", "_waiter", "_timer")

    def __init__(self, arrived: float, deadline: float):
        self.arrived = arrived
        self.deadline = deadline
        self._waiter: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None


class AdmissionMetrics:
    """The Prometheus side of one Admission; registered with the worker's Meters."""

    def __init__(self, admission: Admission, meters: Meters, service: str):
        labels = {"service": service}
        self.service = (service,)
        self.admitted = meters.add(LocalCounter("kubeforge_admission_admitted_total",
                                                "requests admitted to work", ["service"]))
        self.shed = meters.add(LocalCounter("kubeforge_admission_shed_total",
                                            "requests refused with 503 before any work, by reason",
                                            ["service", "reason"]))
        self.timed_out = meters.add(LocalCounter("kubeforge_admission_timed_out_total",
                                                 "admitted or queued requests dropped at their deadline, before work",
                                                 ["service"]))
        meters.add(SampledGauge("kubeforge_admission_limit", "current concurrency limit (sum over workers)",
                                lambda: admission.current_limit, labels))
        meters.add(SampledGauge("kubeforge_admission_in_flight", "requests admitted and not finished",
                                lambda: admission.in_flight, labels))
        meters.add(SampledGauge("kubeforge_admission_queue_length", "requests waiting for a slot (queued or parked)",
                                lambda: len(admission.queue) + len(admission.parked), labels))
        meters.add(SampledGauge("kubeforge_admission_refusals_futile",
                                "1 per worker whose refused clients come straight back, ignoring Retry-After",
                                lambda: int(admission.shedding == "futile"), labels))


class Admission:
    """Admit or shed, per worker; single-threaded (one asyncio event loop), so no locks."""

    def __init__(self, policy: AdmissionPolicy, meters: Meters | None = None, service: str = "kubeforge",
                 clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        # adaptive starts at the ceiling: a fresh server takes a burst, and the first windows size the limit down
        self.limit = float(policy.max_concurrency)
        self.in_flight = 0
        # admitted requests whose answers are computed and only wait to be written (the batcher's pending answers
        # while it lets the loop read): their slots are as good as free, so an arrival meanwhile is admitted as it
        # would be once they are written
        self.leaving: Callable[[], int] = lambda: 0
        self.shedding: Shedding = "idle"
        self.queue: deque[Ticket] = deque()
        self.parked: deque[tuple[float, Parked]] = deque()  # (since, request) while refusing is futile
        self._unparking = False
        self._parked_since_probe = 0
        self._window = max(ADAPT_WINDOW_S, policy.latency_target_s)
        self._window_start = clock()
        self._completed, self._latency_sum, self._refused, self._came_back = 0, 0.0, 0, 0
        self._hold_until = -math.inf  # the adaptive limit does not shrink before this (FUTILE_HOLD_S)
        self._park_until = -math.inf  # requests without a slot may be parked before this (FUTILE_HOLD_S)
        self._comeback_s = policy.retry_after_s / 2  # a refused client back sooner than this ignored its Retry-After
        self.metrics = AdmissionMetrics(self, meters, service) if meters is not None else None
        retry = policy.retry_after_s
        self._shed_limit = Shed(SHED_LIMIT, "overloaded: the concurrency limit is reached; retry later", retry)
        self._shed_full = Shed(SHED_QUEUE_FULL, "overloaded: the admission queue is full; retry later", retry)
        self._shed_deadline = Shed(SHED_DEADLINE, "overloaded: waited for a slot until the deadline; retry later",
                                   retry)

    @property
    def current_limit(self) -> int:
        """How many requests this worker admits at once: admit() takes one while in_flight < limit, so a fractional
        limit admits its ceiling."""
        return math.ceil(self.limit)

    def admit(self, park: Parked | None = None) -> Ticket | Shed | None:
        """A slot now, or a refusal now; never waits. The caller has read nothing of the request's body. With
        ``park``, while refusing is futile, None instead of a refusal: the request is parked for the next free slot."""
        now = self.clock()
        if self.in_flight - self.leaving() < self.limit:
            self.in_flight += 1
            if self.metrics:
                self.metrics.admitted.inc(self.metrics.service)
            return Ticket(now, now + self.policy.deadline_s)
        if park is not None and now < self._park_until and self.shedding == "futile" and self.policy.max_queue == 0:
            self._parked_since_probe += 1
            if self._parked_since_probe < PARK_PROBE_EVERY:
                self.parked.append((now, park))
                return None
            self._parked_since_probe = 0  # this one probes: refused, to see whether its client comes straight back
        return self.shed(self._shed_limit if self.policy.max_queue == 0 else self._shed_full)

    async def enter(self) -> Ticket | Shed:
        """A slot now, or after waiting in the bounded queue; shed when the queue is full or the deadline passes."""
        if self.in_flight - self.leaving() < self.limit or self.policy.max_queue == 0:
            return self.admit()
        if len(self.queue) >= self.policy.max_queue:
            return self.shed(self._shed_full)
        now = self.clock()
        ticket = Ticket(now, now + self.policy.deadline_s)
        loop = asyncio.get_running_loop()
        ticket._waiter = loop.create_future()
        ticket._timer = loop.call_later(self.policy.deadline_s, self._expire, ticket)
        self.queue.append(ticket)
        try:
            admitted = await ticket._waiter
        except asyncio.CancelledError:  # the client went away while queued
            self._forget(ticket)
            if ticket._waiter.done() and not ticket._waiter.cancelled() and ticket._waiter.result():
                self.in_flight -= 1  # a slot was handed over just before the cancellation: give it on
                self._hand_over()
            raise
        if not admitted:
            self.timed_out(counted_as_shed=True)
            return self._shed_deadline
        if self.metrics:
            self.metrics.admitted.inc(self.metrics.service)
        return ticket

    def slice_answers(self) -> bool:
        """Whether the batcher should let the loop read its sockets between answers (kubeforge.serving.batching): only
        while the worker is full, where an arrival would be refused and reading it early only sends its 503 sooner,
        and refusing is not futile, where a faster 503 to a client that sends again at once is the next refusal
        sooner."""
        return self.shedding != "futile" and self.in_flight >= self.current_limit

    def shed(self, refusal: Shed) -> Shed:
        if refusal.reason != SHED_NOT_READY:  # refusals that steer the adaptive limit
            self._refused += 1
        if self.metrics:
            self.metrics.shed.inc((*self.metrics.service, refusal.reason))
        return refusal

    def came_back(self, refused_at: float) -> None:
        """A request on a connection refused at ``refused_at`` (this clock): the fast path knows its connections,
        and tells shedding apart by whether the refused come back before their Retry-After."""
        if self.clock() - refused_at < self._comeback_s:
            self._came_back += 1

    def refuse_not_ready(self, message: str) -> Shed:
        return self.shed(Shed(SHED_NOT_READY, message, self.policy.retry_after_s))

    def received(self, ticket: Ticket) -> None:
        """The request is fully received: its deadline counts from now, so a slow upload is not held against it."""
        ticket.deadline = self.clock() + self.policy.deadline_s

    def late(self, ticket: Ticket) -> bool:
        """True when the request's work can no longer start by its deadline: drop it before the work."""
        if self.clock() <= ticket.deadline:
            return False
        self.timed_out()
        return True

    def timed_out(self, counted_as_shed: bool = False) -> None:
        if self.metrics:
            self.metrics.timed_out.inc(self.metrics.service)
            if counted_as_shed:
                self.metrics.shed.inc((*self.metrics.service, SHED_DEADLINE))

    def done(self, ticket: Ticket) -> None:
        """Release the slot; the latency since arrival and the window's refusals steer the limit."""
        self.in_flight -= 1
        now = self.clock()
        self._completed += 1
        self._latency_sum += now - ticket.arrived
        if now - self._window_start >= self._window:
            self._close_window(now)
        if self.queue:
            self._hand_over()
        elif self.parked:
            self._unpark(now)

    def _close_window(self, now: float) -> None:
        """Once per window: what shedding does (between the two thresholds it stays as it was), and the adaptive
        limit."""
        refused = self._refused
        came_back = 2 * self._came_back > refused > 0
        futile = refused > FUTILE_REFUSALS * self._completed or came_back
        if came_back:
            self._park_until = now + FUTILE_HOLD_S
        if futile:
            self.shedding = "futile"
            self._hold_until = now + FUTILE_HOLD_S
        elif refused == 0:
            if self.shedding != "futile":
                self.shedding = "idle"
        elif refused <= EFFECTIVE_REFUSALS * self._completed:
            self.shedding = "effective"
        if self.policy.mode == "adaptive":
            self._adapt(now - self._window_start, futile, now)
        self._window_start, self._completed, self._latency_sum, self._refused, self._came_back = now, 0, 0.0, 0, 0

    def _adapt(self, elapsed: float, futile: bool, now: float) -> None:
        """Little's law once per window: the requests that fit in the latency target at the measured completion
        rate, scaled by how far the window's mean latency is from the target; smoothed, within the bounds."""
        policy = self.policy
        rate, mean = self._completed / elapsed, self._latency_sum / self._completed
        fits = rate * policy.latency_target_s
        if futile:  # the refused are not staying away: double (smoothed: x1.5) toward the ceiling
            target = 2 * self.limit
        elif mean <= policy.latency_target_s or now < self._hold_until:
            # an unsaturated server (the limit did not hold anyone back) may grow toward what fits; never shrink it
            # for serving fast, nor while clients that came straight back are likely still there
            target = max(fits, self.limit)
        else:  # requests miss the target: toward what fits, halving at most per window
            target = max(fits, self.limit / 2)
        self.limit = min(float(policy.max_concurrency),
                         max(float(policy.min_concurrency), SMOOTHING * self.limit + (1 - SMOOTHING) * target))

    def _hand_over(self) -> None:
        """Give free slots to queued requests in arrival order."""
        while self.queue and self.in_flight < self.limit:
            ticket = self.queue.popleft()
            if ticket._waiter is None or ticket._waiter.done():
                continue
            ticket._timer.cancel()
            self.in_flight += 1
            ticket._waiter.set_result(True)

    def _unpark(self, now: float) -> None:
        """Give free slots to parked requests in arrival order; one past its deadline gets its 503 (a refusal: the
        windows see whether such clients stay away). Not re-entered: a request answered while it resumes (no
        batching) frees its slot into this loop, not into a nested one."""
        if self._unparking:
            return
        self._unparking = True
        try:
            while self.parked and self.in_flight < self.limit:
                since, request = self.parked.popleft()
                if request.done():
                    continue
                if now - since > self.policy.deadline_s:
                    self.timed_out()
                    request.expire(self.shed(self._shed_deadline))
                    continue
                self.in_flight += 1
                if self.metrics:
                    self.metrics.admitted.inc(self.metrics.service)
                request.resume(Ticket(since, since + self.policy.deadline_s))
        finally:
            self._unparking = False

    def _expire(self, ticket: Ticket) -> None:
        self._forget(ticket)
        if ticket._waiter is not None and not ticket._waiter.done():
            ticket._waiter.set_result(False)

    def _forget(self, ticket: Ticket) -> None:
        try:
            self.queue.remove(ticket)
        except ValueError:
            pass
        if ticket._timer is not None:
            ticket._timer.cancel()
