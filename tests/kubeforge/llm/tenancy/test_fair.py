"""Weighted fair admission: shares follow the weights, an idle tenant's share is lent and never owed back, FIFO
within a tenant and without tenants, rows kept for tenants below their share; the gateway's gate likewise."""

from __future__ import annotations

import asyncio
import collections

from kubeforge.llm.generation import Choice, Generation, Group
from kubeforge.llm.tenancy.fair import FairGate, FairScheduler, Share


def group(loop, tenant, weight=1.0, tokens=10, rows=1):
    generation = Generation("base", loop)
    generation.share = None if tenant is None else Share(tenant, weight)
    choices = [Choice(generation=generation, index=i, prompt_ids=[1] * (tokens - 1), max_tokens=1, sampler=None,
                      text=None, slot=0) for i in range(rows)]
    generation.choices.extend(choices)
    return Group(choices)


def admit(scheduler, waiting, count, running=(), max_running=1000):
    picker = scheduler.picker(list(waiting), list(running), max_running)
    order = []
    while len(order) < count and (chosen := picker.next()) is not None:
        picker.take(chosen)
        waiting.remove(chosen)
        order.append(chosen)
    return order


def tenants(groups):
    return [g.choices[0].generation.share.tenant if g.choices[0].generation.share else None for g in groups]


def test_without_tenants_the_order_is_fifo():
    loop = asyncio.new_event_loop()
    waiting = collections.deque(group(loop, None, tokens=t) for t in (5, 50, 7, 9))
    expected = list(waiting)
    assert admit(FairScheduler(), waiting, 4) == expected


def test_equal_weights_alternate_and_weights_set_the_shares():
    loop = asyncio.new_event_loop()
    waiting = collections.deque([group(loop, "a") for _ in range(20)] + [group(loop, "b") for _ in range(5)])
    first = tenants(admit(FairScheduler(), waiting, 10))
    assert first == ["a", "b"] * 5  # b's requests arrived after a's twenty, and still get half
    waiting = collections.deque([group(loop, "a", 3.0) for _ in range(40)] + [group(loop, "b", 1.0) for _ in range(40)])
    counts = collections.Counter(tenants(admit(FairScheduler(), waiting, 40)))
    assert counts == {"a": 30, "b": 10}


def test_cost_is_counted_in_tokens():
    loop = asyncio.new_event_loop()
    waiting = collections.deque([group(loop, "a", tokens=100) for _ in range(5)] +
                                [group(loop, "b", tokens=10) for _ in range(50)])
    counts = collections.Counter(tenants(admit(FairScheduler(), waiting, 22)))
    assert counts == {"a": 2, "b": 20}


def test_an_idle_tenant_is_served_at_once_but_gets_no_credit_for_its_idle_time():
    loop = asyncio.new_event_loop()
    scheduler = FairScheduler()
    waiting = collections.deque(group(loop, "a") for _ in range(30))
    assert tenants(admit(scheduler, waiting, 20)) == ["a"] * 20  # b idle: a uses everything
    waiting.extend(group(loop, "b") for _ in range(10))
    after = tenants(admit(scheduler, waiting, 8))
    assert after[0] == "b" and collections.Counter(after) == {"a": 4, "b": 4}  # no burst of b to "pay back"


def test_reserved_rows_go_to_the_tenant_below_its_share():
    loop = asyncio.new_event_loop()
    scheduler = FairScheduler(reserve_rows=2)
    running_a = [c for g in (group(loop, "a") for _ in range(6)) for c in g.choices]
    scheduler.saw({"b": 1.0})  # b sent a request a moment ago
    waiting = collections.deque(group(loop, "a") for _ in range(5))
    assert admit(scheduler, waiting, 5, running_a, max_running=8) == []  # a at 6 of 8 is above its share (4 of 8)
    waiting.append(group(loop, "b"))
    assert tenants(admit(scheduler, waiting, 5, running_a, max_running=8)) == ["b"]
    lone = FairScheduler(reserve_rows=2)
    waiting = collections.deque(group(loop, "a") for _ in range(5))
    assert len(admit(lone, waiting, 5, running_a, max_running=8)) == 2  # alone, a's share is the whole batch


def test_the_gate_releases_waiters_in_fair_order():
    async def scenario():
        gate = FairGate(capacity=1, max_wait_s=5)
        assert await gate.enter(Share("a"), 10)
        order = []

        async def request(tenant):
            assert await gate.enter(Share(tenant), 10)
            order.append(tenant)
            await asyncio.sleep(0)
            gate.leave()

        tasks = [asyncio.create_task(request("a")) for _ in range(4)] + [asyncio.create_task(request("b"))
                                                                        for _ in range(2)]
        await asyncio.sleep(0.01)
        gate.leave()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario())[:4] == ["b", "a", "b", "a"]


def test_the_gate_gives_up_after_the_wait_and_frees_nothing_it_did_not_take():
    async def scenario():
        gate = FairGate(capacity=1, max_wait_s=0.05)
        assert await gate.enter(Share("a"), 1)
        assert not await gate.enter(Share("b"), 1)
        gate.leave()
        return gate.in_flight, gate.waiting

    assert asyncio.run(scenario()) == (0, 0)
