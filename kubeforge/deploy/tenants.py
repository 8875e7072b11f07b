"""Tenant onboarding as a reviewed git change: `kubeforge tenant add` writes a kustomize overlay (namespace, owner
group, quota), the tenant's Argo CD project and app set, its Flux objects and an empty release list per env;
nothing is applied with kubectl.

Files are generated deterministically, so a second identical call changes no byte; a hand-edited file is never
overwritten without ``force``, and the refusal shows the diff.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubeforge.config import DNS_LABEL, ConfigError
from kubeforge.deploy.gitops import (APPS_DIR, CHART_PATH, FLUX_ACCOUNT, FLUX_ENV_VARIABLE, FLUX_SOURCE,
                                     KSERVE_MANIFEST, env_kustomization, environments)

RESERVED = {"default", "kube-system", "kube-public", "kube-node-lease", "kubeflow", "argocd", "base", "monitoring",
            "ingress-nginx"}
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_FACTORS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_GPU_RESOURCE = re.compile(r"^nvidia\.com/(gpu|mig-[0-9]+g\.[0-9]+gb)$")
HEADER = "# Written by `kubeforge tenant add`; change it with the same command (--force overwrites hand edits).\n"
DEFAULT_REPO_URL = "https://git.example.com/platform/kubeforge-gitops.git"


class TenantError(ConfigError):
    """A tenant request was refused; nothing was written."""


@dataclass(frozen=True)
class TenantInfo:
    name: str
    owner: str
    gpus: int
    gpu_resource: str
    cpu: str
    memory: str
    kubeflow: bool = False
    queue: bool = False
    pod_security: str = "restricted"
    # the tenant's LLM budget (kubeforge.llm.tenancy): kept beside its quota, as annotations of its namespace object
    llm_tokens_per_minute: int | None = None
    llm_max_concurrent: int | None = None
    llm_weight: float = 1.0


LLM_ANNOTATIONS = {"llm_tokens_per_minute": "kubeforge.io/llm-tokens-per-minute",
                   "llm_max_concurrent": "kubeforge.io/llm-max-concurrent", "llm_weight": "kubeforge.io/llm-weight"}


def _llm_annotations(info: TenantInfo) -> dict[str, str]:
    if info.llm_tokens_per_minute is None:
        return {}
    weight = int(info.llm_weight) if info.llm_weight == int(info.llm_weight) else info.llm_weight
    return {LLM_ANNOTATIONS["llm_tokens_per_minute"]: str(info.llm_tokens_per_minute),
            LLM_ANNOTATIONS["llm_max_concurrent"]: str(info.llm_max_concurrent),
            LLM_ANNOTATIONS["llm_weight"]: str(weight)}


def check_llm_budget(name: str, tokens_per_minute: int | None, max_concurrent: int | None, weight: float) -> None:
    """Both budgets or neither; each a positive whole number, the weight positive (named by tenant)."""
    if (tokens_per_minute is None) != (max_concurrent is None):
        raise TenantError(f"tenant {name}: give both --llm-tokens-per-minute and --llm-max-concurrent (or neither)")
    for what, value in (("llm tokens per minute", tokens_per_minute), ("llm max concurrent", max_concurrent)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise TenantError(f"tenant {name}: {what} must be a whole number greater than 0, got {value!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise TenantError(f"tenant {name}: llm weight must be greater than 0, got {weight!r}")


# restricted by default; baseline lets the in-cluster image build run (Kaniko needs root), nothing laxer is offered
POD_SECURITY_LEVELS = ("restricted", "baseline")
POD_SECURITY_LABEL = "pod-security.kubernetes.io/enforce"


@dataclass(frozen=True)
class TenantResult:
    tenant: TenantInfo
    written: list[str]
    unchanged: list[str]


def parse_quantity(value: str, what: str) -> float:
    """A Kubernetes quantity as a number (cores, bytes); negative or malformed values are refused by name."""
    text = str(value).strip()
    if text.startswith("-"):
        raise TenantError(f"{what} must not be negative: {text!r}")
    match = _QUANTITY.match(text)
    if not match:
        raise TenantError(f"{what} {text!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    return float(match["number"]) * _FACTORS[match["suffix"] or ""]


def validate_name(name: str) -> None:
    if not DNS_LABEL.match(name) or len(name) > 63:
        raise TenantError(f"tenant name {name!r} is not a DNS-1123 label (lowercase letters, digits, '-', "
                          "at most 63 characters, starting and ending with a letter or digit)")
    if name in RESERVED or name.startswith("kube-"):
        raise TenantError(f"tenant name {name!r} is reserved")


def _hard(info: TenantInfo) -> dict[str, str]:
    cpu, memory = parse_quantity(info.cpu, "cpu"), parse_quantity(info.memory, "memory")
    del cpu, memory  # validated; the quota keeps the tenant's own spelling
    return {f"requests.{info.gpu_resource}": str(info.gpus), "requests.cpu": info.cpu, "limits.cpu": info.cpu,
            "requests.memory": info.memory, "limits.memory": info.memory, "pods": "100",
            "requests.storage": "500Gi"}


def _namespace(info: TenantInfo) -> str:
    """A plain labelled Namespace, or a Kubeflow Profile (its controller creates and labels the namespace)."""
    if info.kubeflow:
        document = {"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": info.name},
                    "spec": {"owner": {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": info.owner},
                             "resourceQuotaSpec": {"hard": _hard(info)}}}
        if _llm_annotations(info):
            document["metadata"]["annotations"] = _llm_annotations(info)
    else:
        document = {"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": info.name, "labels": {"pipelines.kubeflow.org/enabled": "true",
                                                               POD_SECURITY_LABEL: info.pod_security,
                                                               "app.kubernetes.io/part-of": "kubeforge"}}}
        if _llm_annotations(info):
            document["metadata"]["annotations"] = _llm_annotations(info)
    return HEADER + yaml.safe_dump(document, sort_keys=False)


NAMESPACE_FILES = {False: "namespace.yaml", True: "profile.yaml"}
LOCAL_QUEUE_FILE = "localqueue.yaml"
CLUSTER_QUEUE = "kubeforge-gpu"  # manifests/platform/components/kueue


def _local_queue(info: TenantInfo) -> str:
    """Workloads labelled kueue.x-k8s.io/queue-name: default queue in the platform's ClusterQueue."""
    return HEADER + yaml.safe_dump({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                                    "metadata": {"name": "default"}, "spec": {"clusterQueue": CLUSTER_QUEUE}},
                                   sort_keys=False)


