"""The real BentoML server on a loopback port, spoken to over HTTP."""

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from kubeforge.compression.artifact import load_predictor

pytestmark = [pytest.mark.server, pytest.mark.slow]
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, model_dir: Path, tmp: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bentoml = Path(sys.executable).parent / "bentoml"
        self.log = open(tmp / f"server-{self.port}.log", "w")
        self.process = subprocess.Popen(
            [str(bentoml), "serve", "kubeforge.serving.service:KubeforgeClassifier", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env={**os.environ, "KUBEFORGE_MODEL_DIR": str(model_dir), "BENTOML_HOME": str(tmp / "bentoml"),
                 "KUBEFORGE_SERVE_MAX_INSTANCES": "8", "KUBEFORGE_SERVE_MAX_PAYLOAD_BYTES": "65536", **env},
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)

    def wait(self, path: str, status: int, timeout: float = STARTUP_TIMEOUT_S) -> list[int]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(self.log.name).read_text()[-3000:]
            try:
                code = httpx.get(self.url + path, timeout=2).status_code
                seen.append(code)
                if code == status:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} never returned {status}; seen {sorted(set(seen))}\n"
                             + Path(self.log.name).read_text()[-3000:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(served_model_dir, tmp_path_factory):
    running = Server(served_model_dir, tmp_path_factory.mktemp("server"))
    try:
        running.wait("/readyz", 200)
        yield running
    finally:
        running.stop()


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


def test_metrics_count_requests(server):
    predict(server, {"instances": [[0.0] * 64]})
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert "bentoml_service_request_total" in metrics and 'endpoint="/predict"' in metrics


def test_a_model_that_cannot_load_fails_liveness(tmp_path):
    broken = Server(tmp_path / "no-such-model", tmp_path)
    try:
        broken.wait("/livez", 503, timeout=60)
        assert httpx.get(broken.url + "/readyz", timeout=5).status_code == 503
    finally:
        broken.stop()


def test_openapi_document_is_served(server):
    document = httpx.get(server.url + "/docs.json", timeout=5).json()
    assert document["openapi"].startswith("3.")
    assert "/predict" in document["paths"] and "post" in document["paths"]["/predict"]
    assert "/livez" in document["paths"] and "/readyz" in document["paths"]


def test_not_ready_until_warm_up_ran(served_model_dir, tmp_path):
    slow = Server(served_model_dir, tmp_path, KUBEFORGE_SERVE_WARMUP_DELAY_S="3")
    try:
        seen = slow.wait("/readyz", 503, timeout=60)
        early = httpx.post(slow.url + "/predict", json={"instances": [[0.0] * 64]}, timeout=5)
        assert early.status_code == 503  # BentoML masks 5xx bodies; the reason is in the server log
        assert httpx.get(slow.url + "/livez", timeout=5).status_code == 200
        seen += slow.wait("/readyz", 200)
        assert seen[-1] == 200 and 503 in seen
    finally:
        slow.stop()


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


def test_requests_beyond_max_concurrency_get_503(served_model_dir, tmp_path):
    limited = Server(served_model_dir, tmp_path, KUBEFORGE_SERVE_MAX_CONCURRENCY="1", KUBEFORGE_SERVE_WORKERS="1")
    body = json.dumps({"instances": [[0.0] * 64]}).encode()

    def slow_upload():  # holds the only slot while its body trickles in
        yield body[:10]
        time.sleep(2)
        yield body[10:]

    try:
        limited.wait("/readyz", 200)
        with ThreadPoolExecutor(1) as pool:
            holder = pool.submit(httpx.post, limited.url + "/predict", content=slow_upload(),
                                 headers={"content-type": "application/json"}, timeout=20)
            time.sleep(0.8)
            refused = httpx.post(limited.url + "/predict", content=body, timeout=10)
            assert refused.status_code == 503, refused.text
            assert "max_concurrency" in refused.json()[0]["error"]
            assert httpx.get(limited.url + "/readyz", timeout=5).status_code == 200  # probes are not limited
            assert holder.result().status_code == 200
        assert httpx.post(limited.url + "/predict", content=body, timeout=10).status_code == 200
    finally:
        limited.stop()


def test_named_features_give_the_same_prediction(server, digits):
    row = digits.X_test[0]
    named = predict(server, {"instances": [dict(zip(digits.feature_names, row.tolist()))]})
    positional = predict(server, {"instances": [row.tolist()]})
    assert named.status_code == 200, named.text
    assert named.json()["predictions"] == positional.json()["predictions"]
