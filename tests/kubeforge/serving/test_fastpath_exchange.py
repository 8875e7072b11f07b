"""The fast path's exchange without sockets: admission, decoding, the batcher's callbacks and the answers it writes."""

import asyncio
import json

import numpy as np
from prometheus_client import CollectorRegistry

from kubeforge.config import ServeConfig
from kubeforge.serving.admission import Admission, AdmissionPolicy
from kubeforge.serving.fastpath import Exchange, FastInfer, FastPredict
from kubeforge.serving.http import Handlers, ServingState
from kubeforge.serving.meters import LocalCounter, Meters
from kubeforge.serving.runtime import ModelRuntime, ServedSpec

WIDTH = 4


class Flow:
    """Stands in for uvicorn's FlowControl: whether the connection's socket is read."""

    read_paused = False

    def pause_reading(self):
        self.read_paused = True

    def resume_reading(self):
        self.read_paused = False


class Protocol:
    """Stands in for FastPathProtocol: records what would have been written."""

    def __init__(self):
        self.written: list[tuple[int, bytes, list | None, bytes]] = []
        self.closed = False
        self.refused_at = 0.0
        self.transport = self
        self.flow = Flow()

    def write_response(self, status, body, headers, content_type, keep_alive):
        self.written.append((status, body, headers, content_type))
        self.flow.resume_reading()  # as uvicorn's on_response_complete does

    def close(self):
        self.closed = True


def softmax_rows(rows: np.ndarray) -> np.ndarray:
    logits = np.stack([rows.sum(axis=1), -rows.sum(axis=1)], axis=1)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def runtime(predict=softmax_rows) -> ModelRuntime:
    spec = ServedSpec(input_dim=WIDTH, feature_names=[f"f{i}" for i in range(WIDTH)], class_names=["yes", "no"],
                      architecture="mlp", precision="fp32")
    return ModelRuntime(spec=spec, predict_proba=predict, config=ServeConfig(max_batch_size=8), source="test")


def handlers(limit: int = 4, loaded: bool = True, predict=softmax_rows, deadline_s: float = 1.0) -> Handlers:
    admission = Admission(AdmissionPolicy(max_concurrency=limit, mode="fixed", deadline_s=deadline_s))
    state = ServingState(admission=admission, model_name="m", max_payload_bytes=1 << 20)
    if loaded:
        state.serve(runtime(predict))
    return Handlers(state)


def route(kind=FastPredict, **kwargs):
    meters = Meters(CollectorRegistry())
    recorded: list[tuple[str, int]] = []
    answered = meters.add(LocalCounter("fast_total", "test", ["route"]))
    return kind(handlers(**kwargs), lambda label, status, started: recorded.append((label, status)), meters,
                answered), recorded


def exchange(fast_route, body: bytes | None, headers=(), protocol: Protocol | None = None) -> tuple[Exchange, Protocol]:
    """An exchange as the protocol drives it: headers parsed, then (if a body is given) body and completion."""
    protocol = protocol or Protocol()
    request = Exchange(protocol, fast_route, list(headers), keep_alive=True)  # type: ignore[arg-type]
    request.refuse_if_shed()
    if body is not None:
        request.body(body)
        request.received()
    return request, protocol


def retry_after(headers) -> int:
    """The Retry-After seconds of a 503, checked against its retry-after-ms (kubeforge.serving.admission)."""
    values = dict(headers)
    seconds = int(values[b"retry-after"])
    assert 1000 * seconds <= int(values[b"retry-after-ms"]) < 2000 * seconds
    return seconds


def run(coroutine):
    return asyncio.run(coroutine)


