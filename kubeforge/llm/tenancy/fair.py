"""Weighted fair admission across tenants: start-time fair queueing on tokens.

Each admitted request advances its tenant's finish tag by ``cost / weight`` (cost: prompt + max_tokens over its
choices); the next admitted request is the head of the tenant whose start tag, ``max(virtual time, its finish tag)``,
is smallest. A tenant that was idle starts at the current virtual time: it is served at once but brings no credit
from its idle time, which the busy tenants used meanwhile (the idle share is lent, never owed). Within a tenant the
order stays FIFO. Without tenants every request belongs to one tenant (``None``) and the order is plain FIFO.

The engine also guarantees each tenant its weighted share of the batch's rows (``max_running`` split by the
weights of the tenants seen in the last ``active_window_s``): a tenant below its share joins at the next step even
when busier tenants have filled every row, in rows beyond ``max_running`` (up to its unused share, the whole batch
capped at ``max_running + burst_rows``), instead of waiting for one of their sequences to end; a tenant at or above its share joins only
below ``max_running``. Nobody is preempted and no row is held back while nobody needs it: the busy tenants borrow
every unused share. The KV budget (``max_batch_tokens``) still bounds the batch. And while several tenants are active, each prefills at most
``prefill_tokens`` prompt tokens per step (at least one request): a flood of arrivals is prefilled over several
short steps instead of one long forward that every other tenant's first token would wait behind; a step that
prefills a request of a tenant below its share prefills nothing of the tenants at or above theirs (they join at
the next step), so that first token waits for its own prompt only. The engine uses ``FairScheduler`` between decode steps; the
gateway uses ``FairGate`` in front of each upstream.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Share:
    """What a request carries into the queue: its tenant and the tenant's weight."""

    tenant: str | None
    weight: float = 1.0


NO_SHARE = Share(None, 1.0)


class VirtualClock:
    """The tags of start-time fair queueing."""

    def __init__(self) -> None:
        self.virtual = 0.0
        self._finish: dict[str | None, float] = {}

    def start(self, tenant: str | None) -> float:
        return max(self.virtual, self._finish.get(tenant, 0.0))

    def charge(self, share: Share, cost: float) -> None:
        start = self.start(share.tenant)
        self._finish[share.tenant] = start + max(cost, 1.0) / share.weight
        self.virtual = start


def share_of(group: Any) -> Share:
    return getattr(group.choices[0].generation, "share", None) or NO_SHARE


class Picker:
    """One scheduling pass over the engine's queue (a snapshot); ``take`` each group that joins the batch."""

    def __init__(self, scheduler: FairScheduler, waiting: Iterable[Any], running: Iterable[Any], max_running: int):
        self.scheduler = scheduler
        self.max_running = max_running
        self.queues: dict[str | None, collections.deque] = {}
        self.weights: dict[str | None, float] = {}
        for group in waiting:
            share = share_of(group)
            self.queues.setdefault(share.tenant, collections.deque()).append(group)
            self.weights[share.tenant] = share.weight
        self.rows: collections.Counter = collections.Counter()
        for choice in running:
            share = getattr(choice.generation, "share", None) or NO_SHARE
            self.rows[share.tenant] += 1
            self.weights.setdefault(share.tenant, share.weight)
        self.running = sum(self.rows.values())
        self.prefilled: collections.Counter = collections.Counter()  # prompt tokens taken per tenant in this pass
        self.light_joined = False  # a tenant below its share joins in this pass
        scheduler.saw(self.weights)
        self.contended = scheduler.active_tenants() > 1

    def row_limit(self, group: Any) -> int:
        """Rows the batch may hold once ``group`` joins: for a tenant below its share, its unused share more than
        the batch holds now (a busier tenant may hold more than its share, lent while this one was idle), never
        more than ``max_running + burst_rows``."""
        tenant = share_of(group).tenant
        unused = self.scheduler.fair_rows(tenant, self.max_running) - self.rows[tenant]
        if self.scheduler.burst_rows and unused > 0:
            return max(self.max_running, min(self.max_running + self.scheduler.burst_rows,
                                             self.running + math.ceil(unused)))
        return self.max_running

    def next(self) -> Any | None:
        """The group to admit next among those whose rows fit, or None."""
        best, best_key = None, None
        for tenant, queue in self.queues.items():
            group = queue[0]
            if self.running and self.running + len(group.choices) > self.row_limit(group):
                continue
            cap = self.scheduler.prefill_tokens
            if self.contended and cap and self.prefilled[tenant] and \
                    self.prefilled[tenant] + len(group.prompt_ids) > cap:
                continue
            if self.contended and self.light_joined and not self._below_share(tenant):
                continue
            key = (self.scheduler.clock.start(tenant), group.choices[0].generation.arrival)
            if best_key is None or key < best_key:
                best, best_key = group, key
        return best

    def _below_share(self, tenant: str | None) -> bool:
        return self.rows[tenant] < self.scheduler.fair_rows(tenant, self.max_running)

    def take(self, group: Any) -> None:
        share = share_of(group)
        self.light_joined |= self.contended and self._below_share(share.tenant)
        self.queues[share.tenant].popleft()
        if not self.queues[share.tenant]:
            del self.queues[share.tenant]
        self.scheduler.clock.charge(share, group.tokens)
        self.prefilled[share.tenant] += len(group.prompt_ids)
        self.rows[share.tenant] += len(group.choices)
        self.running += len(group.choices)


