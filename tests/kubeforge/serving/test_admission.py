import asyncio

import pytest
from prometheus_client import CollectorRegistry

from kubeforge.serving.admission import (FUTILE_HOLD_S, PARK_PROBE_EVERY, SHED_DEADLINE, SHED_LIMIT, SHED_NOT_READY,
                                         SHED_QUEUE_FULL, Admission, AdmissionPolicy, Shed, Ticket, retry_headers)
from kubeforge.serving.meters import Meters


class Clock:
    """A clock the test moves by hand, so deadlines and windows are exact."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fixed(limit: int, **kwargs) -> AdmissionPolicy:
    return AdmissionPolicy(max_concurrency=limit, mode="fixed", min_concurrency=1, **kwargs)


def test_a_fixed_limit_admits_up_to_the_limit_then_sheds_at_once_with_the_reason():
    admission = Admission(fixed(2, retry_after_s=3))
    first, second = admission.admit(), admission.admit()
    assert isinstance(first, Ticket) and isinstance(second, Ticket) and admission.in_flight == 2
    refused = admission.admit()
    assert refused == Shed(SHED_LIMIT, refused.message, 3) and "concurrency limit" in refused.message
    admission.done(first)
    assert isinstance(admission.admit(), Ticket)


def test_answers_computed_but_not_yet_written_count_as_free_slots():
    """While the batcher lets the loop read between answers, an arrival takes a slot that a computed answer is about
    to free, as it would once the answer is written; the rest are refused at once."""
    admission = Admission(fixed(2))
    admission.admit(), admission.admit()
    assert isinstance(admission.admit(), Shed)
    admission.leaving = lambda: 1
    assert isinstance(admission.admit(), Ticket) and isinstance(admission.admit(), Shed)


def test_answers_are_sliced_only_while_the_worker_is_full_and_refusing_is_not_futile():
    admission = Admission(fixed(2))
    first = admission.admit()
    assert not admission.slice_answers()  # room for the next arrival: reading it early only splits batches
    admission.admit()
    assert admission.slice_answers()  # the next arrival is refused: read it now, its 503 goes out now
    admission.shedding = "futile"
    assert not admission.slice_answers()  # a faster 503 to a client that sends again at once is the next refusal
    admission.shedding = "idle"
    admission.done(first)
    assert not admission.slice_answers()


def test_metrics_count_admitted_shed_by_reason_and_timed_out_and_sample_the_gauges():
    registry = CollectorRegistry()
    meters = Meters(registry)
    clock = Clock()
    admission = Admission(fixed(1, deadline_s=0.05), meters, service="test", clock=clock)
    ticket = admission.admit()
    admission.admit()
    admission.refuse_not_ready("loading")
    clock.now += 0.06
    assert admission.late(ticket)
    meters.flush()
    value = registry.get_sample_value
    assert value("kubeforge_admission_admitted_total", {"service": "test"}) == 1
    assert value("kubeforge_admission_shed_total", {"service": "test", "reason": SHED_LIMIT}) == 1
    assert value("kubeforge_admission_shed_total", {"service": "test", "reason": SHED_NOT_READY}) == 1
    assert value("kubeforge_admission_timed_out_total", {"service": "test"}) == 1
    assert value("kubeforge_admission_in_flight", {"service": "test"}) == 1
    assert value("kubeforge_admission_limit", {"service": "test"}) == 1
    assert value("kubeforge_admission_queue_length", {"service": "test"}) == 0
    assert value("kubeforge_admission_refusals_futile", {"service": "test"}) == 0


def test_late_is_false_until_the_deadline_passes():
    clock = Clock()
    admission = Admission(fixed(4, deadline_s=0.02), clock=clock)
    ticket = admission.admit()
    clock.now += 0.019
    assert not admission.late(ticket)
    clock.now += 0.002
    assert admission.late(ticket)
    admission.received(ticket)  # the body arrived only now: the deadline counts from here
    assert not admission.late(ticket)


def test_queued_requests_get_freed_slots_in_arrival_order_and_the_full_queue_sheds():
    async def scenario():
        admission = Admission(fixed(1, max_queue=2, deadline_s=5))
        holder = await admission.enter()
        waiting = [asyncio.ensure_future(admission.enter()) for _ in range(2)]
        await asyncio.sleep(0)
        assert len(admission.queue) == 2
        assert (await admission.enter()).reason == SHED_QUEUE_FULL  # limit and queue both full: shed at once
        admission.done(holder)
        first = await waiting[0]
        assert isinstance(first, Ticket) and not waiting[1].done()
        admission.done(first)
        second = await waiting[1]
        assert isinstance(second, Ticket) and admission.in_flight == 1 and not admission.queue

    asyncio.run(scenario())


def test_a_queued_request_is_shed_at_its_deadline_without_waiting_longer():
    async def scenario():
        admission = Admission(fixed(1, max_queue=4, deadline_s=0.05))
        await admission.enter()
        loop = asyncio.get_running_loop()
        started = loop.time()
        refused = await admission.enter()
        assert refused.reason == SHED_DEADLINE
        assert 0.04 <= loop.time() - started < 1.0
        assert not admission.queue and admission.in_flight == 1

    asyncio.run(scenario())


def test_a_queued_request_whose_client_left_gives_its_slot_on():
    async def scenario():
        admission = Admission(fixed(1, max_queue=4, deadline_s=5))
        holder = await admission.enter()
        gone = asyncio.ensure_future(admission.enter())
        stays = asyncio.ensure_future(admission.enter())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        admission.done(holder)
        assert isinstance(await stays, Ticket) and admission.in_flight == 1

    asyncio.run(scenario())


def closed_loop(admission: Admission, clock: Clock, latency_s: float, windows: int,
                refused_per_admitted: float = 0.0) -> None:
    """Clients that keep the limit full; every request takes ``latency_s``. ``refused_per_admitted``: how many
    more requests arrive per admitted one while the limit is full (clients that were refused and came back)."""
    for _ in range(windows):
        end = clock.now + 0.1
        while clock.now < end:
            tickets = []
            while admission.in_flight < admission.limit:
                tickets.append(admission.admit())
            assert all(isinstance(ticket, Ticket) for ticket in tickets)
            assert len(tickets) == admission.current_limit  # the gauge says what it admits, fractional limit or not
            refusals = [admission.admit() for _ in range(round(refused_per_admitted * len(tickets)))]
            assert all(isinstance(refusal, Shed) for refusal in refusals)
            clock.now += latency_s
            for ticket in tickets:
                admission.done(ticket)


def test_the_adaptive_limit_grows_to_what_fits_the_target_and_shrinks_when_requests_miss_it():
    clock = Clock()
    policy = AdmissionPolicy(max_concurrency=300, min_concurrency=4, mode="adaptive", latency_target_s=0.02)
    admission = Admission(policy, clock=clock)
    assert admission.current_limit == 300  # starts at the ceiling: a fresh server takes a burst
    closed_loop(admission, clock, 0.05, windows=10)  # each request takes 50 ms, beyond the 20 ms target
    assert 4 <= admission.current_limit < 300 / 4
    closed_loop(admission, clock, 0.05, windows=30)
    assert admission.current_limit == 4  # never below the floor
    closed_loop(admission, clock, 0.001, windows=2)  # 4 in flight done in 1 ms: 4000/s, of which 80 fit in 20 ms
    assert 30 <= admission.current_limit <= 100
    closed_loop(admission, clock, 0.001, windows=10)
    assert admission.current_limit == 300  # back at the ceiling


def test_refusals_that_come_straight_back_grow_the_limit_instead_of_spiralling_it_down():
    """Clients that retry at once: shrinking the limit only turns served requests into refusals that cost CPU."""
    clock = Clock()
    policy = AdmissionPolicy(max_concurrency=200, min_concurrency=4, mode="adaptive", latency_target_s=0.005)
    admission = Admission(policy, clock=clock)
    closed_loop(admission, clock, 0.02, windows=10)  # 20 ms against a 5 ms target, nobody else waiting: shrink
    shrunk = admission.current_limit
    assert shrunk < 200 / 8
    closed_loop(admission, clock, 0.02, windows=10, refused_per_admitted=0.2)  # a few refusals (polite clients)
    assert admission.current_limit <= shrunk  # still too slow: the limit does not grow
    closed_loop(admission, clock, 0.02, windows=10, refused_per_admitted=3)  # three refused per served
    assert admission.current_limit == 200  # shedding is futile: serve what it can, up to the ceiling
    closed_loop(admission, clock, 0.02, windows=5)  # half a second later
    assert admission.current_limit == 200  # such clients are likely still there: shrinking would refuse them again
    closed_loop(admission, clock, 0.02, windows=15)  # the crowd is gone: back to what the target allows
    assert admission.current_limit < 200 / 8


def test_refused_connections_that_came_straight_back_grow_the_limit_and_hold_it_at_any_refusal_rate():
    """Otherwise a limit a little below the clients saws up and down: each shrink refuses them, they come back."""
    clock = Clock()
    policy = AdmissionPolicy(max_concurrency=200, min_concurrency=4, mode="adaptive", latency_target_s=0.005,
                             retry_after_s=1)
    admission = Admission(policy, clock=clock)
    closed_loop(admission, clock, 0.02, windows=10)
    shrunk = admission.current_limit
    assert shrunk < 200 / 8
    refused_at = clock.now
    for _ in range(20):  # the fast path reports each refused connection's next request, here at once
        admission.came_back(refused_at)
    closed_loop(admission, clock, 0.02, windows=1, refused_per_admitted=0.1)  # few refusals per completion
    grown = admission.current_limit
    assert grown > shrunk
    closed_loop(admission, clock, 0.02, windows=5)  # half a second later, still too slow for the target
    assert admission.current_limit >= grown
    closed_loop(admission, clock, 0.02, windows=15)
    assert admission.current_limit < grown



@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_shedding_says_whether_the_refused_stay_away(mode):
    """What the batcher reads to decide whether a faster 503 helps; in either mode, with a gap between the thresholds
    so that answering futile refusals more slowly (fewer of them per window) does not flip it back."""
    clock = Clock()
    admission = Admission(AdmissionPolicy(max_concurrency=100, min_concurrency=100, mode=mode, latency_target_s=0.05),
                          clock=clock)
    closed_loop(admission, clock, 0.01, windows=3)
    assert admission.shedding == "idle"  # nobody refused
    closed_loop(admission, clock, 0.01, windows=3, refused_per_admitted=0.05)  # polite clients: a few refused
    assert admission.shedding == "effective"
    closed_loop(admission, clock, 0.01, windows=3, refused_per_admitted=2)  # the refused come straight back
    assert admission.shedding == "futile"
    closed_loop(admission, clock, 0.01, windows=3, refused_per_admitted=0.2)  # fewer now, still coming back
    assert admission.shedding == "futile"
    closed_loop(admission, clock, 0.01, windows=3)  # nobody refused: nothing says they would stay away now
    assert admission.shedding == "futile"
    closed_loop(admission, clock, 0.01, windows=3, refused_per_admitted=0.05)
    assert admission.shedding == "effective"
    closed_loop(admission, clock, 0.01, windows=3)
    assert admission.shedding == "idle"



def test_refused_connections_back_before_their_retry_after_make_shedding_futile_at_any_refusal_rate():
    clock = Clock()
    admission = Admission(fixed(100, retry_after_s=1), clock=clock)
    closed_loop(admission, clock, 0.01, windows=2, refused_per_admitted=0.05)
    assert admission.shedding == "effective"  # few refusals, and nobody said they came back
    refused_at = clock.now
    clock.now += 0.4  # before half the Retry-After: the refused did not wait
    for _ in range(50):
        admission.came_back(refused_at)
    closed_loop(admission, clock, 0.01, windows=1, refused_per_admitted=0.05)
    assert admission.shedding == "futile"
    refused_at = clock.now
    clock.now += 0.6  # after half of it: they waited
    for _ in range(50):
        admission.came_back(refused_at)
    closed_loop(admission, clock, 0.01, windows=1, refused_per_admitted=0.05)
    assert admission.shedding == "effective"


class Waiting:
    """A parked request, as the fast path's exchange is to admission: it records what it was given."""

    def __init__(self, admission: Admission | None = None):
        self.ticket: Ticket | None = None
        self.refusal: Shed | None = None
        self.gone = False
        self.admission = admission  # set: answered as soon as it resumes (no batching), freeing its slot at once

    def done(self) -> bool:
        return self.gone or self.ticket is not None or self.refusal is not None

    def resume(self, ticket: Ticket) -> None:
        self.ticket = ticket
        if self.admission is not None:
            self.admission.done(ticket)

    def expire(self, refusal: Shed) -> None:
        self.refusal = refusal