def _overlay(info: TenantInfo, base: str, extra: list[str]) -> str:
    patches = [
        {"target": {"kind": "ResourceQuota", "name": "kubeforge-quota"},
         "patch": json.dumps([{"op": "replace", "path": "/spec/hard", "value": _hard(info)}])},
        {"target": {"kind": "RoleBinding", "name": "kubeforge-tenant"},
         "patch": json.dumps([{"op": "replace", "path": "/subjects/0/name", "value": info.owner}])},
    ]
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "namespace": info.name, "resources": [base, *extra],
                     "patches": patches,
                     "labels": [{"pairs": {"kubeforge.io/tenant": info.name}, "includeSelectors": False}]}
    return HEADER + yaml.safe_dump(kustomization, sort_keys=False, width=1000)


def _repo_url(root: Path) -> str:
    platform = root / "manifests" / "argocd" / "platform.yaml"
    if platform.is_file():
        for document in yaml.safe_load_all(platform.read_text()):
            if document and document.get("kind") == "AppProject":
                return document["spec"]["sourceRepos"][0]
    return DEFAULT_REPO_URL


HELM_RELEASE_FILE = "values.yaml"  # what marks a Helm release directory (a KServe one has KSERVE_MANIFEST)
RELEASE_KIND_LABEL = "kubeforge.io/release-kind"  # helm | kserve, on each generated Application
# Argo CD renders this Go template with each release's parameters and merges it into the Application: a KServe
# release replaces the chart sources by its own directory (whose kustomization lists the InferenceService). The
# label line keeps the patch from ever being empty.
_TEMPLATE_PATCH = """\
metadata:
  labels:
    LABEL: '{{ if IS_KSERVE }}kserve{{ else }}helm{{ end }}'
{{- if IS_KSERVE }}
spec:
  sources:
  - repoURL: REPO_URL
    targetRevision: main
    path: '{{ .path.path }}'
{{- end }}
"""


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the template patch) as literal blocks, readable in review."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _template_patch(repo_url: str) -> str:
    return (_TEMPLATE_PATCH.replace("LABEL", RELEASE_KIND_LABEL)
            .replace("IS_KSERVE", f"eq .path.filename {json.dumps(KSERVE_MANIFEST)}")
            .replace("REPO_URL", json.dumps(repo_url)))


