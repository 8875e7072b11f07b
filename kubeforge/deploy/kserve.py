"""A KServe InferenceService for a run: the Bento image as KServe's custom predictor, for clusters that serve through
KServe instead of the kubeforge-serving chart.

It is rendered from the very chart values `kubeforge deploy values` writes (values_for_run), translated the way the
chart's Deployment template reads them, so both paths place, size and configure the server identically: one
scheduling profile, one ServeConfig environment, one security context.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from kubeforge.config import ConfigError, PlatformConfig, SchedulingProfile, ServeConfig
from kubeforge.deploy.schemas import KSERVE_CRD, validate_objects
from kubeforge.deploy.values import GFD_PRODUCT_LABEL, values_for_run

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
PREDICTOR_CONTAINER = "kserve-container"  # KServe takes the container of this name as the custom predictor
PROTOCOL_ENV = "PROTOCOL"  # a custom predictor's protocol (KServe's CustomSpecProtocolEnvVarKey); v1 when absent
PROTOCOL = "v2"  # Open Inference Protocol: /v2/health/*, /v2/models/{name}[/ready|/infer]
BENTO_PORT = 3000  # the port BentoML serves on in the Bento image (the chart's containerPort)
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
DeploymentMode = Literal["Standard", "Knative"]
# KServe checks names against [a-z]([-a-z0-9]*[a-z0-9])?; Knative names revisions <name>-predictor-00001, which must
# stay a 63-character DNS label
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_NAME_LIMIT = 63 - len("-predictor-00001")

# charts/kubeforge-serving/values.yaml defaults: the restricted Pod Security Standard with a read-only root
# filesystem, so the server gets writable emptyDirs where BentoML writes (tests/kubeforge/deploy keeps them equal)
POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": 1034, "runAsGroup": 1034, "fsGroup": 1034,
                        "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                              "capabilities": {"drop": ["ALL"]}}
WRITABLE_DIRS = {"tmp": "/tmp", "bentoml-tmp": "/home/bentoml/tmp"}
GPU_TAINT_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class KServeOptions:
    """How KServe runs the predictor: replica bounds (an HPA between them in Standard mode) and the deployment mode
    (Standard: a Deployment; Knative: a Knative Service, the only mode that scales to zero)."""
    min_replicas: int = 1
    max_replicas: int = 1
    deployment_mode: DeploymentMode = "Standard"

    def check(self) -> None:
        if self.deployment_mode not in ("Standard", "Knative"):
            raise ConfigError(f"deployment mode {self.deployment_mode!r} is not Standard or Knative")
        lowest = 0 if self.deployment_mode == "Knative" else 1
        if self.min_replicas < lowest:
            raise ConfigError(f"min replicas {self.min_replicas} is below {lowest}"
                              + ("" if lowest == 0 else ": scaling to zero needs the Knative deployment mode"))
        if self.max_replicas < max(self.min_replicas, 1):
            raise ConfigError(f"max replicas {self.max_replicas} is below min replicas {self.min_replicas} (or 1)")


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name) or len(name) > _NAME_LIMIT:
        raise ConfigError(f"InferenceService name {name!r} must be a DNS-1035 label (lowercase letters, digits, '-', "
                          f"starting with a letter) of at most {_NAME_LIMIT} characters")


def image_reference(image: dict[str, str]) -> str:
    """The chart's image values as one reference; KServe has no chart appVersion to fall back on."""
    if image.get("digest"):
        return f"{image['repository']}@{image['digest']}"
    if image.get("tag"):
        return f"{image['repository']}:{image['tag']}"
    raise ConfigError(f"image {image['repository']!r} needs a tag or a digest for KServe (nothing would pin it)")