def refused_came_back(admission: Admission, clock: Clock) -> None:
    """One window in which the refused connections sent again at once (the fast path reports each): the evidence
    that refusing them is futile, and that parking them helps."""
    ticket = admission.admit()
    assert isinstance(ticket, Ticket)
    for _ in range(4 * admission.current_limit):
        admission.shed(Shed("concurrency_limit", "test", 1))
        admission.came_back(clock.now)
    clock.now += 0.2
    admission.done(ticket)
    assert admission.shedding == "futile"


def test_only_refused_connections_that_came_straight_back_let_requests_without_a_slot_be_parked_and_for_a_while():
    clock = Clock()
    admission = Admission(fixed(1, deadline_s=1.0), clock=clock)
    closed_loop(admission, clock, 0.01, windows=2, refused_per_admitted=3)  # many refusals per completion
    assert admission.shedding == "futile"  # ...which is also what a polite crowd's first burst looks like
    holder = admission.admit()
    assert isinstance(admission.admit(Waiting()), Shed)  # so it is still told to go away
    admission.done(holder)
    refused_came_back(admission, clock)
    holder = admission.admit()
    assert admission.admit(Waiting()) is None  # parked
    clock.now += FUTILE_HOLD_S + 0.1  # later, with no new evidence: refused again, to see whether they come back
    assert isinstance(admission.admit(Waiting()), Shed)