class FairScheduler:
    """The engine's admission order; used only on the engine thread."""

    def __init__(self, burst_rows: int = 0, active_window_s: float = 10.0, prefill_tokens: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.burst_rows = burst_rows
        self.prefill_tokens = prefill_tokens
        self.active_window_s = active_window_s
        self.now = clock
        self.clock = VirtualClock()
        self._seen: dict[str | None, tuple[float, float]] = {}  # tenant -> (last seen, weight)

    def saw(self, weights: dict[str | None, float]) -> None:
        now = self.now()
        for tenant, weight in weights.items():
            self._seen[tenant] = (now, weight)

    def active_tenants(self) -> int:
        horizon = self.now() - self.active_window_s
        return sum(seen >= horizon for seen, _ in self._seen.values())

    def fair_rows(self, tenant: str | None, max_running: int) -> float:
        horizon = self.now() - self.active_window_s
        active = {t: w for t, (seen, w) in self._seen.items() if seen >= horizon or t == tenant}
        return max_running * active.get(tenant, 1.0) / sum(active.values())

    def picker(self, waiting: Iterable[Any], running: Iterable[Any], max_running: int) -> Picker:
        return Picker(self, waiting, running, max_running)


class FairGate:
    """At most ``capacity`` requests forwarded at once; the rest wait, released in weighted fair order, until
    ``max_wait_s`` (then refused). One asyncio loop (a gateway worker), so no locks."""

    def __init__(self, capacity: int, max_wait_s: float):
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self.in_flight = 0
        self.clock = VirtualClock()
        self._queues: dict[str | None, collections.deque] = {}
        self._arrivals = 0

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def enter(self, share: Share, cost: float) -> bool:
        """True once admitted (call ``leave`` when done), False after waiting ``max_wait_s``."""
        if self.in_flight < self.capacity and not self._queues:
            self.in_flight += 1
            self.clock.charge(share, cost)
            return True
        future = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        entry = (future, share, cost, self._arrivals)
        self._queues.setdefault(share.tenant, collections.deque()).append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.max_wait_s)
            return True
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if future.done() and not future.cancelled():  # admitted just as it gave up: pass the slot on
                self.leave()
            else:
                future.cancel()
                self._forget(share.tenant, entry)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False

    def leave(self) -> None:
        self.in_flight -= 1
        while self.in_flight < self.capacity and self._queues:
            tenant = min(self._queues, key=lambda t: (self.clock.start(t), self._queues[t][0][3]))
            future, share, cost, _ = self._queues[tenant].popleft()
            if not self._queues[tenant]:
                del self._queues[tenant]
            if future.done():
                continue
            self.in_flight += 1
            self.clock.charge(share, cost)
            future.set_result(True)

    def _forget(self, tenant: str | None, entry: tuple) -> None:
        queue = self._queues.get(tenant)
        if queue is not None and entry in queue:
            queue.remove(entry)
            if not queue:
                del self._queues[tenant]
