"""charts/kubeforge-serving as an LLM release on the kwok control plane, built the way a user builds it:
`kubeforge deploy values` of an LM run with a GPU scheduling profile, an overlay with the chart's `llm:` block, and
the LLM tenants' ConfigMap and keys Secret from `kubeforge tenant add --llm-...` / `kubeforge tenant key add` applied
into the tenant namespace. `helm install --wait` must land the pod on a fake GPU node with the model cache, /dev/shm,
the long startup probe, the HF token and the tenancy files wired as the service expects them."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.config import ConfigError
from kubeforge.llm.settings import LLMServeConfig
from kubeforge.llm.tenancy.gitops import KEYS_SECRET, LLM_DIR, TENANTS_CONFIGMAP
from kubeforge.llm.tenancy.settings import TenancySettings
from kubeforge.llm.tenancy.store import load_snapshot
from tests.cluster.conftest import CHART, KUBEFORGE, MANIFESTS, TENANTS, apply, dump, get_json, kustomize, wait_for
from tests.cluster.test_serving_chart import NAMESPACE, Release

pytestmark = pytest.mark.cluster
IMAGE = "registry.example/kubeforge/kubeforge-llm:0.1.0"
HF_SECRET = "hf-token"
CACHE_CLAIM, CACHE_VOLUME = "llm-model-cache", "kubeforge-test-llm-model-cache"
LLM_BUDGETS = {"alpha": dict(tokens_per_minute=120000, max_concurrent=8, weight=1.0),
               "beta": dict(tokens_per_minute=30000, max_concurrent=2, weight=0.5)}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def kubeforge(*args: str) -> str:
    done = subprocess.run([str(KUBEFORGE), *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"kubeforge {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def lm_run(root: Path) -> Path:
    """A run of lm-pretrain-finetune as `kubeforge deploy values` sees it: a pre-trained model and a LoRA adapter."""
    run = root / "run"
    model = run / "lm-pretrain" / "pretrained_model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    adapter = run / "lm-finetune" / "finetuned_model" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model),
                                                              "peft_type": "LORA"}))
    return run


def deploy_values(tmp_path: Path, profile: str) -> Path:
    """`kubeforge deploy values RUN --profile PROFILE`, the CLI a user runs."""
    path = tmp_path / f"{profile}-values.yaml"
    kubeforge("deploy", "values", str(lm_run(tmp_path)), "-t", IMAGE, "--profile", profile, "-o", str(path))
    values = yaml.safe_load(path.read_text())
    assert values["llm"] == {"enabled": True} and values["gpu"]["enabled"] is True
    return path


def llm_overlay(tmp_path: Path, model_cache: dict, startup: dict | None) -> Path:
    llm: dict = {"settings": {"device": "cuda", "dtype": "float16", "max_running": 8,
                              "adapters_dir": "/var/cache/kubeforge/adapters"},
                 "hfTokenSecret": HF_SECRET, "modelCache": model_cache, "shmSizeLimit": "4Gi"}
    if startup:
        llm["startupProbe"] = startup
    path = tmp_path / "llm-overlay.yaml"
    path.write_text(yaml.safe_dump({"llm": llm, "llmTenancy": {"enabled": True}}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def llm_tenancy(cluster, tenants, tmp_path_factory):
    """The LLM tenants' objects from the tenant tooling in a scratch GitOps repository, applied into NAMESPACE (the
    generated kustomization's namespace edited there, as docs/llm-tenants.md says), and the HF token Secret."""
    repo = tmp_path_factory.mktemp("llm-gitops")
    shutil.copytree(MANIFESTS / "tenants" / "base", repo / "manifests" / "tenants" / "base")

    def add(name: str) -> None:
        quota, budget = TENANTS[name], LLM_BUDGETS[name]
        kubeforge("tenant", "add", name, "--gpus", str(quota["gpus"]), "--cpu", quota["cpu"], "--memory",
                  quota["memory"], "--owner", quota["owner"], "--llm-tokens-per-minute",
                  str(budget["tokens_per_minute"]), "--llm-max-concurrent", str(budget["max_concurrent"]),
                  "--llm-weight", str(budget["weight"]), "--repo", str(repo))

    add("alpha")
    kustomization = repo / LLM_DIR / "kustomization.yaml"
    document = yaml.safe_load(kustomization.read_text())
    document["namespace"] = NAMESPACE
    kustomization.write_text(yaml.safe_dump(document, sort_keys=False))
    add("beta")
    printed = kubeforge("tenant", "key", "add", "alpha", "--repo", str(repo))
    (key,) = re.findall(r"^kf_[0-9a-f]{12}_\S{43}$", printed, re.MULTILINE)

    rendered = kustomize(cluster, repo / LLM_DIR)
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    assert {(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects} == {
        ("ConfigMap", TENANTS_CONFIGMAP, NAMESPACE), ("Secret", KEYS_SECRET, NAMESPACE)}
    hf_token = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": HF_SECRET, "namespace": NAMESPACE}, "stringData": {"token": "hf_kubeforge_test"}}
    everything = rendered + "---\n" + dump(hf_token)
    apply(cluster, everything)
    try:
        yield {"key": key}
    finally:
        cluster.kubectl("delete", "-f", "-", "--wait=false", input=everything, check=False)


@pytest.fixture
def model_cache_claim(cluster, tenants):
    """A PVC bound (by the controller-manager's binder) to a pre-provisioned PV: kwok has no storage provisioner."""
    volume = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": CACHE_VOLUME},
              "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                       "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/var/lib/kubeforge/hf"},
                       "claimRef": {"namespace": NAMESPACE, "name": CACHE_CLAIM}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": CACHE_CLAIM, "namespace": NAMESPACE},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": CACHE_VOLUME,
                      "resources": {"requests": {"storage": "50Gi"}}}}
    apply(cluster, dump(volume, claim))
    try:
        wait_for(lambda: get_json(cluster, "pvc", CACHE_CLAIM, "-n", NAMESPACE).get("status", {}).get("phase")
                 == "Bound", 60, f"PVC {CACHE_CLAIM} to bind")
        yield CACHE_CLAIM
    finally:
        cluster.kubectl("delete", "pvc", CACHE_CLAIM, "-n", NAMESPACE, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", CACHE_VOLUME, "--wait=false", check=False)


def projected(cluster, env: dict[str, str], mounts: dict[str, dict], volumes: dict[str, dict],
              root: Path) -> dict[str, str]:
    """What the kubelet would put into the pod's tenancy directories, from the objects the API server holds; the
    pod's environment with its paths moved under ``root``."""
    for path in (env["KUBEFORGE_LLM_TENANTS_FILE"].rsplit("/", 1)[0], env["KUBEFORGE_LLM_KEYS_DIR"]):
        volume = volumes[mounts[path]["name"]]
        if "configMap" in volume:
            files = get_json(cluster, "configmap", volume["configMap"]["name"], "-n", NAMESPACE)["data"]
        else:
            data = get_json(cluster, "secret", volume["secret"]["secretName"], "-n", NAMESPACE)["data"]
            files = {name: base64.b64decode(value).decode() for name, value in data.items()}
        target = root / path.lstrip("/")
        target.mkdir(parents=True)
        for name, text in files.items():
            (target / name).write_text(text)
    return {**env, **{name: str(root / env[name].lstrip("/")) for name in
                      ("KUBEFORGE_LLM_TENANTS_FILE", "KUBEFORGE_LLM_KEYS_DIR", "KUBEFORGE_LLM_BUDGET_FILE")}}


@pytest.mark.parametrize("profile,product,cache", [("gpu-t4", "Tesla-T4", "emptyDir"),
                                                   ("gpu-a100", "NVIDIA-A100-SXM4-80GB", "claim")])
def test_llm_release_lands_on_a_gpu_node_with_cache_shm_startup_probe_token_and_tenancy(
        cluster, tenants, llm_tenancy, helm, tmp_path, request, profile, product, cache):
    if cache == "claim":
        model_cache, startup = {"existingClaim": request.getfixturevalue("model_cache_claim")}, {
            "periodSeconds": 15, "failureThreshold": 240}
        expected_startup = (15, 240)
    else:
        model_cache, startup, expected_startup = {"sizeLimit": "30Gi"}, None, (10, 180)  # the chart's LLM default
    release = Release(cluster, helm, f"llm-{profile}")
    try:
        release.install(deploy_values(tmp_path, profile), "-f", str(llm_overlay(tmp_path, model_cache, startup)))
        release.rollout_status()
        (pod,) = release.pods()
        spec = pod["spec"]
        (container,) = spec["containers"]
        assert pod["status"]["phase"] == "Running"

        # scheduled onto a fake GPU node of the profile's product, through its taint
        node = get_json(cluster, "node", spec["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == product
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 1
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in node["spec"]["taints"])
        assert GPU_TOLERATION in spec["tolerations"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"  # defaulted from the limit: quota counts it
        assert spec["priorityClassName"] == "kubeforge-gpu-training"
        annotations = pod["metadata"]["annotations"]
        assert annotations["kubeforge.io/profile"] == profile and annotations["kubeforge.io/adapters"] == "finetuned"

        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert all("subPath" not in m for m in mounts.values())
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
        cache_volume = volumes[mounts["/var/cache/kubeforge"]["name"]]
        if cache == "claim":
            assert cache_volume["persistentVolumeClaim"] == {"claimName": CACHE_CLAIM}
            claim = get_json(cluster, "pvc", CACHE_CLAIM, "-n", NAMESPACE)
            assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == CACHE_VOLUME
        else:
            assert cache_volume == {"name": cache_volume["name"], "emptyDir": {"sizeLimit": "30Gi"}}

        probe = container["startupProbe"]
        assert (probe["periodSeconds"], probe["failureThreshold"]) == expected_startup
        assert probe["httpGet"]["path"] == "/readyz"

        (hf_token,) = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
        assert hf_token["valueFrom"]["secretKeyRef"] == {"name": HF_SECRET, "key": "token", "optional": True}
        assert "token" in get_json(cluster, "secret", HF_SECRET, "-n", NAMESPACE)["data"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert env["KUBEFORGE_LLM_AUTH"] == "required"
        assert env["HF_HOME"].startswith("/var/cache/kubeforge/")
        settings = LLMServeConfig.from_env(env)  # what the service reads from exactly this pod's variables
        assert (settings.device, settings.dtype, settings.max_running) == ("cuda", "float16", 8)
        assert settings.adapters_dir == "/var/cache/kubeforge/adapters"

        # the tenancy files are directory mounts of the objects the tooling wrote, and the service accepts them:
        # the key `kubeforge tenant key add` printed authenticates as alpha, with the budgets of the overlays
        tenants_dir = env["KUBEFORGE_LLM_TENANTS_FILE"].rsplit("/", 1)[0]
        assert volumes[mounts[tenants_dir]["name"]]["configMap"]["name"] == TENANTS_CONFIGMAP
        assert volumes[mounts[env["KUBEFORGE_LLM_KEYS_DIR"]]["name"]]["secret"]["secretName"] == KEYS_SECRET
        assert mounts[tenants_dir]["readOnly"] and mounts[env["KUBEFORGE_LLM_KEYS_DIR"]]["readOnly"]
        tenancy = TenancySettings.from_env(projected(cluster, env, mounts, volumes, tmp_path / "pod"))
        assert tenancy.enabled and tenancy.budget_fraction == 1.0
        snapshot = load_snapshot(Path(tenancy.tenants_file), Path(tenancy.keys_dir))
        budgets = {name: dict(tokens_per_minute=t.tokens_per_minute, max_concurrent=t.max_concurrent, weight=t.weight)
                   for name, t in snapshot.policy.tenants.items()}
        assert budgets == LLM_BUDGETS
        key = llm_tenancy["key"]
        assert snapshot.keys.verify(key).tenant == "alpha"
        assert snapshot.keys.verify(key[:-1] + ("B" if key.endswith("A") else "A")) is None
    finally:
        release.uninstall()


def test_llm_release_without_llm_tenancy_renders_but_its_service_refuses_to_start(helm, tmp_path):
    """The chart does not refuse an LLM release without llmTenancy; KUBEFORGE_LLM_AUTH=required makes the service
    refuse to start instead (kwok runs no container, so the refusal is checked on the rendered environment)."""
    done = subprocess.run([helm, "template", "llm", str(CHART), "--namespace", NAMESPACE, "-f",
                           str(deploy_values(tmp_path, "gpu-t4"))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (deployment,) = [o for o in yaml.safe_load_all(done.stdout) if o and o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["KUBEFORGE_LLM_AUTH"] == "required" and "KUBEFORGE_LLM_TENANTS_FILE" not in env
    with pytest.raises(ConfigError, match="authentication is required but KUBEFORGE_LLM_TENANTS_FILE and "
                                          "KUBEFORGE_LLM_KEYS_DIR are not set"):
        TenancySettings.from_env(env)


def test_a_misspelt_llm_setting_is_refused_and_nothing_is_installed(cluster, tenants, helm, tmp_path):
    release = Release(cluster, helm, "llm-typo")
    try:
        refused = release.run("install", release.name, str(CHART), "-f", str(deploy_values(tmp_path, "gpu-t4")),
                              "--set", "llm.settings.max_runing=8", "--wait", "--timeout", "1m", check=False)
        assert refused.returncode != 0
        assert "max_runing" in refused.stderr and "llm/settings" in refused.stderr, refused.stderr
        assert release.run("status", release.name, check=False).returncode != 0
        assert get_json(cluster, "deployments", "-n", NAMESPACE, "-l",
                        f"app.kubernetes.io/instance={release.name}")["items"] == []
    finally:
        release.uninstall()
