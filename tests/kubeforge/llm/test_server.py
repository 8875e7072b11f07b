"""The real service on a loopback port, spoken to with the official openai client (sync and async, strict response
validation) and raw HTTP: answers equal transformers' offline greedy output, streams equal answers, two adapters in
one batch each get their own output, a disconnect frees the slot, metrics move, the OpenAPI document describes what
is sent."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import jsonschema
import openai
import pytest

from tests.kubeforge.llm.helpers import offline_greedy

pytestmark = [pytest.mark.server, pytest.mark.slow]
PROMPT = "Names refer to objects. Names are introduced by"


@pytest.fixture
def server(llm_server):
    return llm_server


@pytest.fixture
def tokenizer(llm_tokenizer):
    return llm_tokenizer


@pytest.fixture
def watched(watched_adapters):
    return watched_adapters


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30,
                         _strict_response_validation=True)


def async_client(server, strict: bool = True) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30,
                              _strict_response_validation=strict)


def post(server, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json"},
                      timeout=30, **kwargs)


def test_models_lists_the_base_and_every_adapter(server):
    models = client(server).models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == "base" and {"alpha", "beta"} <= set(ids)
    assert {m.id: m.model_extra["parent"] for m in models.data}["alpha"] == "base"


def test_completion_equals_offline_greedy_token_for_token(server, llm_base_dir, tokenizer):
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    expected = offline_greedy(llm_base_dir, prompt_ids, 12)
    answer = client(server).completions.create(model="base", prompt=PROMPT, max_tokens=12, temperature=0)
    assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert answer.usage.prompt_tokens == len(prompt_ids) and answer.usage.completion_tokens == len(expected)
    raw = post(server, "/v1/completions", {"model": "base", "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                                           "return_token_ids": True}).json()
    assert raw["choices"][0]["token_ids"] == expected


def test_chat_renders_the_chat_template_and_equals_offline_greedy(server, llm_base_dir, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a name?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = offline_greedy(llm_base_dir, tokenizer(text, add_special_tokens=False)["input_ids"], 10)
    answer = client(server).chat.completions.create(model="base", messages=messages, max_tokens=10, temperature=0)
    assert answer.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert answer.choices[0].message.role == "assistant"


def test_streams_concatenate_to_the_answer_and_end_with_usage(server):
    async def main():
        api = async_client(server)
        whole = await api.completions.create(model="alpha", prompt=PROMPT, max_tokens=20, temperature=0)
        # The client types a legacy completion chunk with a non-null finish_reason, yet OpenAI (and vLLM, and this
        # server) send null until a choice ends: strict validation would refuse OpenAI's own stream, so this one
        # stream is read without it (the OpenAPI test validates those chunks against the documented schema).
        chunks = [c async for c in await async_client(server, strict=False).completions.create(
            model="alpha", prompt=PROMPT, max_tokens=20, temperature=0, stream=True,
            stream_options={"include_usage": True})]
        chat = dict(model="beta", messages=[{"role": "user", "content": "hello"}], max_tokens=15, temperature=0)
        chat_whole = await api.chat.completions.create(**chat)
        chat_chunks = [c async for c in await api.chat.completions.create(**chat, stream=True,
                                                                          stream_options={"include_usage": True})]
        return whole, chunks, chat_whole, chat_chunks

    whole, chunks, chat_whole, chat_chunks = asyncio.run(main())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    content = "".join(c.choices[0].delta.content or "" for c in chat_chunks if c.choices)
    assert content == chat_whole.choices[0].message.content
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    assert chat_chunks[-1].usage == chat_whole.usage


def test_the_raw_stream_is_server_sent_events_ending_with_done(server):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"model": "base", "prompt": PROMPT, "max_tokens": 5, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_two_adapters_in_one_batch_each_match_their_offline_output(server, llm_base_dir, llm_adapters, tokenizer):
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    expected = {"alpha": offline_greedy(llm_base_dir, prompt_ids, 24, llm_adapters["alpha"]),
                "beta": offline_greedy(llm_base_dir, prompt_ids, 24, llm_adapters["beta"]),
                "base": offline_greedy(llm_base_dir, prompt_ids, 24)}
    steps = server.metric("kubeforge:batch_rows_count")
    single = server.metric("kubeforge:batch_rows_bucket", le="1.0")

    async def main():
        api = async_client(server)
        names = ["alpha", "beta", "base"] * 2
        return names, await asyncio.gather(*(api.completions.create(model=name, prompt=PROMPT, max_tokens=24,
                                                                    temperature=0,
                                                                    extra_body={"return_token_ids": True})
                                             for name in names))

    names, answers = asyncio.run(main())
    for name, answer in zip(names, answers, strict=True):
        assert answer.choices[0].model_extra["token_ids"] == expected[name], name
        assert answer.choices[0].text == tokenizer.decode(expected[name], skip_special_tokens=True)
    assert len({tuple(tokens) for tokens in expected.values()}) == 3
    decode_steps = server.metric("kubeforge:batch_rows_count") - steps
    alone = server.metric("kubeforge:batch_rows_bucket", le="1.0") - single
    assert alone < decode_steps  # the requests shared decode steps


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    aborted = server.metric("kubeforge:request_success_total", finished_reason="abort", model_name="base")
    body = {"model": "base", "prompt": PROMPT, "max_tokens": 60, "stream": True, "ignore_eos": True, "n": 2}
    with httpx.Client(timeout=30) as http, http.stream("POST", server.url + "/v1/completions", json=body) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        # (the running gauge is published every 0.25 s, so it may not show this request yet; the abort count
        # below proves the generation was cut short rather than finished)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.metric("kubeforge:num_requests_running"):
        time.sleep(0.05)
    assert server.metric("kubeforge:num_requests_running") == 0
    assert server.metric("kubeforge:request_success_total", finished_reason="abort", model_name="base") == aborted + 1
    assert post(server, "/v1/completions", {"model": "base", "prompt": "x", "max_tokens": 2}).status_code == 200


def test_metrics_move_with_each_request(server):
    labels = {"model_name": "beta"}
    before = {name: server.metric(name, **labels) for name in (
        "kubeforge:prompt_tokens_total", "kubeforge:generation_tokens_total",
        "kubeforge:time_to_first_token_seconds_count", "kubeforge:inter_token_latency_seconds_count",
        "kubeforge:e2e_request_latency_seconds_count")}
    answer = client(server).completions.create(model="beta", prompt=PROMPT, max_tokens=9, temperature=0,
                                               extra_body={"ignore_eos": True})
    after = {name: server.metric(name, **labels) for name in before}
    assert after["kubeforge:prompt_tokens_total"] - before["kubeforge:prompt_tokens_total"] == \
        answer.usage.prompt_tokens
    assert after["kubeforge:generation_tokens_total"] - before["kubeforge:generation_tokens_total"] == 9
    assert after["kubeforge:time_to_first_token_seconds_count"] - \
        before["kubeforge:time_to_first_token_seconds_count"] == 1
    assert after["kubeforge:inter_token_latency_seconds_count"] - \
        before["kubeforge:inter_token_latency_seconds_count"] == 8
    assert after["kubeforge:e2e_request_latency_seconds_count"] - \
        before["kubeforge:e2e_request_latency_seconds_count"] == 1
    assert server.metric("kubeforge:num_requests_waiting") == 0


def test_adapters_are_added_and_removed_without_a_restart(server, llm_base_dir, llm_adapters, watched, tokenizer):
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    loaded = post(server, "/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": str(llm_adapters["beta"])})
    assert loaded.status_code == 200, loaded.text
    answer = post(server, "/v1/completions", {"model": "gamma", "prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                              "return_token_ids": True}).json()
    assert answer["choices"][0]["token_ids"] == offline_greedy(llm_base_dir, prompt_ids, 8, llm_adapters["beta"])
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "gamma"}).status_code == 200
    assert post(server, "/v1/completions", {"model": "gamma", "prompt": "x"}).status_code == 404
    assert "gamma" not in [m.id for m in client(server).models.list().data]

    staging = watched / ".incoming"
    shutil.copytree(llm_adapters["alpha"], staging)
    staging.rename(watched / "delta")  # appear whole
    wait_for(lambda: "delta" in [m.id for m in client(server).models.list().data])
    assert post(server, "/v1/completions", {"model": "delta", "prompt": "x", "max_tokens": 2}).status_code == 200
    shutil.rmtree(watched / "delta")
    wait_for(lambda: "delta" not in [m.id for m in client(server).models.list().data])


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition never held")


def test_the_openapi_document_describes_every_route_and_what_it_sends(server):
    document = httpx.get(server.url + "/docs.json", timeout=10).json()
    paths = document["paths"]
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        operation = paths[path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
        assert operation["responses"]["400"]["content"]["application/json"]["schema"]["properties"]["error"]
    assert paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    for path in ("/livez", "/readyz", "/metrics"):
        assert path in paths

    def schema(path: str, content: str = "application/json", status: str = "200", method: str = "post") -> dict:
        return paths[path][method]["responses"][status]["content"][content]["schema"]

    completion = post(server, "/v1/completions", {"model": "base", "prompt": PROMPT, "max_tokens": 3}).json()
    jsonschema.validate(completion, schema("/v1/completions"))
    chat = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    jsonschema.validate(post(server, "/v1/chat/completions", chat).json(), schema("/v1/chat/completions"))
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**chat, "stream": True}, timeout=30) as sse:
        events = [line[6:] for line in sse.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    for event in events:
        jsonschema.validate(json.loads(event), schema("/v1/chat/completions", "text/event-stream"))
    stream = {"model": "beta", "prompt": PROMPT, "max_tokens": 4, "stream": True,
              "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=stream, timeout=30) as sse:
        events = [line[6:] for line in sse.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert len(events) >= 2
    for event in events:
        jsonschema.validate(json.loads(event), schema("/v1/completions", "text/event-stream"))
    jsonschema.validate(httpx.get(server.url + "/v1/models", timeout=5).json(), schema("/v1/models", method="get"))
    error = post(server, "/v1/completions", {"model": "base", "prompt": PROMPT, "max_tokens": 0})
    jsonschema.validate(error.json(), schema("/v1/completions", status="400"))
