import json
import subprocess

import pytest
import yaml

from kubeforge.config import ServeConfig
from kubeforge.deploy.schemas import HTTPROUTE_CRD, SERVICE_MONITOR_CRD, validate_objects
from tests.charts.conftest import CHART, by_kind, pod_spec

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRDS = (SERVICE_MONITOR_CRD, HTTPROUTE_CRD)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["defaults", *[p.stem for p in CI_VALUES]])
def test_lint_strict(helm, values):
    args = [helm, "lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_every_rendered_object_is_valid_kubernetes(render, values):
    objects = render.objects("-f", str(values))
    assert validate_objects(objects, CRDS) == []


def test_production_values_render_the_optional_objects(render):
    objects = render.objects("-f", str(CHART / "ci" / "production-values.yaml"))
    kinds = {o["kind"] for o in objects}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"} <= kinds
    assert "replicas" not in by_kind(objects, "Deployment")[0]["spec"]  # the HPA owns the replica count
    image = pod_spec(objects)["containers"][0]["image"]
    assert image.endswith("@sha256:" + "0" * 64)
    sources = by_kind(objects, "NetworkPolicy")[0]["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}}} in sources


def test_ingress_and_httproute(render):
    objects = render.objects("-f", str(CHART / "ci" / "ingress-values.yaml"))
    assert by_kind(objects, "Ingress")[0]["spec"]["rules"][0]["host"] == "classifier.team-a.example.com"
    assert by_kind(objects, "HTTPRoute")[0]["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_cpu_only_has_no_gpu_anything(render):
    spec = pod_spec(render.objects("-f", str(CHART / "ci" / "cpu-values.yaml")))
    container = spec["containers"][0]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert not any(key.startswith("nvidia.com/") for key in container["resources"].get("limits", {}))
    assert "BENTOML_DISABLE_GPU_ALLOCATION" not in {e["name"] for e in container["env"]}


@pytest.mark.parametrize("values, resource, selector", [
    ("gpu-values.yaml", "nvidia.com/gpu", {"nvidia.com/gpu.product": "Tesla-T4"}),
    ("mig-values.yaml", "nvidia.com/mig-1g.10gb", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
])
def test_gpu_selector_toleration_and_limit_exactly_when_asked(render, values, resource, selector):
    spec = pod_spec(render.objects("-f", str(CHART / "ci" / values)))
    container = spec["containers"][0]
    assert spec["nodeSelector"] == selector
    assert spec["tolerations"] == [GPU_TOLERATION]
    assert container["resources"]["limits"][resource] == 1
    assert [k for k in container["resources"]["limits"] if k.startswith("nvidia.com/")] == [resource]
    assert {"name": "BENTOML_DISABLE_GPU_ALLOCATION", "value": "true"} in container["env"]


def test_cloud_label_presets(render):
    spec = pod_spec(render.objects("--set", "gpu.enabled=true", "--set", "gpu.count=1", "--set",
                                   "gpu.product=nvidia-tesla-t4", "--set", "gpu.productLabelPreset=gke"))
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}


def test_restricted_security_defaults(render):
    objects = render.objects()
    spec = pod_spec(objects)
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert spec["automountServiceAccountToken"] is False
    assert by_kind(objects, "ServiceAccount")[0]["automountServiceAccountToken"] is False
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}
    assert container["resources"]["requests"]  # quotas refuse pods without requests
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_serving_values_are_exactly_the_serve_config(render):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values["serving"]) == set(ServeConfig.model_fields)
    assert set(schema["properties"]["serving"]["properties"]) == set(ServeConfig.model_fields)
    env = {e["name"]: e["value"] for e in pod_spec(render.objects())["containers"][0]["env"]}
    def as_rendered(value: str) -> str:  # YAML numbers come out without a trailing ".0"
        try:
            return str(int(float(value))) if float(value).is_integer() else value
        except ValueError:
            return value

    assert {k: v for k, v in env.items() if k.startswith("KUBEFORGE_SERVE_")} == {
        k: as_rendered(v) for k, v in ServeConfig().to_env().items()}
    assert ServeConfig.from_env(env) == ServeConfig()


def test_admission_settings_reach_the_pod(render):
    env = {e["name"]: e["value"] for e in pod_spec(render.objects(
        "--set", "serving.limit_mode=fixed", "--set", "serving.max_queue=32", "--set", "serving.model_name=digits",
        "--set-json", "serving.latency_target_ms=2.5"))["containers"][0]["env"]}
    config = ServeConfig.from_env(env)
    assert (config.limit_mode, config.max_queue, config.model_name) == ("fixed", 32, "digits")
    assert config.latency_target_ms == 2.5  # sized from a measured median, not rounded up to whole ms


def test_the_hpa_scales_on_admission_metrics_only_when_asked(render):
    (hpa,) = by_kind(render.objects("-f", str(CHART / "ci" / "production-values.yaml")), "HorizontalPodAutoscaler")
    pods = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert pods == {"kubeforge_admission_in_flight": {"type": "AverageValue", "averageValue": "48"},
                    "kubeforge_admission_shed_per_second": {"type": "AverageValue", "averageValue": "0.5"}}
    (plain,) = by_kind(render.objects("--set", "autoscaling.enabled=true"), "HorizontalPodAutoscaler")
    assert [m["type"] for m in plain["spec"]["metrics"]] == ["Resource"]


def test_helm_test_hook_calls_readyz(render):
    (hook,) = [o for o in render.objects() if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert "/readyz" in hook["spec"]["containers"][0]["args"][0]


@pytest.mark.parametrize("args, message", [
    (["--set", "gpu.count=2"], "gpu.count is 2 but gpu.enabled is false"),
    (["--set", "gpu.enabled=true"], "gpu.enabled is true but gpu.count is 0"),
    (["--set", "gpu.product=Tesla-T4"], 'gpu.product is "Tesla-T4" but gpu.enabled is false'),
    (["--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=5", "--set",
      "autoscaling.maxReplicas=2"], "autoscaling.minReplicas (5) is greater than autoscaling.maxReplicas (2)"),
    (["--set", "podDisruptionBudget.enabled=true"], "minAvailable (1) with 1 replica(s) would block every eviction"),
    (["--set", "podDisruptionBudget.enabled=true", "--set", "podDisruptionBudget.minAvailable=",
      "--set-string", "podDisruptionBudget.maxUnavailable=0"], "maxUnavailable 0 would block every eviction"),
    (["--set", "image.tag=1.0", "--set", "image.digest=sha256:" + "a" * 64], "image.tag and image.digest are both"),
    (["--set", "networkPolicy.enabled=true"], "would block every client"),
    (["--set", "ingress.enabled=true"], "ingress.enabled needs ingress.host"),
    (["--set", "httpRoute.enabled=true"], "needs at least one httpRoute.parentRefs"),
])
def test_guardrails_refuse_contradictions(render, args, message):
    assert message in render.error(*args)


@pytest.mark.parametrize("args, message", [
    (["--set", "replicaCount=two"], "/replicaCount': got string, want integer"),
    (["--set", "serving.workerz=2"], "additional properties 'workerz' not allowed"),
    (["--set", "gpu.resource=amd.com/gpu"], "/gpu/resource"),
    (["--set", "unknownTopLevel=1"], "additional properties 'unknownTopLevel' not allowed"),
    (["--set", "image.digest=latest"], "/image/digest"),
    (["--set", "serving.limit_mode=sometimes"], "/serving/limit_mode"),
    (["--set", "serving.model_name=Not_A_Label"], "/serving/model_name"),
])
def test_schema_rejects_wrong_types_and_unknown_keys(render, args, message):
    assert message in render.error(*args)


def test_llm_values_render_the_llmserveconfig_env_cache_shm_and_long_startup(render):
    from kubeforge.llm.settings import LLMServeConfig

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["llm"]["properties"]["settings"]
    assert set(schema["properties"]) == set(LLMServeConfig.model_fields) and schema["additionalProperties"] is False
    spec = pod_spec(render.objects("-f", str(CHART / "ci" / "llm-values.yaml")))
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    settings = LLMServeConfig.from_env({k: v for k, v in env.items() if v is not None})
    assert settings.device == "cuda" and settings.max_running == 16
    assert "HF_TOKEN" in env and spec["containers"][0]["startupProbe"]["failureThreshold"] == 180
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "llm-model-cache"
    assert "dshm" not in {v["name"] for v in pod_spec(render.objects())["volumes"]}