async def turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_rows_are_batched_and_answered_as_the_asgi_handler_answers():
    async def scenario():
        fast, recorded = route()
        pairs = [exchange(fast, json.dumps({"instances": [[float(i)] * WIDTH]}).encode()) for i in range(3)]
        await turns()
        return fast, recorded, pairs

    fast, recorded, pairs = run(scenario())
    served = fast.handlers.state
    assert served.batcher.calls == 1 and served.batcher.rows == 3  # one inference call for the three
    for i, (_, protocol) in enumerate(pairs):
        (status, body, headers, content_type), = protocol.written
        expected = fast.handlers.predict_answer(served.runtime, softmax_rows(np.full((1, WIDTH), float(i), "f4")))
        assert (status, body, headers, content_type) == (200, expected, None, b"application/json")
    assert recorded == [("/predict", 200)] * 3 and fast.answered.total(("/predict",)) == 3
    assert served.admission.in_flight == 0


def test_a_shed_request_is_answered_before_its_body_and_the_body_is_dropped():
    async def scenario():
        fast, recorded = route(loaded=False)
        request, protocol = exchange(fast, None)
        assert len(protocol.written) == 1  # before any of the body
        request.body(b'{"instances": [[1, 2, 3, 4]]}')
        request.received()
        return request, protocol, recorded

    request, protocol, recorded = run(scenario())
    (status, body, headers, _), = protocol.written
    assert status == 503 and retry_after(headers) == 1 and "still loading" in json.loads(body)[0]["error"]
    assert request.chunks == [] and recorded == [("/predict", 503)]


def test_a_full_worker_refuses_arrivals_between_answers_and_admits_them_into_slots_its_answers_free():
    """The batcher answers a full worker's batch in slices (kubeforge.serving.batching); what the loop reads between
    them is refused at once, not after the batch, unless a computed answer's slot is about to be free."""
    now = [0.0]
    written_at_the_read: list[list[int]] = []

    class SlowProtocol(Protocol):  # each answer takes 0.6 ms to encode and write, on the test's clock
        def write_response(self, status, body, headers, content_type, keep_alive):
            now[0] += 0.0006
            super().write_response(status, body, headers, content_type, keep_alive)

    async def scenario():
        loop = asyncio.get_running_loop()
        arrivals: list[tuple[Exchange, Protocol]] = []

        def read_sockets():  # the loop's first turn after inference: four requests arrive
            written_at_the_read.append([len(protocol.written) for _, protocol in batch])
            arrivals.extend(exchange(fast, None, protocol=SlowProtocol()) for _ in range(4))

        def predict(rows):
            loop.call_soon(read_sockets)
            return softmax_rows(rows)

        admission = Admission(AdmissionPolicy(max_concurrency=3, mode="fixed"), clock=lambda: now[0])
        state = ServingState(admission=admission, model_name="m", max_payload_bytes=1 << 20)
        state.serve(runtime(predict))
        meters = Meters(CollectorRegistry())
        fast = FastPredict(Handlers(state), lambda *_: None, meters, meters.add(LocalCounter("f", "t", ["route"])))
        batch = [exchange(fast, None, protocol=SlowProtocol()) for _ in range(3)]
        for request, _ in batch:
            request.body(json.dumps({"instances": [[1.0] * WIDTH]}).encode())
            request.received()
        await turns()
        return batch, arrivals

    batch, arrivals = run(scenario())
    assert written_at_the_read == [[1, 1, 0]]  # read after a slice of answering, before the batch was answered
    # two slots freed by the answers written, one by the third answer, computed and about to be written
    assert [request.ticket is not None for request, _ in arrivals] == [True, True, True, False]
    assert [status for status, *_ in arrivals[3][1].written] == [503]  # at once, before the batch's last answer
    assert [[status for status, *_ in protocol.written] for _, protocol in batch] == [[200]] * 3