def _argocd(info: TenantInfo, repo_url: str) -> str:
    """The tenant's project (its namespace only) and an app set making one Application per release directory.

    One git files generator finds both kinds of release: a Helm release (``values.yaml``) gets two sources, the
    chart from the GitOps repository and, as ``$values``, the release's promoted values; a KServe release
    (``inferenceservice.yaml``) gets the directory as its only source (``templatePatch``). The name stays
    ``<tenant>-<app>`` either way, so promoting a release to the other kind changes the same Application and its
    automated prune removes the old kind's objects. The env comes from a list generator that each cluster entry
    point patches (label ``kubeforge.io/component: tenant-apps``), so one file serves every cluster.
    """
    project = {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
               "metadata": {"name": info.name, "namespace": "argocd"},
               "spec": {"description": f"serving releases of tenant {info.name}", "sourceRepos": [repo_url],
                        "destinations": [{"server": "https://kubernetes.default.svc", "namespace": info.name}],
                        "clusterResourceWhitelist": [],
                        # the platform owns these; a release must not be able to loosen them
                        "namespaceResourceBlacklist": [{"group": "", "kind": "ResourceQuota"},
                                                       {"group": "", "kind": "LimitRange"},
                                                       {"group": "rbac.authorization.k8s.io", "kind": "Role"},
                                                       {"group": "rbac.authorization.k8s.io", "kind": "RoleBinding"}],
                        "roles": [{"name": "owners", "groups": [info.owner],
                                   "policies": [f"p, proj:{info.name}:owners, applications, *, {info.name}/*, "
                                                "allow"]}]}}
    chart_source = {"repoURL": repo_url, "targetRevision": "main", "path": CHART_PATH,
                    "helm": {"releaseName": "{{.path.basename}}",
                             "valueFiles": ["$values/{{.path.path}}/values.yaml"]}}
    values_source = {"repoURL": repo_url, "targetRevision": "main", "ref": "values"}
    releases = f"manifests/apps/{info.name}/{{{{.env}}}}/*"
    apps = {"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
            "metadata": {"name": f"apps-{info.name}", "namespace": "argocd",
                         "labels": {"kubeforge.io/component": "tenant-apps"}},
            "spec": {"goTemplate": True, "goTemplateOptions": ["missingkey=error"],
                     "generators": [{"matrix": {"generators": [
                         {"list": {"elements": [{"env": "dev"}]}},
                         {"git": {"repoURL": repo_url, "revision": "main",
                                  "files": [{"path": f"{releases}/{name}"}
                                            for name in (HELM_RELEASE_FILE, KSERVE_MANIFEST)]}}]}}],
                     "template": {"metadata": {"name": f"{info.name}-{{{{.path.basename}}}}",
                                               "labels": {"kubeforge.io/tenant": info.name}},
                                  "spec": {"project": info.name,  # fixed: a path can never pick another project
                                           "sources": [chart_source, values_source],
                                           "destination": {"server": "https://kubernetes.default.svc",
                                                           "namespace": info.name},
                                           "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}}},
                     "templatePatch": _template_patch(repo_url)}}
    return HEADER + yaml.dump_all([project, apps], Dumper=_BlockDumper, sort_keys=False, width=1000)


# What Flux may do in the tenant namespace acting as the tenant: the serving chart's objects and Helm's release
# secrets (helm-controller), the Flux objects and InferenceServices of the tenant's apps (kustomize-controller);
# never quotas, limits or RBAC.
_FLUX_RULES = [
    {"apiGroups": [""], "resources": ["configmaps", "secrets", "services", "serviceaccounts", "pods"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": ["autoscaling", "policy", "networking.k8s.io", "monitoring.coreos.com",
                   "gateway.networking.k8s.io"],
     "resources": ["horizontalpodautoscalers", "poddisruptionbudgets", "networkpolicies", "ingresses",
                   "servicemonitors", "httproutes"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": ["helm.toolkit.fluxcd.io"], "resources": ["helmreleases"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    # a KServe release: kustomize-controller server-side applies (patch; create when new), reads it for drift and
    # health, and prunes it (delete); it never sends a plain update
    {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
]


def _flux(info: TenantInfo, repo_url: str) -> str:
    """The tenant's Flux objects, all in its namespace and acting as its own ServiceAccount (impersonation)."""
    meta = {"namespace": info.name, "labels": {"kubeforge.io/tenant": info.name}}
    documents = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": FLUX_ACCOUNT, **meta},
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": FLUX_ACCOUNT, **meta},
         "rules": _FLUX_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": FLUX_ACCOUNT, **meta},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FLUX_ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": FLUX_ACCOUNT, "namespace": info.name}]},
        {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
         "metadata": {"name": FLUX_SOURCE, **meta},
         "spec": {"interval": "5m", "url": repo_url, "ref": {"branch": "main"}}},
        {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "metadata": {"name": "apps", **meta},
         "spec": {"interval": "10m", "prune": True, "targetNamespace": info.name,
                  "serviceAccountName": FLUX_ACCOUNT,
                  "sourceRef": {"kind": "GitRepository", "name": FLUX_SOURCE},
                  "path": f"./manifests/apps/{info.name}/${{{FLUX_ENV_VARIABLE}}}"}},
    ]
    return HEADER + yaml.safe_dump_all(documents, sort_keys=False, width=1000)


def _with_resource(path: Path, entry: str) -> str:
    data = yaml.safe_load(path.read_text()) if path.is_file() else {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": []}
    resources = sorted(set(data.get("resources") or []) | {entry})
    data["resources"] = resources
    comment = "".join(line + "\n" for line in path.read_text().splitlines() if line.startswith("#")) \
        if path.is_file() else ""
    return comment + yaml.safe_dump(data, sort_keys=False)


def add_tenant(repo_root: str | Path, name: str, *, gpus: int, cpu: str, memory: str, owner: str,
               gpu_resource: str = "nvidia.com/gpu", kubeflow: bool = False, queue: bool = False,
               pod_security: str = "restricted", force: bool = False, llm_tokens_per_minute: int | None = None,
               llm_max_concurrent: int | None = None, llm_weight: float = 1.0) -> TenantResult:
    """Write (or confirm) the tenant's overlay and Argo CD objects; every check runs before anything is written."""
    root = Path(repo_root)
    validate_name(name)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise TenantError(f"gpus must be a non-negative integer, got {gpus!r}")
    parse_quantity(cpu, "cpu")
    parse_quantity(memory, "memory")
    if not owner.strip():
        raise TenantError("owner (the tenant's group) must not be empty")
    if not _GPU_RESOURCE.match(gpu_resource):
        raise TenantError(f"gpu resource {gpu_resource!r} is not nvidia.com/gpu or a MIG resource "
                          "(nvidia.com/mig-<n>g.<m>gb)")
    if pod_security not in POD_SECURITY_LEVELS:
        raise TenantError(f"pod security level {pod_security!r} is not one of {', '.join(POD_SECURITY_LEVELS)}")
    if kubeflow and pod_security != "restricted":
        raise TenantError("--pod-security applies to plain namespaces; with --kubeflow the profile controller labels "
                          "the namespace (set the level in its namespace labels)")
    check_llm_budget(name, llm_tokens_per_minute, llm_max_concurrent, llm_weight)
    if not (root / "manifests" / "tenants" / "base" / "kustomization.yaml").is_file():
        raise TenantError(f"{root} has no manifests/tenants/base; run this in the GitOps repository")
    info = TenantInfo(name=name, owner=owner, gpus=gpus, gpu_resource=gpu_resource, cpu=cpu, memory=memory,
                      kubeflow=kubeflow, queue=queue, pod_security=pod_security,
                      llm_tokens_per_minute=llm_tokens_per_minute, llm_max_concurrent=llm_max_concurrent,
                      llm_weight=float(llm_weight))
    queued = [LOCAL_QUEUE_FILE] if queue else []
    overlay_dir = root / "manifests" / "tenants" / name
    if (overlay_dir / NAMESPACE_FILES[not kubeflow]).is_file() and not force:
        raise TenantError(f"tenant {name!r} exists {'without' if kubeflow else 'with'} a Kubeflow Profile; "
                          "rerun with --force to switch")
    if kubeflow:
        # kustomize does not know Profile is cluster-scoped and would namespace it: keep it one level up
        overlay = {overlay_dir / "namespaced" / "kustomization.yaml": _overlay(info, "../../base", queued),
                   overlay_dir / "kustomization.yaml": HEADER + yaml.safe_dump(
                       {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                        "resources": ["namespaced", "profile.yaml"]}, sort_keys=False),
                   overlay_dir / "profile.yaml": _namespace(info)}
    else:
        overlay = {overlay_dir / "kustomization.yaml": _overlay(info, "../base", ["namespace.yaml", *queued]),
                   overlay_dir / "namespace.yaml": _namespace(info)}
    if queue:
        overlay[(overlay_dir / "namespaced" if kubeflow else overlay_dir) / LOCAL_QUEUE_FILE] = _local_queue(info)
    planned = {
        **overlay,
        root / "manifests" / "argocd" / "tenants" / f"{name}.yaml": _argocd(info, _repo_url(root)),
        root / "manifests" / "tenants" / "kustomization.yaml":
            _with_resource(root / "manifests" / "tenants" / "kustomization.yaml", name),
        root / "manifests" / "argocd" / "kustomization.yaml":
            _with_resource(root / "manifests" / "argocd" / "kustomization.yaml", f"tenants/{name}.yaml"),
        root / "manifests" / "flux" / "tenants" / f"{name}.yaml": _flux(info, _repo_url(root)),
        root / "manifests" / "flux" / "tenants" / "kustomization.yaml":
            _with_resource(root / "manifests" / "flux" / "tenants" / "kustomization.yaml", f"{name}.yaml"),
    }
    for env in environments(root):  # Flux needs the path to exist; promotions fill it, so never overwrite it
        env_list = root / APPS_DIR / name / env / "kustomization.yaml"
        if not env_list.is_file():
            planned[env_list] = env_kustomization(name, [])
    conflicts = []
    for path, content in planned.items():
        generated = overlay_dir in path.parents or path.name != "kustomization.yaml"
        if generated and path.is_file() and path.read_text() != content and not force:
            diff = "".join(difflib.unified_diff(path.read_text().splitlines(True), content.splitlines(True),
                                                f"{path} (current)", f"{path} (kubeforge)"))
            conflicts.append(diff)
    if conflicts:
        raise TenantError(f"tenant {name!r} exists with different or hand-edited files; rerun with --force to "
                          "overwrite:\n" + "\n".join(conflicts))
    written, unchanged = [], []
    (overlay_dir / NAMESPACE_FILES[not kubeflow]).unlink(missing_ok=True)  # only reachable with --force
    if not kubeflow:
        shutil.rmtree(overlay_dir / "namespaced", ignore_errors=True)
    if not queue:
        for stale in (overlay_dir / LOCAL_QUEUE_FILE, overlay_dir / "namespaced" / LOCAL_QUEUE_FILE):
            stale.unlink(missing_ok=True)
    for path, content in planned.items():
        if path.is_file() and path.read_text() == content:
            unchanged.append(str(path.relative_to(root)))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written.append(str(path.relative_to(root)))
    return TenantResult(tenant=info, written=written, unchanged=unchanged)


def list_tenants(repo_root: str | Path) -> list[TenantInfo]:
    tenants = []
    for overlay in sorted((Path(repo_root) / "manifests" / "tenants").glob("*/kustomization.yaml")):
        if overlay.parent.name == "base":
            continue
        patched = overlay.parent / "namespaced" / "kustomization.yaml"
        data = yaml.safe_load((patched if patched.is_file() else overlay).read_text())
        patches = {p["target"]["kind"]: json.loads(p["patch"])[0]["value"] for p in data.get("patches", [])}
        hard = patches.get("ResourceQuota", {})
        gpu_key = next((k for k in hard if k.startswith("requests.nvidia.com/")), "requests.nvidia.com/gpu")
        tenants.append(TenantInfo(name=overlay.parent.name, owner=patches.get("RoleBinding", "?"),
                                  gpus=int(hard.get(gpu_key, 0)), gpu_resource=gpu_key.removeprefix("requests."),
                                  cpu=hard.get("requests.cpu", "?"), memory=hard.get("requests.memory", "?"),
                                  kubeflow=(overlay.parent / NAMESPACE_FILES[True]).is_file(),
                                  queue=any(overlay.parent.rglob(LOCAL_QUEUE_FILE)),
                                  pod_security=_pod_security(overlay.parent), **_llm_budget(overlay.parent)))
    return tenants


def _llm_budget(overlay_dir: Path) -> dict:
    """The LLM budget annotations of the tenant's Namespace or Profile, as TenantInfo fields."""
    for name in NAMESPACE_FILES.values():
        if (overlay_dir / name).is_file():
            metadata = yaml.safe_load((overlay_dir / name).read_text()).get("metadata") or {}
            annotations = metadata.get("annotations") or {}
            found = {field: annotations[key] for field, key in LLM_ANNOTATIONS.items() if key in annotations}
            try:
                return {field: float(v) if field == "llm_weight" else int(v) for field, v in found.items()}
            except ValueError:
                raise TenantError(f"tenant {overlay_dir.name}: an LLM budget annotation is not a number: "
                                  f"{found}") from None
    return {}


def _pod_security(overlay_dir: Path) -> str:
    namespace = overlay_dir / NAMESPACE_FILES[False]
    if not namespace.is_file():
        return "restricted"  # a Kubeflow Profile: the profile controller decides
    labels = (yaml.safe_load(namespace.read_text()).get("metadata") or {}).get("labels") or {}
    return labels.get(POD_SECURITY_LABEL, "restricted")


def total_quota(tenants: list[TenantInfo]) -> dict[str, float]:
    """Sum of the tenants' quotas (cores, bytes, GPUs per resource): what the cluster must hold to honour them all."""
    totals: dict[str, float] = {"cpu": 0.0, "memory": 0.0}
    for tenant in tenants:
        totals["cpu"] += parse_quantity(tenant.cpu, "cpu")
        totals["memory"] += parse_quantity(tenant.memory, "memory")
        totals[tenant.gpu_resource] = totals.get(tenant.gpu_resource, 0) + tenant.gpus
    return totals
