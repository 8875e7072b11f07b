"""charts/kubeforge-llm-gateway: the gateway always mounts the tenants' keys, its upstream list is what the gateway
parses, and the bundled vLLM lands on a GPU node; contradictory values are refused."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from kubeforge.deploy.schemas import validate_objects
from tests.charts.conftest import ROOT

CHART = ROOT / "charts" / "kubeforge-llm-gateway"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def render(helm, *args):
    return subprocess.run([helm, "template", "r", str(CHART), "--namespace", "kubeforge-llm", *args],
                          capture_output=True, text=True)


def objects(helm, *args):
    done = render(helm, *args)
    assert done.returncode == 0, done.stderr
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def named(items, kind, suffix=""):
    return next(o for o in items if o["kind"] == kind and o["metadata"]["name"].endswith(suffix))


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_lint_and_every_object_is_valid_kubernetes(helm, values):
    done = subprocess.run([helm, "lint", "--strict", str(CHART), "-f", str(values)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert validate_objects(objects(helm, "-f", str(values))) == []


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_the_gateway_runs_with_keys_and_the_upstreams_it_can_parse(helm, values, tmp_path, monkeypatch):
    from kubeforge.llm.tenancy.gateway_settings import GatewaySettings

    rendered = objects(helm, "-f", str(values))
    pod = named(rendered, "Deployment", "gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBEFORGE_GATEWAY_AUTH"] == "required"
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[env["KUBEFORGE_GATEWAY_KEYS_DIR"]]]["secret"]["secretName"] == "kubeforge-llm-keys"
    assert volumes[mounts["/etc/kubeforge/llm-tenants"]]["configMap"]["name"] == "kubeforge-llm-tenants"
    assert env["KUBEFORGE_GATEWAY_TENANTS_FILE"].startswith("/etc/kubeforge/llm-tenants/")
    assert all("subPath" not in m for m in pod["containers"][0]["volumeMounts"])  # updates must reach the pod
    config = tmp_path / "upstreams.yaml"
    config.write_text(named(rendered, "ConfigMap", "upstreams")["data"]["upstreams.yaml"])
    for name in (e["name"] for e in pod["containers"][0]["env"] if e["name"].startswith("UPSTREAM_")):
        monkeypatch.setenv(name, "secret-from-the-pod")
    upstreams = GatewaySettings(config=str(config)).upstream_list()
    assert upstreams and all(u.url.startswith("http://") for u in upstreams)
    assert all(u.api_key == "secret-from-the-pod" for u in upstreams if u.api_key_env)


def test_the_bundled_vllm_is_the_upstream_on_a_gpu_node(helm):
    rendered = objects(helm, "-f", str(CHART / "ci" / "vllm-values.yaml"))
    vllm = named(rendered, "Deployment", "-vllm")["spec"]["template"]["spec"]
    container = vllm["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in vllm["tolerations"]
    assert vllm["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert "--enable-lora" in container["args"] and "team-a/support=/cache/adapters/team-a-support" in container["args"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in vllm["volumes"]
    upstreams = yaml.safe_load(named(rendered, "ConfigMap", "upstreams")["data"]["upstreams.yaml"])["upstreams"]
    assert upstreams[0]["url"] == "http://r-kubeforge-llm-gateway-vllm:8000"
    assert upstreams[0]["base_models"] == ["llama-8b"] and upstreams[0]["models"] == ["team-a/support",
                                                                                       "team-b/summaries"]
    env = {e["name"]: e.get("value") for e in
           named(rendered, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBEFORGE_GATEWAY_BUDGET_FRACTION"] == "0.5"  # two replicas: each enforces half of each budget


@pytest.mark.parametrize("args, message", [
    ([], "no upstream"),
    (["--set", "upstreams[0].name=a", "--set", "upstreams[0].url=http://a", "--set", "tenancy.keysSecret="],
     "never runs without API keys"),
    (["--set", "vllm.enabled=true"], "vllm.enabled needs vllm.model"),
    (["--set", "vllm.enabled=true", "--set", "vllm.model=m", "--set", "vllm.gpuCount=0"], "at least 1"),
])
def test_contradictory_values_are_refused(helm, args, message):
    done = render(helm, *args)
    assert done.returncode != 0 and message in done.stderr