def test_a_connection_refused_by_the_limit_is_remembered_until_its_next_request():
    """How admission tells clients that come straight back from those that stay away (kubeforge.serving.admission's
    ``shedding``): the connection keeps when it was refused; its next request reports it, once."""
    async def scenario():
        fast, _ = route(limit=1)
        admission = fast.handlers.state.admission
        holder, _ = exchange(fast, None)  # takes the only slot
        _, protocol = exchange(fast, None)
        assert protocol.written[0][0] == 503 and 0 < protocol.refused_at <= admission.clock()
        marked, reported = protocol.refused_at, []
        admission.came_back = reported.append  # type: ignore[method-assign]
        again = Exchange(protocol, fast, [], keep_alive=True)  # type: ignore[arg-type]
        assert reported == [marked] and protocol.refused_at == 0.0
        again.refuse_if_shed()  # the slot is still held: refused again, remembered again
        assert protocol.written[1][0] == 503 and protocol.refused_at >= marked
        holder.abandon()
        not_ready, idle = route(loaded=False)[0], Protocol()
        Exchange(idle, not_ready, [], keep_alive=True).refuse_if_shed()  # type: ignore[arg-type]
        assert idle.written[0][0] == 503 and idle.refused_at == 0.0  # loading is not overload: nothing to steer

    run(scenario())


def test_a_bad_body_is_refused_naming_the_problem_and_frees_its_slot():
    async def scenario():
        fast, _ = route(limit=1)
        return fast, exchange(fast, b'{"instances": [[1, 2]]}')[1]

    fast, protocol = run(scenario())
    (status, body, _, _), = protocol.written
    assert status == 400 and "expected 4 features, got 2" in body.decode()
    assert fast.handlers.state.admission.in_flight == 0


def test_a_client_gone_before_its_batch_frees_its_slot_and_gets_no_inference():
    async def scenario():
        fast, _ = route(limit=1)
        request, protocol = exchange(fast, json.dumps({"instances": [[1.0] * WIDTH]}).encode())
        request.abandon()  # connection_lost before the batcher's turn
        await turns()
        return fast, protocol

    fast, protocol = run(scenario())
    assert protocol.written == [] and fast.handlers.state.admission.in_flight == 0
    assert fast.handlers.state.batcher.calls == 0


def test_a_request_past_its_deadline_is_dropped_before_inference_with_503():
    async def scenario():
        fast, _ = route(deadline_s=1e-9)
        _, protocol = exchange(fast, json.dumps({"instances": [[1.0] * WIDTH]}).encode())
        await turns()
        return fast, protocol

    fast, protocol = run(scenario())
    (status, body, headers, _), = protocol.written
    assert status == 503 and "deadline" in body.decode() and retry_after(headers) == 1
    assert fast.handlers.state.batcher.calls == 0


def test_a_failing_model_answers_500_and_the_batcher_keeps_serving():
    calls = []

    def flaky(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return softmax_rows(rows)

    async def scenario():
        fast, _ = route(predict=flaky)
        _, first = exchange(fast, json.dumps({"instances": [[1.0] * WIDTH]}).encode())
        await turns()
        _, second = exchange(fast, json.dumps({"instances": [[2.0] * WIDTH]}).encode())
        await turns()
        return first, second

    first, second = run(scenario())
    assert first.written[0][0] == 500 and "see the server log" in first.written[0][1].decode()
    assert second.written[0][0] == 200


def test_v2_infer_decodes_tensors_and_answers_in_the_protocol_shape():
    async def scenario():
        fast, recorded = route(kind=FastInfer)
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, WIDTH],
                                       "data": [1.0] * (2 * WIDTH)}]}).encode()
        _, ok = exchange(fast, body)
        _, bad = exchange(fast, body, [(b"inference-header-content-length", b"ten")])
        await turns()
        return ok, bad, recorded

    ok, bad, recorded = run(scenario())
    (status, body, _, content_type), = ok.written
    answer = json.loads(body)
    assert status == 200 and content_type == b"application/json" and answer["model_name"] == "m"
    assert {output["name"] for output in answer["outputs"]} >= {"probabilities"}
    (status, body, _, _), = bad.written
    assert status == 400 and "byte count" in json.loads(body)["error"]
    assert recorded == [("/v2", 400), ("/v2", 200)]


