"""`kubeforge tenant add --llm-...`, `kubeforge tenant key add|rotate|revoke`, `kubeforge usage` and `kubeforge serve`'s
authentication: the GitOps files they write are what the service reads, keys appear once and only as hashes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kubeforge.cli import app
from kubeforge.deploy.tenants import list_tenants
from kubeforge.llm.tenancy.keys import KeyRing, hash_key, read_key_dir
from kubeforge.llm.tenancy.policy import parse_policy

MANIFESTS = Path(__file__).resolve().parents[4] / "manifests"
runner = CliRunner()


@pytest.fixture
def repo(tmp_path):
    shutil.copytree(MANIFESTS / "tenants" / "base", tmp_path / "manifests" / "tenants" / "base")
    shutil.copytree(MANIFESTS / "argocd", tmp_path / "manifests" / "argocd", ignore=shutil.ignore_patterns("tenants"))
    (tmp_path / "manifests" / "argocd" / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- platform.yaml\n")
    for env in ("dev", "prod"):
        shutil.copytree(MANIFESTS / "clusters" / env, tmp_path / "manifests" / "clusters" / env)
    return tmp_path


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def add_tenant(repo, name, *llm):
    return cli("tenant", "add", name, "--gpus", "1", "--cpu", "8", "--memory", "32Gi", "--owner", f"{name}-devs",
               "--repo", str(repo), *llm)


def served_files(repo: Path, into: Path) -> tuple:
    """What the pod sees: the ConfigMap's tenants.yaml and the Secret's entries as mounted files."""
    configmap = yaml.safe_load((repo / "manifests/llm/tenants.yaml").read_text())
    secret = yaml.safe_load((repo / "manifests/llm/keys.yaml").read_text())
    keys = into / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    for name in keys.iterdir():
        name.unlink()
    for name, text in (secret.get("stringData") or {}).items():
        (keys / name).write_text(text)
    return parse_policy(yaml.safe_load(configmap["data"]["tenants.yaml"])), KeyRing(read_key_dir(keys))


def test_the_llm_budget_lives_beside_the_quota_and_reaches_the_service_config(repo, tmp_path):
    done = add_tenant(repo, "team-x", "--llm-tokens-per-minute", "60000", "--llm-max-concurrent", "8",
                      "--llm-weight", "2")
    assert done.exit_code == 0, done.output
    assert "manifests/llm/tenants.yaml" in done.output
    namespace = yaml.safe_load((repo / "manifests/tenants/team-x/namespace.yaml").read_text())
    assert namespace["metadata"]["annotations"]["kubeforge.io/llm-tokens-per-minute"] == "60000"
    (info,) = list_tenants(repo)
    assert (info.llm_tokens_per_minute, info.llm_max_concurrent, info.llm_weight) == (60000, 8, 2.0)
    policy, _ = served_files(repo, tmp_path / "pod")
    assert (policy.tenants["team-x"].tokens_per_minute, policy.tenants["team-x"].weight) == (60000, 2.0)
    assert add_tenant(repo, "team-plain").exit_code == 0  # a tenant without an LLM budget is not an LLM tenant
    policy, _ = served_files(repo, tmp_path / "pod")
    assert set(policy.tenants) == {"team-x"}


@pytest.mark.parametrize("flags, message", [
    (["--llm-tokens-per-minute", "-5", "--llm-max-concurrent", "2"], "tenant team-y: llm tokens per minute must be"),
    (["--llm-tokens-per-minute", "100"], "tenant team-y: give both --llm-tokens-per-minute and --llm-max-concurrent"),
    (["--llm-tokens-per-minute", "100", "--llm-max-concurrent", "2", "--llm-weight", "0"],
     "tenant team-y: llm weight must be greater than 0"),
])
def test_a_bad_llm_budget_is_refused_naming_the_tenant(repo, flags, message):
    done = add_tenant(repo, "team-y", *flags)
    assert done.exit_code == 2 and message in " ".join(done.output.split())
    assert not (repo / "manifests/tenants/team-y").exists()


def test_keys_are_added_rotated_and_revoked_as_hashes(repo, tmp_path):
    add_tenant(repo, "team-x", "--llm-tokens-per-minute", "1000", "--llm-max-concurrent", "2")
    done = cli("tenant", "key", "add", "team-x", "--repo", str(repo))
    assert done.exit_code == 0, done.output
    key = next(line for line in done.output.splitlines() if line.startswith("kf_"))
    stored = (repo / "manifests/llm/keys.yaml").read_text()
    assert key not in stored and hash_key(key) in stored
    policy, ring = served_files(repo, tmp_path / "pod")
    assert ring.verify(key).tenant == "team-x"
    old_id = ring.verify(key).id
    rotated = cli("tenant", "key", "rotate", "team-x", "--repo", str(repo))
    assert rotated.exit_code == 0, rotated.output
    new = next(line for line in rotated.output.splitlines() if line.startswith("kf_"))
    _, ring = served_files(repo, tmp_path / "pod")
    assert ring.verify(key) is None and ring.verify(new).tenant == "team-x"
    second = next(line for line in cli("tenant", "key", "add", "team-x", "--repo", str(repo)).output.splitlines()
                  if line.startswith("kf_"))
    ambiguous = cli("tenant", "key", "rotate", "team-x", "--repo", str(repo))
    assert ambiguous.exit_code == 2 and "--key-id" in ambiguous.output
    new_id = ring.verify(new).id
    assert cli("tenant", "key", "revoke", "team-x", "--key-id", new_id, "--repo", str(repo)).exit_code == 0
    _, ring = served_files(repo, tmp_path / "pod")
    assert ring.verify(new) is None and ring.verify(second) is not None
    missing = cli("tenant", "key", "revoke", "team-x", "--key-id", old_id, "--repo", str(repo))
    assert missing.exit_code == 2 and "has no key" in missing.output


def test_a_tenant_without_an_llm_budget_gets_no_key(repo):
    add_tenant(repo, "team-plain")
    for name in ("team-plain", "team-nobody"):
        done = cli("tenant", "key", "add", name, "--repo", str(repo))
        assert done.exit_code == 2 and f"tenant {name} has no LLM budget" in " ".join(done.output.split())


def test_the_llm_manifests_are_valid_kubernetes_objects(repo):
    from kubeforge.deploy.schemas import validate_objects

    add_tenant(repo, "team-x", "--llm-tokens-per-minute", "1000", "--llm-max-concurrent", "2")
    cli("tenant", "key", "add", "team-x", "--repo", str(repo))
    built = subprocess.run(["kubectl", "kustomize", str(repo / "manifests/llm")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    objects = list(yaml.safe_load_all(built.stdout))
    assert {(o["kind"], o["metadata"]["namespace"]) for o in objects} == {("ConfigMap", "kubeforge-llm"),
                                                                          ("Secret", "kubeforge-llm")}
    assert validate_objects(objects) == []


def audit_line(time, tenant, model, status, prompt, completion, latency=10.0):
    return json.dumps({"event": "kubeforge.llm.request", "time": time, "tenant": tenant, "key_id": "0" * 12,
                       "model": model, "prompt_tokens": prompt, "completion_tokens": completion, "status": status,
                       "latency_ms": latency, "ttft_ms": 2.0, "stream": False, "pid": 1})


def test_usage_sums_the_audit_log_per_tenant_and_model_in_a_window(tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_text("\n".join([
        "INFO some other log line",
        audit_line("2026-12-01T10:00:00.000Z", "team-a", "base", 200, 10, 5),
        audit_line("2026-12-01T10:05:00.000Z", "team-a", "base", 200, 20, 7, latency=30.0),
        audit_line("2026-12-01T10:06:00.000Z", "team-a", "base", 429, 0, 0),
        audit_line("2026-12-01T10:07:00.000Z", "team-a", "team-a/bot", 200, 3, 3),
        audit_line("2026-12-01T10:08:00.000Z", None, None, 401, 0, 0),
        audit_line("2026-12-01T12:00:00.000Z", "team-b", "base", 200, 100, 100),
    ]) + "\n")
    done = cli("usage", str(log), "--since", "2026-12-01T10:00:00Z", "--until", "2026-12-01T11:00:00Z", "--json")
    assert done.exit_code == 0, done.output
    rows = {(r["tenant"], r["model"]): r for r in map(json.loads, done.output.splitlines())}
    assert set(rows) == {("team-a", "base"), ("team-a", "team-a/bot"), ("-", "-")}
    base = rows[("team-a", "base")]
    assert (base["requests"], base["ok"], base["rate_limited"], base["prompt_tokens"], base["completion_tokens"],
            base["total_tokens"]) == (3, 2, 1, 30, 12, 42)
    assert rows[("-", "-")]["refused"] == 1
    table = cli("usage", str(log), "--tenant", "team-b")
    assert table.exit_code == 0 and "team-b" in table.output and "team-a" not in table.output
    bad = cli("usage", str(log), "--since", "yesterday")
    assert bad.exit_code == 2 and "neither a duration" in bad.output


def test_serve_refuses_to_run_an_lm_without_keys_unless_asked(llm_base_dir, tmp_path, monkeypatch):
    for name in ("KUBEFORGE_LLM_TENANTS_FILE", "KUBEFORGE_LLM_KEYS_DIR", "KUBEFORGE_LLM_AUTH"):
        monkeypatch.delenv(name, raising=False)
    done = cli("serve", str(llm_base_dir))
    assert done.exit_code == 2
    assert "authentication is required" in done.output and "--no-auth" in done.output
    (tmp_path / "keys").mkdir()
    (tmp_path / "tenants.yaml").write_text("tenants: {team-z: {tokens_per_minute: 10, max_concurrent: -1}}\n")
    monkeypatch.setenv("KUBEFORGE_LLM_TENANTS_FILE", str(tmp_path / "tenants.yaml"))
    monkeypatch.setenv("KUBEFORGE_LLM_KEYS_DIR", str(tmp_path / "keys"))
    done = cli("serve", str(llm_base_dir))
    assert done.exit_code == 2 and "tenant team-z: max_concurrent must be greater than 0" in done.output


def test_no_auth_is_explicit_and_announced():
    from kubeforge.llm.tenancy.settings import serve_auth_environment

    assert serve_auth_environment({}, no_auth=True)["KUBEFORGE_LLM_AUTH"] == "off"
