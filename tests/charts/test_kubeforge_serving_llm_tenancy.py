"""charts/kubeforge-serving with llmTenancy: the LLM service's keys Secret and tenants ConfigMap are mounted as
directories, and KUBEFORGE_LLM_AUTH=required is always set, so the chart never runs an LLM without keys."""

from __future__ import annotations

from kubeforge.deploy.schemas import validate_objects
from kubeforge.llm.tenancy.settings import TenancySettings
from tests.charts.conftest import CHART, pod_spec


def env_of(spec):
    return {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}


def test_auth_is_always_required(render):
    env = env_of(pod_spec(render.objects()))
    assert env["KUBEFORGE_LLM_AUTH"] == "required" and "KUBEFORGE_LLM_KEYS_DIR" not in env


def test_the_tenants_keys_and_budgets_are_mounted(render):
    objects = render.objects("-f", str(CHART / "ci" / "llm-tenants-values.yaml"))
    assert validate_objects(objects) == []
    spec = pod_spec(objects)
    env = env_of(spec)
    settings = TenancySettings.from_env(env)  # what the service reads from exactly these variables
    assert settings.enabled and settings.budget_fraction == 0.5 and settings.fair_burst_rows == 32
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts[settings.keys_dir]["name"]]["secret"]["secretName"] == "kubeforge-llm-keys"
    tenants_dir = settings.tenants_file.rsplit("/", 1)[0]
    assert volumes[mounts[tenants_dir]["name"]]["configMap"]["name"] == "kubeforge-llm-tenants"
    assert all("subPath" not in m for m in mounts.values())
    assert settings.budget_file.startswith(next(p for p, m in mounts.items() if m["name"] == "llm-ledger"))
