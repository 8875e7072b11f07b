"""The real BentoML server on a loopback port, spoken to over HTTP."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from kubeforge.compression.artifact import load_predictor
from kubeforge.serving.admission import FUTILE_HOLD_S
from kubeforge.serving.fastpath import PARKED_BODY_READ_BYTES
from tests.kubeforge.serving.conftest import Server
from tests.prometheus_text import sample
from tests.waiting import eventually

pytestmark = [pytest.mark.server, pytest.mark.slow]


def predict(server, body, **kwargs):
    return httpx.post(server.url + "/predict", timeout=10, **({"json": body} if not kwargs else kwargs))


def test_predictions_equal_the_offline_model(server, served_model_dir, digits):
    rows = digits.X_test[:8]  # a batched request at the configured limit
    response = predict(server, {"instances": rows.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    offline = load_predictor(served_model_dir)(rows)
    assert [p["class_index"] for p in body["predictions"]] == offline.argmax(1).tolist()
    assert np.allclose([p["probabilities"] for p in body["predictions"]], offline, atol=1e-5)
    assert body["model"]["classes"] == digits.class_names


BAD = [
    ("malformed JSON", {"content": b'{"instances": [[1, 2', "headers": {"content-type": "application/json"}}, 400,
     None),
    ("wrong feature count", {"json": {"instances": [[0.0] * 3]}}, 400, "expected 64 features, got 3"),
    ("non-numeric", {"json": {"instances": [[0.0] * 63 + ["x"]]}}, 400, "'x' is not a number"),
    ("NaN", {"content": b'{"instances": [[' + b"0.0," * 63 + b'NaN]]}',
             "headers": {"content-type": "application/json"}}, 400, "not finite"),
    ("empty", {"json": {"instances": []}}, 400, "'instances' is empty"),
    ("too many", {"json": {"instances": [[0.0] * 64] * 9}}, 413, "too many instances: 9 > limit 8"),
    ("over size limit", {"json": {"instances": [[0.0] * 64] * 2, "pad": "x" * 70000}}, 413, "exceeds the limit"),
    ("over size limit, streamed without a length", {"content": iter([b'{"pad": "' + b"x" * 40000] * 2),
                                                    "headers": {"content-type": "application/json"}}, 413,
     "exceeds the limit of 65536 bytes"),
    ("not an object", {"json": [[0.0] * 64]}, 400, 'must be a JSON object {"instances"'),
    ("out of float32 range", {"content": b'{"instances": [[' + b"0," * 63 + b'1e39]]}'}, 400, "float32 range"),
]


@pytest.mark.parametrize("name, request_kwargs, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_4xx_and_the_server_keeps_serving(server, name, request_kwargs, status, message):
    response = httpx.post(server.url + "/predict", timeout=10, **request_kwargs)
    assert response.status_code == status, response.text
    if message:
        assert response.json()[0]["error"].count(message) == 1, response.text
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
    assert predict(server, {"instances": [[0.0] * 64]}).status_code == 200


def test_metrics_count_requests_and_admission(server):
    predict(server, {"instances": [[0.0] * 64]})
    expected = 'kubeforge_http_requests_total{route="/predict",status="200"}'
    eventually(lambda: expected in httpx.get(server.url + "/metrics", timeout=5).text, "the request counted")
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert 'kubeforge_http_requests_total{route="/predict",status="200"}' in metrics
    assert 'kubeforge_http_request_duration_seconds_bucket{le="0.0005",route="/predict"}' in metrics
    for name in ("kubeforge_admission_admitted_total", "kubeforge_admission_limit",
                 "kubeforge_admission_in_flight"):
        assert name + '{service="classifier"}' in metrics, name


def test_a_model_that_cannot_load_fails_liveness(tmp_path):
    broken = Server(tmp_path / "no-such-model", tmp_path)
    try:
        broken.wait("/livez", 503, timeout=60)
        assert httpx.get(broken.url + "/readyz", timeout=5).status_code == 503
    finally:
        broken.stop()


def test_openapi_document_describes_predict_exactly(server, digits):
    document = httpx.get(server.url + "/schema.json", timeout=5).json()
    assert document == httpx.get(server.url + "/docs.json", timeout=5).json()
    assert document["openapi"].startswith("3.")
    post = document["paths"]["/predict"]["post"]
    row = post["requestBody"]["content"]["application/json"]["schema"]["properties"]["instances"]["items"]
    assert row["oneOf"][0]["minItems"] == row["oneOf"][0]["maxItems"] == 64
    assert row["oneOf"][1]["required"] == digits.feature_names
    prediction = post["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["predictions"]
    assert prediction["items"]["properties"]["class_name"]["enum"] == digits.class_names
    assert post["responses"]["400"]["content"]["application/json"]["schema"]["items"]["required"] == ["error"]
    assert {"/v2/models/{model_name}/infer", "/livez", "/readyz", "/metrics"} <= set(document["paths"])


def test_not_ready_until_warm_up_ran(served_model_dir, tmp_path):
    slow = Server(served_model_dir, tmp_path, KUBEFORGE_SERVE_WARMUP_DELAY_S="3")
    try:
        seen = slow.wait("/readyz", 503, timeout=60)
        early = httpx.post(slow.url + "/predict", json={"instances": [[0.0] * 64]}, timeout=5)
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert "still loading" in early.json()[0]["error"]
        assert httpx.get(slow.url + "/livez", timeout=5).status_code == 200
        seen += slow.wait("/readyz", 200)
        assert seen[-1] == 200 and 503 in seen
    finally:
        slow.stop()


def test_a_two_worker_pod_is_not_ready_while_one_worker_still_loads(served_model_dir, tmp_path):
    """BentoML answers /readyz in whichever worker accepts the probe: the second worker finishes loading 8 s after
    the first (which takes ~3 s here), and no probe on a new connection may say 200 before it is done."""
    temp = tmp_path / "temp"
    temp.mkdir()
    pod = Server(served_model_dir, tmp_path, KUBEFORGE_SERVE_WORKERS="2", KUBEFORGE_SERVE_WARMUP_DELAY_S="0,8",
                 TMPDIR=str(temp))
    try:
        pod.wait("/readyz", 503, timeout=60)
        first_answer = time.monotonic()
        seen = pod.wait("/readyz", 200)
        assert time.monotonic() - first_answer >= 6, "ready before the slow worker had loaded"
        assert seen.count(503) >= 10  # ~0.2 s apart: probes reached both workers while the second loaded
        for _ in range(20):  # now every worker answers, whichever takes the connection
            assert httpx.get(pod.url + "/readyz", timeout=5).status_code == 200
            assert httpx.post(pod.url + "/predict", json={"instances": [[0.0] * 64]}, timeout=5).status_code == 200
        assert len(list(temp.glob("kubeforge-ready-*/*"))) == 2
    finally:
        pod.stop()
    assert not list(temp.glob("kubeforge-ready-*")), "the workers left their readiness marks behind"


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, served_model_dir, digits):
    rows = digits.X_test[:48]
    offline = load_predictor(served_model_dir)(rows).argmax(1).tolist()
    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: client.post(server.url + "/predict",
                                                      json={"instances": rows[i:i + 1 + i % 3].tolist()}),
                                range(len(rows) - 2)))
    for i, reply in enumerate(replies):
        assert reply.status_code == 200, reply.text
        assert [p["class_index"] for p in reply.json()["predictions"]] == offline[i:i + 1 + i % 3]
    # one request carries at most 3 rows: a call with more rows merged requests
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    buckets = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines() if line.startswith("kubeforge_inference_batch_rows_bucket")}
    assert buckets["+Inf"] > buckets["4.0"], metrics[-2000:]


def predict_head(body: bytes) -> bytes:
    """A raw POST /predict's request line and headers for ``body``, sent apart from it over a raw socket."""
    return (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> str:
    """One whole HTTP/1.1 response (headers and Content-Length body) from a raw socket."""
    answer = sock.recv(65536).decode()
    while "\r\n\r\n" not in answer or len(answer.split("\r\n\r\n", 1)[1]) < int(
            answer.lower().split("content-length: ", 1)[1].split("\r\n", 1)[0]):
        answer += sock.recv(65536).decode()
    return answer


def test_beyond_the_limit_a_request_is_shed_before_its_body_is_read(served_model_dir, tmp_path):
    limited = Server(served_model_dir, tmp_path, KUBEFORGE_SERVE_MAX_CONCURRENCY="1",
                     KUBEFORGE_SERVE_MIN_CONCURRENCY="1", KUBEFORGE_SERVE_LIMIT_MODE="fixed",
                     KUBEFORGE_SERVE_RETRY_AFTER_S="2")
    body = json.dumps({"instances": [[0.0] * 64]}).encode()
    head = predict_head(body)
    try:
        limited.wait("/readyz", 200)
        with socket.create_connection(("127.0.0.1", limited.port)) as holder, \
                socket.create_connection(("127.0.0.1", limited.port)) as refused:
            holder.sendall(head + body[:10])  # admitted: holds the only slot while its body trickles in
            eventually(lambda: limited.metric("kubeforge_admission_in_flight", service="classifier") == 1,
                       "the holder admitted")
            refused.sendall(head)  # headers only: the refusal must not wait for a body
            refused.settimeout(10)
            answer = read_answer(refused)  # the body may come in its own segment
            assert answer.startswith("HTTP/1.1 503"), answer
            assert "retry-after: 2" in answer.lower() and "concurrency limit" in answer
            assert httpx.get(limited.url + "/readyz", timeout=5).status_code == 200  # probes are not limited
            holder.sendall(body[10:])
            holder.settimeout(10)
            assert holder.recv(65536).decode().startswith("HTTP/1.1 200")
        assert httpx.post(limited.url + "/predict", content=body, timeout=10).status_code == 200
        shed = 'kubeforge_admission_shed_total{reason="concurrency_limit",service="classifier"} 1.0'
        eventually(lambda: shed in httpx.get(limited.url + "/metrics", timeout=5).text, "the refusal counted")
    finally:
        limited.stop()


def test_while_refused_clients_come_straight_back_a_request_without_a_slot_waits_for_one_instead(served_model_dir,
                                                                                                tmp_path):
    """Over real sockets (kubeforge.serving.admission's parking): a connection refused three times in a row, each
    time at once, is evidence that 503s do not send such clients away; its next request beyond the limit gets no 503
    but the next free slot, the rest of its large body read only then; one still parked at its deadline gets its 503
    when a slot frees, the rest of its body is drained and the connection serves its next request."""
    deadline_s = 2.0
    limited = Server(served_model_dir, tmp_path, KUBEFORGE_SERVE_MAX_CONCURRENCY="1",
                     KUBEFORGE_SERVE_MIN_CONCURRENCY="1", KUBEFORGE_SERVE_LIMIT_MODE="fixed",
                     KUBEFORGE_SERVE_RETRY_AFTER_S="2", KUBEFORGE_SERVE_MAX_LATENCY_MS=str(int(deadline_s * 1000)),
                     KUBEFORGE_SERVE_MAX_PAYLOAD_BYTES=str(1 << 20))
    # past PARKED_BODY_READ_BYTES: the parked request's connection is not read on until it has a slot
    body = (json.dumps({"instances": [[0.0] * 64]})[:-1] + " " * (PARKED_BODY_READ_BYTES + 1) + "}").encode()
    head = predict_head(body)
    request = head + body

    def metric(name: str) -> float:
        return limited.metric(name, service="classifier")

    try:
        limited.wait("/readyz", 200)
        with socket.create_connection(("127.0.0.1", limited.port)) as holder, \
                socket.create_connection(("127.0.0.1", limited.port)) as eager:
            for sock in (holder, eager):
                sock.settimeout(10)

            def refused_at_once_then_park() -> None:
                holder.sendall(request[:-10])  # holds the only slot while its body trickles in
                eventually(lambda: metric("kubeforge_admission_in_flight") == 1, "the holder admitted")
                for _ in range(3):  # refused, and back at once each time
                    eager.sendall(request)
                    assert read_answer(eager).startswith("HTTP/1.1 503")
                time.sleep(0.15)  # past the admission window (0.1 s) that the next completion closes
                holder.sendall(request[-10:])
                assert read_answer(holder).startswith("HTTP/1.1 200")  # its completion: refusing is futile now
                holder.sendall(request[:-10])  # takes the slot again
                eventually(lambda: metric("kubeforge_admission_in_flight") == 1, "the holder admitted again")
                eager.sendall(head)
                eventually(lambda: metric("kubeforge_admission_queue_length") == 1, "the request parked")
                eager.sendall(body)  # unread while parked: it waits in the socket's buffers

            refused_at_once_then_park()
            eager.settimeout(0.3)
            with pytest.raises(socket.timeout):
                eager.recv(65536)  # no 503: it waits
            eager.settimeout(10)
            holder.sendall(request[-10:])
            assert read_answer(holder).startswith("HTTP/1.1 200")
            assert read_answer(eager).startswith("HTTP/1.1 200")  # the freed slot went to it

            time.sleep(FUTILE_HOLD_S + 0.1)  # no new evidence: parking lapses, refusals resume
            refused_at_once_then_park()
            time.sleep(deadline_s + 0.1)
            holder.sendall(request[-10:])
            assert read_answer(holder).startswith("HTTP/1.1 200")
            late = read_answer(eager)
            assert late.startswith("HTTP/1.1 503") and "deadline" in late, late
            eager.sendall(request)
            assert read_answer(eager).startswith("HTTP/1.1 200")  # its late body was drained, not taken as a request

        def refusals() -> tuple[float, float]:  # by the limit, at the deadline: one scrape for both
            text = httpx.get(limited.url + "/metrics", timeout=5).text
            return tuple(sample(text, "kubeforge_admission_shed_total", service="classifier", reason=reason)
                         for reason in ("concurrency_limit", "deadline"))

        eventually(lambda: refusals() == (6.0, 1.0), "six refusals by the limit, one at the deadline, no more")
    finally:
        limited.stop()


def test_named_features_give_the_same_prediction(server, digits):
    row = digits.X_test[0]
    named = predict(server, {"instances": [dict(zip(digits.feature_names, row.tolist()))]})
    positional = predict(server, {"instances": [row.tolist()]})
    assert named.status_code == 200, named.text
    assert named.json()["predictions"] == positional.json()["predictions"]
