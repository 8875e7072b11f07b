"""/predict and v2 infer below ASGI (kubeforge.serving.fastpath): the ASGI path's answers, over real sockets."""

import json
import socket
import time

import httpx
import pytest

from tests.kubeforge.serving.conftest import Server
from tests.waiting import eventually

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def paths(served_onnx_dir, tmp_path_factory):
    """The same model served twice: with the fast path (the default) and with it turned off."""
    servers = {"fast": Server(served_onnx_dir, tmp_path_factory.mktemp("fast")),
               "asgi": Server(served_onnx_dir, tmp_path_factory.mktemp("asgi"), KUBEFORGE_SERVE_FAST_PATH="false")}
    try:
        for running in servers.values():
            running.wait("/readyz", 200)
        yield servers
    finally:
        for running in servers.values():
            running.stop()


def fast_path_count(server: Server) -> float:
    """Requests the fast path answered, over its routes (/predict and /v2)."""
    time.sleep(0.4)  # meters are published every 0.25 s
    return sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(server.url + "/metrics", timeout=5).text.splitlines()
               if line.startswith("kubeforge_fast_path_requests_total{"))


def bodies(digits) -> list[bytes]:
    row = digits.X_test[0].tolist()
    named = dict(zip(digits.feature_names, row, strict=True))
    return [json.dumps({"instances": [row]}).encode(),
            json.dumps({"instances": digits.X_test[1:4].tolist()}).encode(),
            json.dumps({"instances": [named]}).encode(),
            b'{"instances": [',  # malformed
            b'{"instances": [[NaN' + b", 0.0" * 63 + b"]]}",  # a literal the stdlib reads, orjson refuses
            b'{"instances": [[1' + b"0" * 400 + b", 0.0" * 63 + b"]]}",  # an integer beyond any float
            json.dumps({"instances": [row[:3]]}).encode(),
            json.dumps({"instances": [[True] + row[1:]]}).encode(),
            json.dumps({"instances": [["1.0"] + row[1:]]}).encode(),
            json.dumps({"instances": [[3e38] * 64]}).encode(),  # finite in, overflowing out
            json.dumps({"instances": []}).encode(),
            json.dumps({"instances": [row] * 9}).encode(),  # over the test server's 8 rows
            json.dumps([row]).encode(),
            "{\"instances\": [[\u00e9]]}".encode()]


MODEL = "kubeforge-classifier"
INFER = f"/v2/models/{MODEL}/infer"