def parking(admission: Admission) -> None:
    """Admission as it is after a window whose refused connections came straight back (tests/kubeforge/serving/
    test_admission.py drives that through its windows): requests without a slot are parked for a while."""
    admission.shedding = "futile"
    admission._park_until = admission.clock() + 60


def test_while_refusing_is_futile_a_request_beyond_the_limit_waits_unanswered_and_is_served_in_the_next_slot():
    """A client that would come straight back from a 503 costs the worker nearly an answer per refusal; parked, it
    costs nothing until a slot frees, and its answer is the one it asked for."""
    async def scenario():
        fast, recorded = route(limit=1)
        admission = fast.handlers.state.admission
        parking(admission)
        body = json.dumps({"instances": [[1.0] * WIDTH]}).encode()
        holder, held = exchange(fast, body)
        parked, waiting = exchange(fast, json.dumps({"instances": [[2.0] * WIDTH]}).encode())
        gone, _ = exchange(fast, body)
        assert waiting.written == [] and len(admission.parked) == 2 and admission.in_flight == 1
        gone.abandon()  # its client went away while parked: skipped, its slot never taken
        await turns(6)  # the holder's batch is answered; its slot goes to the parked request, then to nobody
        return fast, held, waiting, recorded

    fast, held, waiting, recorded = run(scenario())
    served = fast.handlers.state
    assert [written[0] for written in held.written + waiting.written] == [200, 200]
    assert waiting.written[0][1] == fast.handlers.predict_answer(
        served.runtime, softmax_rows(np.full((1, WIDTH), 2.0, "f4")))
    assert served.batcher.calls == 2 and served.admission.in_flight == 0 and not served.admission.parked
    assert recorded == [("/predict", 200)] * 2


def test_a_parked_request_reads_the_rest_of_its_body_once_it_has_a_slot():
    """Parked requests are bounded only by connections: reading their bodies would hold up to max_payload_bytes each
    in the worker, so FastPathProtocol stops reading the connection of a parked request with a large body
    (tests/kubeforge/serving/test_service.py, over real sockets); its slot starts the reading again."""
    async def scenario():
        fast, _ = route(limit=1)
        parking(fast.handlers.state.admission)
        holder, _ = exchange(fast, json.dumps({"instances": [[1.0] * WIDTH]}).encode())
        parked, waiting = exchange(fast, None)
        assert parked.admitted is None and waiting.written == []
        waiting.flow.pause_reading()  # as the protocol does for a body past PARKED_BODY_READ_BYTES
        await turns(6)  # the holder is answered; the parked request gets its slot and reads on
        assert not waiting.flow.read_paused and parked.ticket is not None and waiting.written == []
        parked.body(json.dumps({"instances": [[2.0] * WIDTH]}).encode())
        parked.received()
        await turns(6)
        return waiting

    waiting = run(scenario())
    assert [written[0] for written in waiting.written] == [200]


def test_a_parked_request_whose_deadline_passes_gets_a_503_with_retry_after_and_is_remembered_as_refused():
    async def scenario():
        fast, _ = route(limit=1, deadline_s=0.01)
        admission = fast.handlers.state.admission
        parking(admission)
        holder, _ = exchange(fast, None)  # takes the slot, body still coming
        _, waiting = exchange(fast, json.dumps({"instances": [[2.0] * WIDTH]}).encode())
        await asyncio.sleep(0.02)
        holder.abandon()  # frees the slot: the parked request is past its deadline by now
        return fast, waiting

    fast, waiting = run(scenario())
    (status, body, headers, _), = waiting.written
    assert status == 503 and retry_after(headers) == 1 and "deadline" in json.loads(body)[0]["error"]
    assert waiting.refused_at > 0 and fast.handlers.state.batcher.calls == 0
    assert not waiting.flow.read_paused  # read on: the rest of the body is dropped, the connection kept
