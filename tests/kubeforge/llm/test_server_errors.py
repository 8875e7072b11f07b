"""Bad input gets a 4xx in the OpenAI error shape, names its problem, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import httpx
import openai
import pytest

from tests.waiting import eventually

pytestmark = [pytest.mark.server, pytest.mark.slow]
PROMPT = "The with statement"
LONG_TOKENS = 2000  # with the small server's 2048-token context
GOOD = {"model": "base", "prompt": PROMPT, "max_tokens": 2}
CHAT = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def completion(**changes):
    return {**GOOD, **changes}


def chat(**changes):
    return {**CHAT, **changes}


# (name, path, body (dict or raw bytes), status, param, text the message contains)
BAD = [
    ("prompt longer than the context", "/v1/completions", completion(prompt=[5] * 200), 400, "prompt",
     "maximum context length is 96"),
    ("prompt plus max_tokens over the context", "/v1/completions", completion(prompt=[5] * 60, max_tokens=40), 400,
     "max_tokens", "you requested 100 tokens"),
    ("max_tokens 0", "/v1/completions", completion(max_tokens=0), 400, "max_tokens", "at least 1"),
    ("max_tokens negative", "/v1/completions", completion(max_tokens=-3), 400, "max_tokens", "at least 1"),
    ("max_tokens above the bound", "/v1/completions", completion(max_tokens=65), 400, "max_tokens",
     "KUBEFORGE_LLM_MAX_TOKENS_LIMIT"),
    ("max_completion_tokens 0", "/v1/chat/completions", chat(max_completion_tokens=0), 400, "max_completion_tokens",
     "at least 1"),
    ("temperature above 2", "/v1/completions", completion(temperature=2.5), 400, "temperature", "less than or equal"),
    ("temperature negative", "/v1/completions", completion(temperature=-0.1), 400, "temperature", "greater than"),
    ("top_p 0", "/v1/completions", completion(top_p=0), 400, "top_p", "greater than 0"),
    ("top_p above 1", "/v1/chat/completions", chat(top_p=1.5), 400, "top_p", "less than or equal to 1"),
    ("unknown model", "/v1/completions", completion(model="gpt-17"), 404, "model", "'gpt-17' does not exist"),
    ("unknown model in chat", "/v1/chat/completions", chat(model="gpt-17"), 404, "model", "does not exist"),
    ("malformed JSON", "/v1/completions", b'{"model": "base", "prompt": "x', 400, None, "malformed JSON"),
    ("not an object", "/v1/completions", b'["base"]', 400, None, "must be a JSON object"),
    ("max_tokens as a string", "/v1/completions", completion(max_tokens="10"), 400, "max_tokens", "valid integer"),
    ("temperature as a string", "/v1/completions", completion(temperature="hot"), 400, "temperature", "valid number"),
    ("stream as a string", "/v1/completions", completion(stream="yes"), 400, "stream", "valid boolean"),
    ("prompt as a number", "/v1/completions", completion(prompt=5), 400, "prompt", "valid string"),
    ("model missing", "/v1/completions", {"prompt": PROMPT}, 400, "model", "Field required"),
    ("n above the bound", "/v1/completions", completion(n=5), 400, "n", "KUBEFORGE_LLM_MAX_N"),
    ("n 0", "/v1/chat/completions", chat(n=0), 400, "n", "greater than or equal to 1"),
    ("empty messages", "/v1/chat/completions", chat(messages=[]), 400, "messages", "at least 1 item"),
    ("unknown role", "/v1/chat/completions", chat(messages=[{"role": "wizard", "content": "x"}]), 400,
     "messages[0].role", "'system', 'developer', 'user' or 'assistant'"),
    ("tool role", "/v1/chat/completions", chat(messages=[{"role": "tool", "content": "x"}]), 400,
     "messages[0].role", "Input should be"),
    ("message without content", "/v1/chat/completions", chat(messages=[{"role": "user"}]), 400,
     "messages[0].content", "Field required"),
    ("empty prompt list", "/v1/completions", completion(prompt=[]), 400, "prompt", "the list is empty"),
    ("token id outside the vocabulary", "/v1/completions", completion(prompt=[10**6]), 400, "prompt",
     "outside the vocabulary"),
    ("too many stop strings", "/v1/completions", completion(stop=["a", "b", "c", "d", "e"]), 400, "stop",
     "at most 4"),
    ("an empty stop string", "/v1/completions", completion(stop=[""]), 400, "stop", "may not be empty"),
    ("stream_options without stream", "/v1/completions", completion(stream_options={"include_usage": True}), 400,
     "stream_options", "only allowed with stream"),
    ("logprobs", "/v1/completions", completion(logprobs=2), 400, "logprobs", "not supported"),
    ("tools", "/v1/chat/completions", chat(tools=[{"type": "function"}]), 400, "tools", "not supported"),
    ("a seed beyond 64 bits", "/v1/completions", completion(seed=2**70), 400, "seed", "less than or equal"),
    ("an adapter name with a slash first", "/v1/load_lora_adapter", {"lora_name": "/x", "lora_path": "/tmp"}, 400,
     "lora_name", "should match pattern"),
    ("an adapter directory that does not exist", "/v1/load_lora_adapter",
     {"lora_name": "ghost", "lora_path": "/no/such/adapter"}, 400, "lora_path", "no such directory"),
    ("unloading an unknown adapter", "/v1/unload_lora_adapter", {"lora_name": "ghost"}, 404, "model",
     "does not exist"),
]


def send(server, path, body, **kwargs):
    content = json.dumps(body).encode() if isinstance(body, (dict, list)) else body  # bytes, or chunks
    return httpx.post(server.url + path, content=content, timeout=30,
                      headers={"content-type": "application/json"}, **kwargs)


def assert_error_shape(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def assert_still_serving(server):
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
    assert send(server, "/v1/completions", GOOD).status_code == 200


@pytest.mark.parametrize("name, path, body, status, param, text", BAD, ids=[case[0] for case in BAD])
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(llm_server, name, path, body, status, param,
                                                                       text):
    error = assert_error_shape(send(llm_server, path, body), status)
    assert error["param"] == param
    assert text in error["message"], error["message"]
    assert error["type"] in ("invalid_request_error", "not_found_error")
    assert_still_serving(llm_server)


def test_a_method_other_than_post_gets_405(llm_server):
    error = assert_error_shape(httpx.get(llm_server.url + "/v1/completions", timeout=10), 405)
    assert error["code"] == "method_not_allowed"
    assert_still_serving(llm_server)


def test_the_openai_client_raises_its_own_error_types(llm_server):
    api = openai.OpenAI(base_url=llm_server.url + "/v1", api_key="unused", max_retries=0,
                        _strict_response_validation=True)
    with pytest.raises(openai.NotFoundError) as missing:
        api.completions.create(model="gpt-17", prompt=PROMPT)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="base", messages=[], max_tokens=2)
    assert bad.value.param == "messages"


@pytest.mark.parametrize("how", ["with a content-length", "chunked, without a length"])
def test_a_body_over_the_size_limit_gets_413(llm_server, how):
    oversized = json.dumps({**GOOD, "pad": "x" * 100_000}).encode()
    if how == "with a content-length":
        response = send(llm_server, "/v1/completions", oversized)
    else:
        response = send(llm_server, "/v1/completions", iter([oversized[:50_000], oversized[50_000:]]))
    error = assert_error_shape(response, 413)
    assert "65536 bytes" in error["message"] and error["code"] == "payload_too_large"
    assert_still_serving(llm_server)


def test_a_client_that_sends_the_whole_body_first_sees_the_413_not_a_reset(llm_server):
    """urllib writes the entire body (with Connection: close) before it reads any answer."""
    oversized = json.dumps({**GOOD, "pad": "x" * 3_000_000}).encode()
    for _ in range(3):
        request = urllib.request.Request(llm_server.url + "/v1/completions", data=oversized,
                                         headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 413
        assert json.loads(refused.value.read())["error"]["code"] == "payload_too_large"
    assert_still_serving(llm_server)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """One row in the batch, one queued sequence, three requests in flight, no admin API; a deeper model with a long
    context, so one request runs for seconds."""
    from tests.kubeforge.llm.conftest import build_tiny_lm
    from tests.kubeforge.llm.server import LLMServer

    root = tmp_path_factory.mktemp("small-llm-server")
    model = build_tiny_lm(root / "model", context=2048, layers=12)
    server = LLMServer(root, KUBEFORGE_LLM_MODEL=str(model),
                       KUBEFORGE_LLM_THREADS="1", KUBEFORGE_LLM_MAX_RUNNING="1", KUBEFORGE_LLM_MAX_WAITING="1",
                       KUBEFORGE_LLM_MAX_CONCURRENCY="3", KUBEFORGE_LLM_RETRY_AFTER_S="2",
                       KUBEFORGE_LLM_MAX_TOKENS_LIMIT=str(LONG_TOKENS))
    try:
        server.wait("/readyz", 200)
        yield server
    finally:
        server.stop()


def test_the_admin_api_is_off_unless_enabled(small_server):
    error = assert_error_shape(send(small_server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/x"}),
                               403)
    assert "KUBEFORGE_LLM_ADMIN_API" in error["message"]


async def until(check, what: str) -> None:
    await asyncio.to_thread(eventually, check, what)


def test_beyond_the_queue_a_request_gets_503_queue_full_with_retry_after(small_server):
    long = completion(max_tokens=LONG_TOKENS, ignore_eos=True, stream=True)  # seconds of decoding on a fast host

    async def main():
        async with httpx.AsyncClient(base_url=small_server.url, timeout=120) as http:
            def start():  # the response once its headers are in; closing it leaves, which aborts the completion
                request = http.build_request("POST", "/v1/completions", json=long)
                return asyncio.create_task(http.send(request, stream=True))

            running = await start()
            await until(lambda: small_server.metric("kubeforge:num_requests_running") == 1, "the batch's one row taken")
            queued = start()
            await until(lambda: small_server.metric("kubeforge:num_requests_waiting") == 1, "the one queued sequence")
            queue_full = await http.post("/v1/completions", json=GOOD)
            await running.aclose()
            queued = await queued
            await queued.aclose()
            return queue_full, running, queued

    queue_full, *served = asyncio.run(main())
    assert assert_error_shape(queue_full, 503)["code"] == "queue_full"
    assert queue_full.headers["retry-after"] == "2"
    assert [r.status_code for r in served] == [200, 200]
    eventually(lambda: small_server.metric("kubeforge_admission_shed_total", service="llm", reason="queue_full") >= 1,
               "the refusal counted")
    assert_still_serving(small_server)


def test_beyond_the_concurrency_limit_a_request_gets_503_before_its_body_is_read(small_server):
    """Three uploads that never finish their bodies hold the three in-flight slots for as long as the test wants."""
    async def main():
        release = asyncio.Event()

        async def slow_body():
            yield json.dumps(GOOD).encode()[:10]
            await release.wait()

        async with httpx.AsyncClient(base_url=small_server.url, timeout=60) as http:
            uploads = []
            for held in range(1, 4):  # one at a time, each admitted before the next, so none is the one refused
                uploads.append(asyncio.create_task(http.post("/v1/completions", content=slow_body())))
                await until(lambda: small_server.metric("kubeforge_admission_in_flight", service="llm") == held,
                            f"{held} uploads admitted")
            over_limit = await http.post("/v1/completions", json=GOOD)
            release.set()
            for upload in uploads:
                upload.cancel()
            await asyncio.gather(*uploads, return_exceptions=True)
            return over_limit

    over_limit = asyncio.run(main())
    assert assert_error_shape(over_limit, 503)["code"] == "concurrency_limit"
    assert over_limit.headers["retry-after"] == "2"
    eventually(lambda: small_server.metric("kubeforge_admission_shed_total", service="llm",
                                           reason="concurrency_limit") >= 1, "the refusal counted")
    assert_still_serving(small_server)  # the uploads that left gave their slots back


def test_a_model_that_cannot_load_fails_liveness(tmp_path):
    from tests.kubeforge.llm.server import LLMServer

    server = LLMServer(tmp_path, KUBEFORGE_LLM_MODEL=str(tmp_path / "no-such-model"))
    try:
        server.wait("/livez", 503, timeout=120)
        assert httpx.get(server.url + "/readyz", timeout=5).status_code == 503
        error = assert_error_shape(send(server, "/v1/completions", GOOD), 503)
        assert "no such directory" in error["message"]
    finally:
        server.stop()