def v2_requests(digits) -> list[tuple[str, bytes, dict]]:
    """(path, body, headers) of v2 infer requests: JSON and binary tensors in and out, and bad ones."""
    rows = digits.X_test[:2].astype("float32")

    def tensor(**extra) -> dict:
        return {"name": "input", "datatype": "FP32", "shape": [2, 64], **extra}

    binary_head = json.dumps({"inputs": [tensor(parameters={"binary_data_size": rows.nbytes})],
                              "parameters": {"binary_data_output": True}}).encode()
    plain = json.dumps({"inputs": [tensor(data=rows.ravel().tolist())], "id": "r-1"}).encode()
    return [(INFER, plain, {}),
            (f"/v2/models/{MODEL}/versions/1/infer", plain, {}),
            (INFER, binary_head + rows.tobytes(), {"inference-header-content-length": str(len(binary_head))}),
            (INFER, json.dumps({"inputs": [tensor(data=rows.ravel().tolist())], "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode(), {}),
            (INFER, json.dumps({"inputs": [tensor(shape=[2, 3], data=[0.0] * 6)]}).encode(), {}),
            (INFER, json.dumps({"inputs": [tensor(datatype="INT64", data=[0] * 128)]}).encode(), {}),
            (INFER, plain, {"inference-header-content-length": "ten"}),
            (INFER, b"{", {})]


def test_the_fast_path_answers_exactly_as_the_asgi_path(paths, digits):
    before = fast_path_count(paths["fast"])
    sent = [("/predict", body, {}) for body in bodies(digits)] + v2_requests(digits)
    answers = {}
    for name, server in paths.items():
        with httpx.Client(timeout=10) as client:
            answers[name] = [client.post(server.url + path, content=body,
                                         headers={"content-type": "application/json", **headers})
                             for path, body, headers in sent]
    for fast, asgi in zip(answers["fast"], answers["asgi"], strict=True):
        assert (fast.status_code, fast.content) == (asgi.status_code, asgi.content)
        assert fast.headers["content-type"] == asgi.headers["content-type"]
        assert fast.headers.get("inference-header-content-length") == asgi.headers.get(
            "inference-header-content-length")
        assert "date" in fast.headers
    statuses = [reply.status_code for reply in answers["fast"]]
    predict, v2 = statuses[:len(bodies(digits))], statuses[len(bodies(digits)):]
    assert predict[:3] == [200, 200, 200] and set(predict[3:]) <= {400, 413}, predict
    assert v2 == [200] * 4 + [400] * 4, v2
    assert "not finite" in answers["fast"][9].json()[0]["error"]
    assert answers["fast"][len(predict) + 2].headers["content-type"] == "application/octet-stream"
    eventually(lambda: fast_path_count(paths["fast"]) - before == len(statuses), "every request counted")
    assert fast_path_count(paths["asgi"]) == 0


def raw_request(body: bytes, *headers: str) -> bytes:
    lines = ["POST /predict HTTP/1.1", "Host: x", "Content-Type: application/json", *headers]
    if not any(h.lower().startswith("transfer-encoding") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_responses(sock: socket.socket, count: int) -> list[tuple[str, dict, bytes]]:
    """``count`` HTTP responses (status line, headers, body) read off one connection."""
    sock.settimeout(10)
    data, responses = b"", []
    while len(responses) < count:
        if b"\r\n\r\n" in data:
            head, rest = data.split(b"\r\n\r\n", 1)
            status, *fields = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
            length = int(headers["content-length"])
            if len(rest) >= length:
                responses.append((status, headers, rest[:length]))
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(responses)} responses"
        data += chunk
    return responses


def test_pipelined_requests_are_answered_in_order_on_one_connection(paths, digits):
    one, three = json.dumps({"instances": [digits.X_test[0].tolist()]}).encode(), \
        json.dumps({"instances": digits.X_test[1:4].tolist()}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(one), one)
    with socket.create_connection(("127.0.0.1", paths["fast"].port)) as sock:
        # fast, fast behind a pending one (ASGI), chunked (ASGI), malformed (fast)
        sock.sendall(raw_request(one) + raw_request(three) + raw_request(chunked, "Transfer-Encoding: chunked")
                     + raw_request(b"{"))
        replies = read_responses(sock, 4)
    assert [status.split()[1] for status, _, _ in replies] == ["200", "200", "200", "400"]
    assert [len(json.loads(body)["predictions"]) for _, _, body in replies[:3]] == [1, 3, 1]


def test_connection_close_and_http_1_0_close_after_the_answer(paths, digits):
    body = json.dumps({"instances": [digits.X_test[0].tolist()]}).encode()
    with socket.create_connection(("127.0.0.1", paths["fast"].port)) as sock:
        sock.sendall(raw_request(body, "Connection: close"))
        (status, headers, _), = read_responses(sock, 1)
        assert status.startswith("HTTP/1.1 200") and headers["connection"] == "close"
        assert sock.recv(10) == b""
    with socket.create_connection(("127.0.0.1", paths["fast"].port)) as sock:
        sock.sendall(raw_request(body).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        (status, _, reply), = read_responses(sock, 1)
        assert status.split()[1] == "200" and json.loads(reply)["predictions"]


def test_a_client_gone_before_its_answer_gives_its_slot_back(served_onnx_dir, tmp_path, digits):
    limited = Server(served_onnx_dir, tmp_path, KUBEFORGE_SERVE_MAX_CONCURRENCY="1",
                     KUBEFORGE_SERVE_MIN_CONCURRENCY="1", KUBEFORGE_SERVE_LIMIT_MODE="fixed")
    body = json.dumps({"instances": [digits.X_test[0].tolist()]}).encode()
    def in_flight() -> float:
        return limited.metric("kubeforge_admission_in_flight", service="classifier")

    try:
        limited.wait("/readyz", 200)
        for _ in range(3):  # each holds the only slot, then goes away mid-body
            with socket.create_connection(("127.0.0.1", limited.port)) as sock:
                sock.sendall(raw_request(body)[:-10])
                eventually(lambda: in_flight() == 1, "the request admitted")
            eventually(lambda: in_flight() == 0, "its slot given back")
        reply = httpx.post(limited.url + "/predict", content=body, timeout=10)
        assert reply.status_code == 200, reply.text
    finally:
        limited.stop()
