import asyncio
import time

import numpy as np
import pytest

from kubeforge.serving.batching import ANSWERS_PER_TURN, MicroBatcher, Overloaded


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



@pytest.mark.parametrize("yield_between, answered_before_the_loop_reads",
                         [(lambda: True, ANSWERS_PER_TURN), (lambda: False, 40), (None, 40)])
def test_while_shedding_works_the_loop_gets_a_turn_every_few_answers(yield_between, answered_before_the_loop_reads):
    """A callback the loop got meanwhile (a socket read: a refusal to send) runs after ANSWERS_PER_TURN answers, not
    after the whole queue; when yield_between says no (refusals are futile), or there is none, the queue is answered
    in one go."""
    seen = []

    async def scenario():
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(40)]

        def model(X: np.ndarray) -> np.ndarray:
            loop.call_soon(lambda: seen.append(sum(future.done() for future in futures)))  # "a request arrived"
            return X / X.sum(axis=1, keepdims=True)

        batcher = MicroBatcher(model, max_batch_size=64, yield_between=yield_between)
        for index, future in enumerate(futures):
            batcher.submit(rows(float(index + 1)), future)
        answers = await asyncio.gather(*futures)
        assert batcher.calls == 1 and all(np.allclose(answer.sum(), 1.0) for answer in answers)

    asyncio.run(scenario())
    assert seen == [answered_before_the_loop_reads]