def _resources(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    resources = {part: dict(amounts) for part, amounts in values["resources"].items()}
    gpu = values["gpu"]
    if gpu["enabled"]:
        resources.setdefault("limits", {})[gpu["resource"]] = str(gpu["count"])  # extended: requests follow limits
    return resources


def _placement(values: dict[str, Any]) -> dict[str, Any]:
    gpu = values["gpu"]
    node_selector = dict(values.get("nodeSelector", {}))
    tolerations = list(values.get("tolerations", []))
    if gpu["enabled"] and gpu.get("product"):
        node_selector[GFD_PRODUCT_LABEL] = gpu["product"]
    if gpu["enabled"] and gpu.get("tolerateGpuTaint"):
        tolerations.append(dict(GPU_TAINT_TOLERATION))
    placement: dict[str, Any] = {}
    if node_selector:
        placement["nodeSelector"] = node_selector
    if tolerations:
        placement["tolerations"] = tolerations
    if values.get("priorityClassName"):
        placement["priorityClassName"] = values["priorityClassName"]
    return placement


def _environment(values: dict[str, Any]) -> list[dict[str, str]]:
    # as the chart: an LLM Bento behind this object never runs without API keys
    env = {**ServeConfig(**values["serving"]).to_env(), PROTOCOL_ENV: PROTOCOL, "TMPDIR": "/tmp",
           "KUBEFORGE_LLM_AUTH": "required"}
    if values["gpu"]["enabled"]:
        # as in the chart: the device plugin already exposes exactly the pod's GPUs; BentoML must not re-assign them
        env["BENTOML_DISABLE_GPU_ALLOCATION"] = "true"
    return [{"name": name, "value": value} for name, value in env.items()]


def _container(values: dict[str, Any]) -> dict[str, Any]:
    def probe(path: str, period: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": BENTO_PORT}, "periodSeconds": period, "failureThreshold": 3}

    return {"name": PREDICTOR_CONTAINER, "image": image_reference(values["image"]),
            # Knative accepts only the port names http1 and h2c; Standard mode maps service port 80 to it
            "ports": [{"name": "http1", "containerPort": BENTO_PORT, "protocol": "TCP"}],
            "env": _environment(values), "resources": _resources(values),
            # /livez is up while the model loads (it fails only when loading failed), so no startup probe is needed
            "readinessProbe": probe("/readyz", 5), "livenessProbe": probe("/livez", 10),
            "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
            "volumeMounts": [{"name": name, "mountPath": path} for name, path in WRITABLE_DIRS.items()]}


def inference_service_from_values(values: dict[str, Any], *, name: str, namespace: str | None = None,
                                  options: KServeOptions | None = None) -> dict[str, Any]:
    """The InferenceService that serves what the chart would serve with ``values``."""
    options = options or KServeOptions()
    check_name(name)
    options.check()
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/name": "kubeforge-serving", "app.kubernetes.io/instance": name,
                          "app.kubernetes.io/part-of": "kubeforge", "app.kubernetes.io/managed-by": "kubeforge"}
    metadata["annotations"] = {DEPLOYMENT_MODE_ANNOTATION: options.deployment_mode}
    predictor: dict[str, Any] = {
        "minReplicas": options.min_replicas, "maxReplicas": options.max_replicas,
        "annotations": dict(values.get("podAnnotations", {})),  # KServe puts them on the predictor's pods
        "automountServiceAccountToken": False,  # the server never calls the API
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT), **_placement(values),
        "containers": [_container(values)],
        "volumes": [{"name": volume, "emptyDir": {}} for volume in WRITABLE_DIRS]}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": {"predictor": predictor}}


def inference_service(source: str | Path, profile: SchedulingProfile, image: str, *, name: str,
                      serve: ServeConfig | None = None, namespace: str | None = None,
                      options: KServeOptions | None = None) -> dict[str, Any]:
    """The InferenceService for the model of ``source`` (a run or model directory) placed by ``profile``."""
    check_name(name)  # settings errors first, before the model is read
    (options or KServeOptions()).check()
    values = values_for_run(source, profile, image, serve)
    return inference_service_from_values(values, name=name, namespace=namespace, options=options)


def to_yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Errors against KServe's InferenceService CRD, unknown fields included (needs Go and the module proxy)."""
    return validate_objects([obj], (KSERVE_CRD,), builtin=False)


def render_inference_service(source: str | Path, platform: PlatformConfig, profile: str | None, image: str, *,
                             name: str, serve: ServeConfig | None = None, namespace: str | None = None,
                             options: KServeOptions | None = None) -> tuple[dict[str, Any], str]:
    """`kubeforge deploy kserve`: the object and its YAML, with the profile's name in a leading comment."""
    chosen = platform.profile(profile or platform.default_profile)
    obj = inference_service(source, chosen, image, name=name, serve=serve, namespace=namespace, options=options)
    return obj, f"# kubeforge deploy kserve: profile {chosen.name}\n" + to_yaml(obj)