def test_while_refusing_is_futile_a_request_without_a_slot_is_parked_and_gets_the_next_one_in_arrival_order():
    clock = Clock()
    admission = Admission(fixed(2, deadline_s=1.0), clock=clock)
    first, second = admission.admit(), admission.admit()
    waiting = Waiting()
    assert isinstance(admission.admit(waiting), Shed)  # refusing works (or nobody knows yet): a 503
    admission.done(second)
    refused_came_back(admission, clock)
    second = admission.admit()
    early, late = Waiting(), Waiting()
    assert admission.admit(early) is None and admission.admit(late) is None  # parked: no 503, not counted as shed
    assert admission._refused == 0 and len(admission.parked) == 2
    assert isinstance(admission.admit(), Shed)  # a caller that cannot wait is still refused
    parked_at = clock.now
    clock.now += 0.05
    admission.done(first)
    assert early.ticket is not None and late.ticket is None and admission.in_flight == 2
    assert early.ticket.arrived == parked_at and early.ticket.deadline == parked_at + 1.0  # its wait counts
    late.gone = True  # its client went away while parked
    admission.done(second)
    assert not admission.parked and admission.in_flight == 1  # the slot stays free for the next arrival


def test_a_parked_request_past_its_deadline_is_refused_when_a_slot_frees_and_the_refusal_counts():
    clock = Clock()
    admission = Admission(fixed(1, deadline_s=0.5), clock=clock)
    refused_came_back(admission, clock)
    ticket = admission.admit()
    stale, fresh = Waiting(), Waiting()
    admission.admit(stale)
    clock.now += 0.4
    admission.admit(fresh)
    clock.now += 0.2
    admission.done(ticket)
    assert stale.refusal is not None and stale.refusal.reason == SHED_DEADLINE and stale.ticket is None
    assert fresh.ticket is not None and admission._refused == 1  # the windows see the refusal


