"""Standard clients against the real server: Triton's HTTP client (Open Inference Protocol v2), urllib and requests
with oversized bodies, and schemathesis fuzzing the OpenAPI document."""

import json
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from kubeforge.compression.artifact import load_predictor

pytestmark = [pytest.mark.server, pytest.mark.slow]
MODEL = "kubeforge-classifier"


@pytest.fixture(scope="module")
def triton(server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


def test_triton_client_sees_a_live_ready_server_and_the_model_metadata(triton, digits):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(MODEL)
    metadata = triton.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "class_index", "class_name"]
    assert not triton.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_triton_infer_gives_the_offline_model_probabilities_and_classes(triton, served_model_dir, digits, binary):
    import tritonclient.http as triton_http

    rows = digits.X_test[:5].astype(np.float32)
    tensor = triton_http.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [triton_http.InferRequestedOutput(name, binary_data=binary)
               for name in ("probabilities", "class_index", "class_name")]
    result = triton.infer(MODEL, [tensor], outputs=outputs, request_id="r-1")
    offline = load_predictor(served_model_dir)(rows)
    assert np.allclose(result.as_numpy("probabilities"), offline, atol=1e-5)
    assert result.as_numpy("class_index").tolist() == offline.argmax(1).tolist()
    names = [n.decode() if isinstance(n, bytes) else n for n in result.as_numpy("class_name").tolist()]
    assert names == [digits.class_names[i] for i in offline.argmax(1)]
    assert result.get_response()["id"] == "r-1"


def test_triton_infer_with_default_outputs_and_bad_requests_named(triton, server):
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    tensor = triton_http.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    assert triton.infer(MODEL, [tensor]).as_numpy("class_index").shape == (1,)
    wrong = triton_http.InferInput("input", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[rows, 64\]"):
        triton.infer(MODEL, [wrong])
    reply = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", timeout=10, json={"inputs": [
        {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 63 + ["x"]}]})
    assert reply.status_code == 400 and "64 numbers" in reply.json()["error"]
    unknown = httpx.post(f"{server.url}/v2/models/other/infer", timeout=10, json={"inputs": []})
    assert unknown.status_code == 404 and "unknown model 'other'" in unknown.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/{MODEL}/infer", timeout=10).status_code == 405


def test_v2_and_predict_agree(server, digits):
    rows = digits.X_test[:3]
    v2 = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", timeout=10, json={"inputs": [
        {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}).json()
    predict = httpx.post(f"{server.url}/predict", json={"instances": rows.tolist()}, timeout=10).json()
    by_name = {o["name"]: o for o in v2["outputs"]}
    assert by_name["class_index"]["data"] == [p["class_index"] for p in predict["predictions"]]
    assert np.allclose(np.reshape(by_name["probabilities"]["data"], (3, -1)),
                       [p["probabilities"] for p in predict["predictions"]], atol=1e-6)


BIG = b'{"instances": [[' + b"0.0," * 40_000 + b'0.0]]}'  # 160 KB, over the test server's 64 KiB limit


@pytest.mark.parametrize("path, error", [("/predict", lambda body: body[0]["error"]),
                                         (f"/v2/models/{MODEL}/infer", lambda body: body["error"])])
def test_an_oversized_body_gets_413_from_clients_that_send_it_all_before_reading(server, path, error):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(server.url + path, data=BIG,
                                                      headers={"content-type": "application/json"}), timeout=10)
    assert refused.value.code == 413
    assert "exceeds the limit of 65536 bytes" in error(json.loads(refused.value.read()))
    reply = requests.post(server.url + path, data=BIG, headers={"content-type": "application/json"}, timeout=10)
    assert reply.status_code == 413 and "exceeds the limit" in error(reply.json())
    chunked = requests.post(server.url + path, data=iter([BIG[:50_000], BIG[50_000:]]), timeout=10)
    assert chunked.status_code == 413  # no Content-Length: refused once the limit is crossed, still not a reset


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_openapi_document_holds_under_fuzzing(server, mode):
    """No 5xx; every status, header, content type and body as documented; schema-invalid input gets a 4xx.

    The schema is loaded from the running server (schemathesis' pytest fixture loader does not run under pytest 9),
    and each operation's cases come from its hypothesis strategy.
    """
    from hypothesis import given
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_headers_conformance, response_schema_conformance,
                                                   status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance, negative_data_rejection]
    schema = schemathesis.openapi.from_url(server.url + "/schema.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/v2/models/{model_name}/infer"}
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    for operation in operations:
        if mode == "negative" and operation.method.upper() != "POST":
            continue  # GET operations have no body; a bad path parameter is covered by the positive run's 404s

        @given(case=operation.as_strategy(generation_mode=generation))
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(checks=checks, timeout=10)

        check()
