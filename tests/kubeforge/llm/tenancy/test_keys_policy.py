"""Keys are stored as hashes only and checked in constant time; the tenants file refuses bad budgets by tenant."""

from __future__ import annotations

import json

import pytest

from kubeforge.config import ConfigError
from kubeforge.llm.tenancy.keys import (KeyRing, MalformedCredentials, bearer_token, hash_key, key_file_text, new_key,
                                        read_key_dir)
from kubeforge.llm.tenancy.policy import parse_policy, policy_text


def test_a_new_key_is_stored_only_as_its_hash():
    key, record = new_key("team-a")
    assert key.startswith(f"kf_{record.id}_") and len(key) == 3 + 12 + 1 + 43
    assert record.sha256 == hash_key(key) and key not in key_file_text("team-a", [record])
    assert json.loads(key_file_text("team-a", [record]))["keys"][0] == {"id": record.id, "sha256": record.sha256,
                                                                         "created": record.created}


def test_the_ring_accepts_only_the_exact_key():
    key, record = new_key("team-a")
    other, _ = new_key("team-b")
    ring = KeyRing([record])
    assert ring.verify(key) == record
    assert ring.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # same id, wrong secret
    assert ring.verify(other) is None and ring.verify("nonsense") is None and ring.verify("") is None


def test_duplicate_key_ids_are_refused():
    _, record = new_key("team-a")
    with pytest.raises(ConfigError, match="appears twice"):
        KeyRing([record, record])


@pytest.mark.parametrize("header, expected", [(None, None), (b"Bearer abc", "abc"), (b"bearer  abc ", "abc")])
def test_bearer_tokens(header, expected):
    assert bearer_token(header) == expected


@pytest.mark.parametrize("header", [b"Basic dXNlcjpwYXNz", b"Bearer", b"Bearer a b", b"abc", "Bearer é".encode()])
def test_malformed_authorization_headers(header):
    with pytest.raises(MalformedCredentials):
        bearer_token(header)


def test_key_files_are_read_per_tenant_and_checked(tmp_path):
    _, record = new_key("team-a")
    (tmp_path / "team-a.json").write_text(key_file_text("team-a", [record]))
    assert read_key_dir(tmp_path) == [record]
    (tmp_path / "team-b.json").write_text(key_file_text("team-a", []))
    with pytest.raises(ConfigError, match="names tenant 'team-a' but the file is team-b.json"):
        read_key_dir(tmp_path)
    (tmp_path / "team-b.json").write_text('{"keys": [{"id": "xyz", "sha256": "00"}]}')
    with pytest.raises(ConfigError, match="12-hex-digit id"):
        read_key_dir(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_key_dir(tmp_path / "missing")


BUDGET = {"tokens_per_minute": 1000, "max_concurrent": 4}


def test_a_policy_round_trips_and_decides_who_may_call_what():
    policy = parse_policy({"shared_models": ["summariser"],
                           "tenants": {"team-a": {**BUDGET, "weight": 2, "adapters": ["bot"]},
                                       "team-b": BUDGET}})
    a, b = policy.tenants["team-a"], policy.tenants["team-b"]
    assert a.weight == 2.0 and b.weight == 1.0
    for model, a_may, b_may in [("base", True, True), ("summariser", True, True), ("bot", True, False),
                                ("team-a/x", True, False), ("team-b/x", False, True), ("other", False, False)]:
        assert policy.may_call(a, model, ["base"]) is a_may, model
        assert policy.may_call(b, model, ["base"]) is b_may, model
    assert parse_policy(__import__("yaml").safe_load(policy_text(policy))) == policy


@pytest.mark.parametrize("entry, message", [
    ({"max_concurrent": 4}, "tenant team-a: tokens_per_minute is missing"),
    ({"tokens_per_minute": 100}, "tenant team-a: max_concurrent is missing"),
    ({"tokens_per_minute": -5, "max_concurrent": 4}, "tenant team-a: tokens_per_minute must be greater than 0"),
    ({**BUDGET, "max_concurrent": 0}, "tenant team-a: max_concurrent must be greater than 0"),
    ({**BUDGET, "weight": -1}, "tenant team-a: weight must be greater than 0"),
    ({**BUDGET, "tokens_per_minute": "lots"}, "tenant team-a: tokens_per_minute must be a whole number"),
    ({**BUDGET, "tokens_per_minute": 1.5}, "must be a whole number"),
    ({**BUDGET, "budget": 3}, "tenant team-a: unknown field"),
    (None, "tenant team-a: expected a mapping"),
])
def test_bad_budgets_are_refused_naming_the_tenant(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy({"tenants": {"team-b": BUDGET, "team-a": entry}}, "tenants.yaml")


def test_an_adapter_has_one_owner():
    with pytest.raises(ConfigError, match="listed by tenants team-a and team-b"):
        parse_policy({"tenants": {"team-a": {**BUDGET, "adapters": ["x"]}, "team-b": {**BUDGET, "adapters": ["x"]}}})
    with pytest.raises(ConfigError, match="not a DNS-1123 label"):
        parse_policy({"tenants": {"Team_A": BUDGET}})
