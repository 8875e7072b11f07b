import asyncio
import time

import numpy as np
import pytest

from kubeforge.serving.batching import ANSWER_SLICE_S, MicroBatcher, Overloaded


class Recorder:
    """A real (if tiny) model: probabilities proportional to the row, remembering each call's batch size."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(X))
        return X / X.sum(axis=1, keepdims=True)


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 1.0] for v in values], dtype=np.float32)


async def concurrently(batcher: MicroBatcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    return await asyncio.gather(*(batcher.predict(r) for r in requests))


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=64)
    requests = [rows(float(i)) for i in range(1, 21)] + [rows(7.0, 9.0)]
    answers = asyncio.run(concurrently(batcher, requests))
    for request, answer in zip(requests, answers, strict=True):
        assert np.allclose(answer, model(request))
    assert sum(model.batch_sizes[:batcher.calls]) == 22 and batcher.calls < len(requests)


def test_batches_never_exceed_max_batch_size():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=4)
    answers = asyncio.run(concurrently(batcher, [rows(float(i), float(i)) for i in range(1, 11)]))
    assert len(answers) == 10 and max(model.batch_sizes) <= 4
    assert sum(model.batch_sizes) == 20


def test_batch_size_one_or_a_full_request_goes_straight_to_the_model():
    model = Recorder()
    off = MicroBatcher(model, max_batch_size=1)
    asyncio.run(concurrently(off, [rows(1.0), rows(2.0), rows(3.0)]))
    assert model.batch_sizes == [1, 1, 1] and not off.enabled
    full = MicroBatcher(model, max_batch_size=2)
    asyncio.run(concurrently(full, [rows(1.0, 2.0)]))
    assert model.batch_sizes[-1] == 2 and full.calls == 1


def test_a_request_whose_deadline_passed_is_dropped_before_inference_and_the_next_is_served():
    model = Recorder()

    def slow(X: np.ndarray) -> np.ndarray:
        time.sleep(0.03)  # a backlog: the batch in front takes longer than the waiting requests' deadlines
        return model(X)

    batcher = MicroBatcher(slow, max_batch_size=2)

    async def scenario():
        deadline = time.monotonic() + 0.01
        results = await asyncio.gather(*(batcher.predict(rows(float(i)), deadline) for i in range(1, 4)),
                                       return_exceptions=True)
        assert [isinstance(r, np.ndarray) for r in results] == [True, True, False]
        assert isinstance(results[2], Overloaded) and "deadline" in str(results[2])
        return await batcher.predict(rows(4.0), time.monotonic() + 1)

    served = asyncio.run(scenario())
    assert model.batch_sizes == [2, 1]  # the dropped row never reached the model
    assert np.allclose(served, model(rows(4.0)))


def test_a_past_deadline_skips_even_an_unbatched_inference():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=1)
    with pytest.raises(Overloaded):
        asyncio.run(batcher.predict(rows(1.0), time.monotonic() - 0.001))
    assert model.batch_sizes == []


def test_a_failing_model_fails_its_requests_and_the_batcher_keeps_serving():
    calls = []

    def flaky(X: np.ndarray) -> np.ndarray:
        calls.append(len(X))
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return X

    batcher = MicroBatcher(flaky, max_batch_size=8)

    async def scenario():
        first = await asyncio.gather(batcher.predict(rows(1.0)), batcher.predict(rows(2.0)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in first)
        return await batcher.predict(rows(3.0))

    assert np.array_equal(asyncio.run(scenario()), rows(3.0))



class SlowAnswer:
    """A waiter whose answer (encode and write) takes ``cost`` seconds on the test's clock."""

    def __init__(self, future: asyncio.Future, clock: list[float], cost: float):
        self.future, self.clock, self.cost = future, clock, cost

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, result) -> None:
        self.clock[0] += self.cost
        self.future.set_result(result)

    def set_exception(self, exception: BaseException) -> None:
        self.future.set_exception(exception)


def sliced_turn(slice_answers, answers: int = 10, late: dict[int, int] | None = None):
    """One batch of ``answers`` requests, each answer taking 0.4 of ANSWER_SLICE_S: what the loop saw each time it
    got a turn while the batch was answered (answers written, answers pending), and each inference call's rows.
    ``late`` submits more requests at the n-th such turn (0: the turn after the batch), as a socket read would."""
    now = [0.0]
    seen: list[tuple[int, int]] = []
    model = Recorder()

    async def scenario():
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(answers)]
        batcher = MicroBatcher(model, max_batch_size=64, clock=lambda: now[0], slice_answers=slice_answers)

        def arrive(count: int) -> None:
            for _ in range(count):
                futures_late.append(loop.create_future())
                batcher.submit(rows(1.0), SlowAnswer(futures_late[-1], now, 0.4 * ANSWER_SLICE_S))

        def probe():  # runs once per loop turn, until the turn after the first batch is answered
            written = sum(future.done() for future in futures)
            if written == answers:
                arrive((late or {}).get(0, 0))
                return
            if written:
                seen.append((written, batcher.pending))
                arrive((late or {}).get(len(seen), 0))
            loop.call_soon(probe)

        futures_late: list[asyncio.Future] = []
        for index, future in enumerate(futures):
            batcher.submit(rows(float(index + 1)), SlowAnswer(future, now, 0.4 * ANSWER_SLICE_S))
        loop.call_soon(probe)
        await asyncio.gather(*futures)
        await asyncio.gather(*futures_late)

    asyncio.run(scenario())
    return seen, model.batch_sizes


def test_while_the_worker_is_full_the_loop_reads_after_every_slice_of_answering():
    """A refusal to send (a socket read) waits about ANSWER_SLICE_S, not the whole batch; the answers computed but not
    yet written are reported as pending meanwhile, so admission counts their slots as free."""
    seen, batch_sizes = sliced_turn(lambda: True)
    assert seen == [(3, 7), (6, 4), (9, 1)] and batch_sizes == [10]


@pytest.mark.parametrize("slice_answers", [lambda: False, None])
def test_while_the_worker_has_room_or_refusing_is_futile_the_batch_is_answered_in_one_go(slice_answers):
    seen, batch_sizes = sliced_turn(slice_answers)
    assert seen == [] and batch_sizes == [10]


def test_requests_read_between_slices_wait_for_the_turn_and_go_in_one_batch():
    """Arrivals read between slices do not each start a small batch: the next batch is formed after the turn, with
    everything read meanwhile, as without slices."""
    seen, batch_sizes = sliced_turn(lambda: True, late={1: 2, 2: 1, 0: 1})
    assert [written for written, _ in seen] == [3, 6, 9] and batch_sizes == [10, 4]
