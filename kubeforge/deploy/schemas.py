"""Offline, strict validation of Kubernetes objects against the official OpenAPI v3 documents of a pinned Kubernetes
release, and of custom resources against their CRDs' openAPIV3Schema.

The documents come from Go modules through the Go module proxy (`go mod download`): k8s.io/kubernetes carries
api/openapi-spec/v3, and operator modules carry their CRD YAML. Nothing is committed. Unknown fields are errors, as
with `kubectl apply --validate=strict`.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

KUBERNETES_VERSION = "v1.37.2"  # the current minor release
SERVICE_MONITOR_CRD = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0",
                       "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml")
ARGOCD_CRDS = tuple(("github.com/argoproj/argo-cd/v3", "v3.5.3", f"manifests/crds/{name}-crd.yaml")
                    for name in ("application", "applicationset", "appproject"))
KUEUE_CRDS = tuple(("sigs.k8s.io/kueue", "v0.17.0", f"config/components/crd/bases/kueue.x-k8s.io_{name}.yaml")
                  for name in ("resourceflavors", "clusterqueues", "localqueues"))
# Flux: the controllers' root modules carry config/crd/bases. The versions are the newest the module proxy serves
# for the Go toolchain here (newer kustomize/source-controller releases need go >= 1.27; newer helm-controller
# releases are not served); HelmRelease v2 and the v1 Kustomization/GitRepository/OCIRepository APIs are current.
FLUX_CRDS = (
    ("github.com/fluxcd/source-controller", "v1.9.6", "config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml"),
    ("github.com/fluxcd/source-controller", "v1.9.6", "config/crd/bases/source.toolkit.fluxcd.io_ocirepositories.yaml"),
    ("github.com/fluxcd/kustomize-controller", "v1.9.6",
     "config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml"),
    ("github.com/fluxcd/helm-controller", "v1.4.0", "config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml"),
)
HTTPROUTE_CRD = ("sigs.k8s.io/gateway-api", "v1.3.0", "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml")
# KServe: the root module carries the full CRDs (every PodSpec field spelled out; config/crd/minimal drops them).
# v0.20.0 is the newest release the module proxy serves; InferenceService v1beta1 is its only version.
KSERVE_CRD = ("github.com/kserve/kserve", "v0.20.0", "config/crd/full/serving.kserve.io_inferenceservices.yaml")


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: KServe's 2 MB CRD loads in 2 s, not 7


def _load_crd(module: str, version: str, path: str) -> dict:
    return yaml.load((go_module_dir(module, version) / path).read_text(), Loader=_YAML_LOADER)  # noqa: S506 - safe


class SchemaSourceError(RuntimeError):
    """The schemas could not be obtained (no Go toolchain or no module proxy)."""


def go_module_dir(module: str, version: str) -> Path:
    """Download (or reuse from the module cache) a Go module and return its directory."""
    try:
        done = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True,
                              text=True, timeout=600)
    except FileNotFoundError:
        raise SchemaSourceError("the Go toolchain is needed to fetch schemas from the Go module proxy") from None
    info = json.loads(done.stdout or "{}")
    if done.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise SchemaSourceError(f"go mod download {module}@{version} failed: {info.get('Error') or done.stderr}")
    return Path(info["Dir"])


def _strict(node: Any) -> Any:
    """Forbid unknown fields wherever a schema lists its properties and does not opt out."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 `nullable` becomes a JSON Schema type union; everything else carries over."""
    if isinstance(node, dict):
        node = {key: _openapi_to_jsonschema(value) for key, value in node.items()}
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"] if isinstance(node["type"], str) else [*node["type"], "null"]
        return node
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    return node


class KubernetesSchemas:
    """Validators per (apiVersion, kind) for built-in kinds and for the CRDs given."""

    def __init__(self, openapi_dir: Path | None, crds: Iterable[dict] = ()):
        schemas: dict[str, Any] = {}
        for path in sorted(openapi_dir.glob("*_openapi.json")) if openapi_dir else ():
            schemas.update(json.loads(path.read_text()).get("components", {}).get("schemas", {}))
        document = {"components": {"schemas": _strict(_openapi_to_jsonschema(schemas))}}
        self._registry = Registry().with_resource("urn:k8s", Resource.from_contents(
            document, default_specification=DRAFT202012))
        self._builtin: dict[tuple[str, str], str] = {}
        for name, schema in schemas.items():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
                self._builtin.setdefault((api_version, gvk["kind"]), name)
        self._crds: dict[tuple[str, str], dict] = {}
        for crd in crds:
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema", {})
                self._crds[(f"{group}/{version['name']}", kind)] = _strict(_openapi_to_jsonschema(schema))

    @lru_cache(maxsize=None)  # noqa: B019 - one instance per session, validators are expensive to build
    def _validator(self, api_version: str, kind: str) -> Draft202012Validator | None:
        if (api_version, kind) in self._crds:
            schema = copy.deepcopy(self._crds[(api_version, kind)])
            schema.setdefault("properties", {}).update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                                        "metadata": {"type": "object"}})
            return Draft202012Validator(schema)
        name = self._builtin.get((api_version, kind))
        if name is None:
            return None
        return Draft202012Validator({"$ref": f"urn:k8s#/components/schemas/{name}"}, registry=self._registry)

    def errors(self, obj: dict) -> list[str]:
        kind, api_version = obj.get("kind", "?"), obj.get("apiVersion", "?")
        label = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
        validator = self._validator(api_version, kind)
        if validator is None:
            return [f"{label}: no schema for {api_version} {kind}"]
        return [f"{label}: {'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
                for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]


@lru_cache(maxsize=4)
def kubernetes_schemas(extra_crds: tuple[tuple[str, str, str], ...] = ()) -> KubernetesSchemas:
    openapi = go_module_dir("k8s.io/kubernetes", KUBERNETES_VERSION) / "api" / "openapi-spec" / "v3"
    return KubernetesSchemas(openapi, [_load_crd(*crd) for crd in extra_crds])


@lru_cache(maxsize=4)
def custom_resource_schemas(crds: tuple[tuple[str, str, str], ...]) -> KubernetesSchemas:
    """Validators for custom resources only: no k8s.io/kubernetes download, for CRDs that embed the pod schema."""
    return KubernetesSchemas(None, [_load_crd(*crd) for crd in crds])


def validate_objects(objects: Iterable[dict], crds: tuple[tuple[str, str, str], ...] = (), *,
                     builtin: bool = True) -> list[str]:
    """All schema errors of ``objects``, each naming kind/name and the field path; empty when all are valid.
    ``builtin=False`` knows only the CRDs given (built-in kinds are then reported as having no schema)."""
    schemas = kubernetes_schemas(tuple(crds)) if builtin else custom_resource_schemas(tuple(crds))
    return [error for obj in objects if obj for error in schemas.errors(obj)]