def test_parked_requests_answered_as_they_resume_free_their_slots_into_the_same_loop():
    """Without batching a resumed request is answered inside done(): the next parked one gets the slot without a
    nested hand-over per request."""
    clock = Clock()
    admission = Admission(fixed(1), clock=clock)
    refused_came_back(admission, clock)
    ticket = admission.admit()
    waiting = [Waiting(admission) for _ in range(2000)]  # deeper than Python's recursion limit, were it nested
    parked = [request for request in waiting if admission.admit(request) is None]  # less the probes
    admission.done(ticket)
    assert len(parked) > 1900 and all(request.ticket is not None for request in parked)
    assert admission.in_flight == 0


def test_while_parking_one_request_in_so_many_is_refused_to_probe_whether_the_refused_still_come_straight_back():
    clock = Clock()
    admission = Admission(fixed(1, deadline_s=10.0), clock=clock)
    refused_came_back(admission, clock)
    holder = admission.admit()
    parked: list[Waiting] = []

    def arrivals(come_back: bool) -> list[int]:
        """PARK_PROBE_EVERY requests that find no slot; the indices of those refused."""
        refused = []
        for index in range(PARK_PROBE_EVERY):
            request = Waiting()
            if isinstance(admission.admit(request), Shed):
                refused.append(index)
                if come_back:
                    admission.came_back(clock.now)
            else:
                parked.append(request)
        return refused

    def next_window() -> Ticket:
        clock.now += 0.1
        admission.done(holder)
        resumed = parked.pop(0)  # the slot went to the first parked request
        assert resumed.ticket is not None
        return resumed.ticket

    assert arrivals(come_back=True) == [PARK_PROBE_EVERY - 1]  # one probe, the rest parked
    for _ in range(30):  # 3 s of windows, far past FUTILE_HOLD_S, each with a probe whose client came straight back
        holder = next_window()
        assert arrivals(come_back=True) == [PARK_PROBE_EVERY - 1]  # still parking: each probe renewed the hold
    assert arrivals(come_back=False) == [PARK_PROBE_EVERY - 1]  # now the probes' clients stay away...
    clock.now += FUTILE_HOLD_S
    holder = next_window()
    assert arrivals(come_back=False) == list(range(PARK_PROBE_EVERY))  # ...and the hold lapses: all refused


