"""The LLM service with tenants, over real HTTP with the official openai client and per-tenant keys, two workers:
401 without or with a wrong key, a revoked key refused after the reload, another tenant's adapter answering 404 as a
model that does not exist, 429 with Retry-After past a budget held across both workers and success after the
window, usage counters and audit lines that match the requests sent, and a bad budget refused at start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml

from tests.kubeforge.llm.server import LLMServer
from tests.kubeforge.llm.tenancy.conftest import make_tenancy

pytestmark = [pytest.mark.server, pytest.mark.slow]
PROMPT = "Names refer to objects. Names are introduced by"
BIG = {"tokens_per_minute": 100_000, "max_concurrent": 16}
TENANTS = {"team-a": {**BIG, "weight": 2, "adapters": ["alpha"]}, "team-b": BIG, "team-count": BIG,
           "team-small": {"tokens_per_minute": 300, "max_concurrent": 16},
           "team-one": {"tokens_per_minute": 100_000, "max_concurrent": 1}}


@pytest.fixture(scope="module")
def tenancy(tmp_path_factory):
    return make_tenancy(tmp_path_factory.mktemp("service-tenancy"), TENANTS)


@pytest.fixture(scope="module")
def server(llm_base_dir, llm_adapters, tenancy, tmp_path_factory):
    running = LLMServer(tmp_path_factory.mktemp("tenant-server"), KUBEFORGE_LLM_MODEL=str(llm_base_dir),
                        KUBEFORGE_LLM_ADAPTERS=",".join(f"{n}={p}" for n, p in llm_adapters.items()),
                        KUBEFORGE_LLM_WORKERS="2", KUBEFORGE_LLM_THREADS="1", KUBEFORGE_LLM_MAX_TOKENS_LIMIT="64",
                        KUBEFORGE_LLM_DEFAULT_MAX_TOKENS="16",
                        KUBEFORGE_LLM_ADMIN_API="true", **tenancy.env("KUBEFORGE_LLM_"))
    try:
        running.wait("/readyz", 200, in_a_row=20)  # both workers loaded, not just the first to answer
        yield running
    finally:
        running.stop()


def client(server, key, strict: bool = True) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60,
                         _strict_response_validation=strict)


def post(server, key, body, **headers):
    auth = {} if key is None else {"authorization": f"Bearer {key}"}
    return httpx.post(server.url + "/v1/completions", json=body, headers={**auth, **headers, "connection": "close"},
                      timeout=60)


def test_no_key_a_malformed_header_and_a_wrong_key_are_401(server, tenancy):
    body = {"model": "base", "prompt": PROMPT, "max_tokens": 2}
    missing = post(server, None, body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    malformed = post(server, None, body, authorization="Basic dXNlcjpwYXNz")
    assert malformed.status_code == 401 and malformed.json()["error"]["code"] == "malformed_authorization"
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(server, "kf_0123456789ab_" + "A" * 43).completions.create(model="base", prompt=PROMPT, max_tokens=2)
    assert wrong.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(server, tenancy.keys["team-a"][:-1] + "x").models.list()
    assert client(server, tenancy.keys["team-a"]).completions.create(model="base", prompt=PROMPT,
                                                                     max_tokens=2).usage.completion_tokens


def test_a_tenant_sees_and_calls_only_the_base_and_its_own_adapters(server, tenancy):
    a, b = client(server, tenancy.keys["team-a"]), client(server, tenancy.keys["team-b"])
    assert [m.id for m in a.models.list().data] == ["base", "alpha"]
    assert [m.id for m in b.models.list().data] == ["base"]
    assert a.completions.create(model="alpha", prompt=PROMPT, max_tokens=3).choices[0].text is not None
    with pytest.raises(openai.NotFoundError) as foreign:
        b.completions.create(model="alpha", prompt=PROMPT, max_tokens=3)
    with pytest.raises(openai.NotFoundError) as unknown:
        b.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=3)
    # another tenant's adapter is indistinguishable from a model that does not exist (404, not 403)
    assert foreign.value.body["message"].replace("'alpha'", "X") == unknown.value.body["message"].replace(
        "'no-such-model'", "X")
    assert "alpha" not in foreign.value.body["message"].split("served models:")[1]
    with pytest.raises(openai.NotFoundError):
        b.chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    refused = httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "alpha"},
                         headers={"authorization": f"Bearer {tenancy.keys['team-a']}"}, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only"


def test_a_revoked_key_is_refused_after_the_reload(server, tenancy):
    second = tenancy.add_key("team-b")
    deadline = time.monotonic() + 20
    while post(server, second, {"model": "base", "prompt": "a", "max_tokens": 1}).status_code != 200:
        assert time.monotonic() < deadline, "the new key was never accepted"
        time.sleep(0.2)
    tenancy.revoke("team-b", second)
    revoked_at = time.monotonic()
    refused_in_a_row = 0
    while refused_in_a_row < 6:  # six answers in a row, from whichever worker: each reloads on its own
        status = post(server, second, {"model": "base", "prompt": "a", "max_tokens": 1}).status_code
        refused_in_a_row = refused_in_a_row + 1 if status == 401 else 0
        assert time.monotonic() - revoked_at < 20, "the revoked key kept working"
    assert time.monotonic() - revoked_at < 5  # the reload interval here is 0.2 s
    assert post(server, tenancy.keys["team-b"], {"model": "base", "prompt": "a", "max_tokens": 1}).status_code == 200


def test_a_key_of_a_tenant_that_no_longer_exists_is_401(server, tenancy):
    from kubeforge.llm.tenancy.keys import key_file_text, new_key

    key, record = new_key("team-gone")
    (tenancy.keys_dir / "team-gone.json").write_text(key_file_text("team-gone", [record]))
    deadline = time.monotonic() + 20
    while True:
        response = post(server, key, {"model": "base", "prompt": "a", "max_tokens": 1})
        assert response.status_code == 401
        if "no longer exists" in response.json()["error"]["message"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_token_budget_is_shared_by_both_workers_and_recovers_after_the_window(server, tenancy, llm_tokenizer):
    key = tenancy.keys["team-small"]
    prompt_tokens = len(llm_tokenizer(PROMPT)["input_ids"])
    body = {"model": "base", "prompt": PROMPT, "max_tokens": 48, "ignore_eos": True}
    per_request = prompt_tokens + 48
    before = len(tenancy.audit())
    statuses = [post(server, key, body) for _ in range(10)]  # a new connection each: both workers answer
    codes = [r.status_code for r in statuses]
    assert set(codes) == {200, 429}, codes
    admitted = codes.count(200)
    # 300 tokens a minute in all: one shared bucket admits 300 // per_request (+1 from the refill while these ran);
    # a bucket per worker would have admitted about twice as many
    assert 300 // per_request <= admitted <= 300 // per_request + 1, (admitted, per_request)
    lines = tenancy.audit_since(before, len(statuses), tenant="team-small")
    assert len({line["pid"] for line in lines}) == 2, "both workers should have answered"
    refusal = next(r for r in statuses if r.status_code == 429)
    error = refusal.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    wait = int(refusal.headers["retry-after"])
    assert 1 <= wait <= 60 and refusal.headers["x-ratelimit-limit-tokens"] == "300"
    with pytest.raises(openai.RateLimitError) as limited:
        client(server, key).completions.create(model="base", prompt=PROMPT, max_tokens=48,
                                               extra_body={"ignore_eos": True})
    time.sleep(int(limited.value.response.headers["retry-after"]))
    again = client(server, key).completions.create(model="base", prompt=PROMPT, max_tokens=48,
                                                   extra_body={"ignore_eos": True})
    assert again.usage.completion_tokens == 48
    b = client(server, tenancy.keys["team-b"])  # the other tenants' budgets are their own
    assert b.completions.create(model="base", prompt=PROMPT, max_tokens=2).usage.completion_tokens >= 1


def test_concurrency_is_counted_across_workers(server, tenancy):
    key = tenancy.keys["team-one"]
    # a request in flight: its headers are in, its body is still coming (the budget counts from the headers on)
    held = socket.create_connection(("127.0.0.1", server.port))
    held.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{".encode())
    try:
        deadline = time.monotonic() + 10
        while True:
            refusals = [post(server, key, {"model": "base", "prompt": "a", "max_tokens": 1}) for _ in range(6)]
            if [r.status_code for r in refusals] == [429] * 6 or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the held request may not have reached its worker yet
        assert [r.status_code for r in refusals] == [429] * 6  # on whichever worker each one landed
        assert refusals[0].json()["error"]["type"] == "concurrency" and refusals[0].headers["retry-after"] == "1"
    finally:
        held.close()
    deadline = time.monotonic() + 10
    while post(server, key, {"model": "base", "prompt": "a", "max_tokens": 1}).status_code != 200:
        assert time.monotonic() < deadline, "the slot was never given back"
        time.sleep(0.1)


def test_usage_counters_and_audit_lines_match_the_requests(server, tenancy):
    c = client(server, tenancy.keys["team-count"])
    before = len(tenancy.audit())
    answers = [c.completions.create(model="base", prompt=PROMPT, max_tokens=5),
               c.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hello"}], max_tokens=7)]
    stream = list(client(server, tenancy.keys["team-count"], strict=False).completions.create(
        model="base", prompt=PROMPT, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    usages = [a.usage for a in answers] + [stream[-1].usage]
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="alpha", prompt=PROMPT, max_tokens=2)
    lines = tenancy.audit_since(before, 4, tenant="team-count")
    assert [(line["status"], line["prompt_tokens"], line["completion_tokens"]) for line in lines] == [
        (200, u.prompt_tokens, u.completion_tokens) for u in usages] + [(404, 0, 0)]
    assert [line["stream"] for line in lines] == [False, False, True, False]
    assert all(line["key_id"] == tenancy.records["team-count"][0].id and line["latency_ms"] > 0 and
               "prompt" not in line and "completion" not in line for line in lines)
    assert lines[0]["model"] == "base" and lines[1]["path"] == "/v1/chat/completions"
    expected = {("kubeforge:tenant_prompt_tokens_total", "model_name"): sum(u.prompt_tokens for u in usages),
                ("kubeforge:tenant_generation_tokens_total", "model_name"): sum(u.completion_tokens for u in usages),
                ("kubeforge:tenant_requests_total", "200"): 3, ("kubeforge:tenant_requests_total", "404"): 1,
                ("kubeforge:tenant_time_to_first_token_seconds_count", None): 3}
    deadline = time.monotonic() + 10
    while True:  # the workers flush their counters every 0.25 s
        seen = {}
        for (name, extra), _ in expected.items():
            labels = {"tenant": "team-count"}
            if extra == "model_name":
                labels["model_name"] = "base"
            elif extra:
                labels["status"] = extra
            seen[(name, extra)] = server.metric(name, **labels)
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert seen == expected


def test_a_negative_or_missing_budget_is_refused_at_start_naming_the_tenant(tmp_path, llm_base_dir):
    tenancy = make_tenancy(tmp_path, {"team-ok": BIG, "team-bad": {"tokens_per_minute": -10, "max_concurrent": 2}})
    env = {**os.environ, **tenancy.env("KUBEFORGE_LLM_"), "KUBEFORGE_LLM_MODEL": str(llm_base_dir)}
    done = subprocess.run([sys.executable, "-c", "import kubeforge.llm.service"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "tenant team-bad: tokens_per_minute must be greater than 0" in done.stderr
    tenancy.tenants_file.write_text(yaml.safe_dump({"tenants": {"team-bad": {"max_concurrent": 2}}}))
    done = subprocess.run([sys.executable, "-c", "import kubeforge.llm.service"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert "tenant team-bad: tokens_per_minute is missing" in done.stderr
