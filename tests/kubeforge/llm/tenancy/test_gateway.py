"""Gateway mode over real HTTP, with the official openai client and per-tenant keys, in front of a second kubeforge
engine process as the upstream: keys, the tenant's models, budgets, usage from the upstream's `usage`, streams
passed through event by event, and an upstream that is down answering 502 while the other keeps serving."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]
PROMPT = "Names refer to objects. Names are introduced by"


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def wait_for_models(gateway, key, wanted, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [m.id for m in client(gateway.url, key).models.list().data]
        if wanted <= set(ids):
            return ids
        time.sleep(0.2)
    raise AssertionError(f"{wanted} never listed")


def test_keys_are_required(gateway, gateway_tenancy):
    for key in ("", "kf_000000000000_" + "x" * 43):
        with pytest.raises(openai.AuthenticationError):
            client(gateway.url, key or "unset").completions.create(model="base", prompt=PROMPT, max_tokens=2)
    response = httpx.post(gateway.url + "/v1/completions", json={"model": "base", "prompt": "x"}, timeout=10)
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_each_tenant_sees_the_base_and_its_own_adapters(gateway, gateway_tenancy):
    a = wait_for_models(gateway, gateway_tenancy.keys["team-a"], {"base", "alpha"})
    b = [m.id for m in client(gateway.url, gateway_tenancy.keys["team-b"]).models.list().data]
    assert "alpha" in a and "alpha" not in b and "beta" not in a and "base" in b and "ghost" in b
    with pytest.raises(openai.NotFoundError) as foreign:
        client(gateway.url, gateway_tenancy.keys["team-b"]).completions.create(model="alpha", prompt=PROMPT,
                                                                                max_tokens=2)
    with pytest.raises(openai.NotFoundError) as unknown:
        client(gateway.url, gateway_tenancy.keys["team-b"]).completions.create(model="nope", prompt=PROMPT,
                                                                                max_tokens=2)
    # another tenant's adapter is refused exactly like a model that does not exist (404, not 403)
    assert foreign.value.body["code"] == unknown.value.body["code"] == "model_not_found"
    assert "alpha" not in foreign.value.body["message"].split("served models:")[1]
    answer = client(gateway.url, gateway_tenancy.keys["team-a"]).completions.create(model="alpha", prompt=PROMPT,
                                                                                    max_tokens=4)
    assert answer.usage.completion_tokens >= 1


def test_the_answer_and_the_usage_are_the_upstreams(gateway, gateway_tenancy, llm_server):
    direct = client(llm_server.url, "unused").completions.create(model="base", prompt=PROMPT, max_tokens=12,
                                                                 temperature=0)
    before = len(gateway_tenancy.audit())
    through = client(gateway.url, gateway_tenancy.keys["team-a"]).completions.create(
        model="base", prompt=PROMPT, max_tokens=12, temperature=0)
    assert through.choices[0].text == direct.choices[0].text and through.usage == direct.usage
    (line,) = gateway_tenancy.audit_since(before, 1)
    assert (line["tenant"], line["model"], line["status"], line["stream"]) == ("team-a", "base", 200, False)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (direct.usage.prompt_tokens,
                                                                  direct.usage.completion_tokens)
    assert line["key_id"] == gateway_tenancy.records["team-a"][0].id and "prompt" not in line


def test_a_stream_is_passed_through_event_by_event(gateway, gateway_tenancy, llm_server):
    body = {"model": "base", "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stream": True,
            "ignore_eos": True, "return_token_ids": True}

    def events(url, key):
        arrivals, texts = [], []
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {key}"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.perf_counter())
                    texts.append(line)
        return arrivals, texts

    _, direct = events(llm_server.url, "unused")
    before = len(gateway_tenancy.audit())
    arrivals, through = events(gateway.url, gateway_tenancy.keys["team-b"])
    def choices(lines):
        return [json.loads(line[6:])["choices"] if line != "data: [DONE]" else line for line in lines]

    # the same events, one per token, ending with [DONE]; the usage chunk the gateway asked for is not passed on
    # (the other chunks carry "usage": null, as every chunk of such a stream does)
    assert choices(through) == choices(direct)
    assert through[-1] == "data: [DONE]" and len(through) == 24 + 1
    assert all('"usage":{' not in line for line in through)
    # a stream held back and sent at the end would arrive in one burst: these came in several over the generation's
    # time (a loaded machine may coalesce neighbouring tokens, so bursts are counted, not per-token gaps)
    spread = arrivals[-2] - arrivals[0]
    bursts = 1 + sum(b - a > 0.001 for a, b in zip(arrivals, arrivals[1:-1]))
    assert spread > 0.01 and bursts >= 3, (spread, bursts, arrivals)
    (line,) = gateway_tenancy.audit_since(before, 1)
    assert line["stream"] and line["completion_tokens"] == 24 and line["ttft_ms"] > 0


def test_the_streams_usage_chunk_reaches_a_client_that_asks(gateway, gateway_tenancy):
    stream = client(gateway.url, gateway_tenancy.keys["team-a"]).chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Hello"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_budgets_answer_429_with_retry_after_and_recover(gateway, gateway_tenancy):
    small = client(gateway.url, gateway_tenancy.keys["team-small"])
    # 300 tokens per minute (5 per second): each request reserves its prompt estimate + 48
    for _ in range(20):
        try:
            small.completions.create(model="base", prompt=PROMPT, max_tokens=48, extra_body={"ignore_eos": True})
        except openai.RateLimitError as exc:
            refusal = exc
            break
    else:
        raise AssertionError("the budget never ran out")
    assert refusal.response.headers["retry-after"].isdigit()
    assert refusal.body["code"] == "rate_limit_exceeded" and refusal.body["type"] == "tokens"
    time.sleep(int(refusal.response.headers["retry-after"]))  # the bucket refills 5 tokens a second
    again = small.completions.create(model="base", prompt=PROMPT, max_tokens=48, extra_body={"ignore_eos": True})
    assert again.usage.completion_tokens == 48
    other = client(gateway.url, gateway_tenancy.keys["team-b"])  # another tenant's budget is untouched
    assert other.completions.create(model="base", prompt=PROMPT, max_tokens=2).usage.completion_tokens >= 1


def test_an_upstream_that_is_down_answers_502_and_the_others_keep_serving(gateway, gateway_tenancy):
    key = gateway_tenancy.keys["team-b"]
    with pytest.raises(openai.APIStatusError) as down:
        client(gateway.url, key).completions.create(model="ghost", prompt=PROMPT, max_tokens=2)
    assert down.value.status_code == 502
    assert down.value.body["code"] == "upstream_unavailable" and "ghost-pool" in down.value.body["message"]
    assert client(gateway.url, key).completions.create(model="base", prompt=PROMPT, max_tokens=2).choices
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert 'kubeforge:gateway_upstream_up{upstream="ghost-pool"} 0.0' in text


def test_bad_bodies_are_400s_in_the_openai_shape(gateway, gateway_tenancy):
    headers = {"authorization": f"Bearer {gateway_tenancy.keys['team-b']}"}
    for content, code in [(b"{not json", "invalid_json"), (b"[1]", "invalid_type"), (b'{"prompt": "x"}',
                                                                                     "missing_field")]:
        response = httpx.post(gateway.url + "/v1/completions", content=content, headers=headers, timeout=10)
        assert response.status_code == 400 and response.json()["error"]["code"] == code