def test_refusals_before_the_model_is_ready_do_not_steer_the_limit():
    clock = Clock()
    admission = Admission(AdmissionPolicy(max_concurrency=100, min_concurrency=4, latency_target_s=0.005),
                          clock=clock)
    closed_loop(admission, clock, 0.02, windows=10)
    shrunk = admission.current_limit
    for _ in range(1000):
        admission.refuse_not_ready("loading")
    closed_loop(admission, clock, 0.02, windows=1)
    assert admission.current_limit <= shrunk


def test_retry_headers_say_whole_seconds_and_spread_the_milliseconds_over_one_to_two_times_that():
    draws = [dict(retry_headers(2)) for _ in range(400)]
    assert {draw[b"retry-after"] for draw in draws} == {b"2"}
    waits = [int(draw[b"retry-after-ms"]) for draw in draws]
    assert all(2000 <= wait < 4000 for wait in waits)
    assert min(waits) < 2500 and max(waits) >= 3500  # spread over the range, not one value for every client
    assert retry_headers(0) == [(b"retry-after", b"0")]


@pytest.mark.parametrize("kwargs, message", [
    ({"max_concurrency": 2, "min_concurrency": 3}, "min_concurrency"),
    ({"max_concurrency": 2, "deadline_s": 0}, "deadline_s"),
    ({"max_concurrency": 2, "mode": "sometimes"}, "mode"),
])
def test_a_contradictory_policy_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdmissionPolicy(**kwargs)
