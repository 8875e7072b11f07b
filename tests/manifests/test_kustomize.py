"""Every overlay and cluster entry point builds with `kubectl kustomize` and validates strictly offline."""

import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.deploy.schemas import ARGOCD_CRDS, KUEUE_CRDS, validate_objects

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
ENTRY_POINTS = sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml") if p.parent.name != "base")


def build(path: Path) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [o for o in yaml.safe_load_all(done.stdout) if o]


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=[str(p.relative_to(MANIFESTS)) for p in ENTRY_POINTS])
def test_builds_and_validates(path):
    objects = build(path)
    assert objects
    assert validate_objects(objects, ARGOCD_CRDS + KUEUE_CRDS) == []


def test_prod_has_kueue_flavors_for_the_profiles_gpu_products():
    from kubeforge.config import load_platform

    objects = build(MANIFESTS / "clusters" / "prod")
    flavors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ResourceFlavor"}
    for profile in load_platform().profiles:
        if profile.uses_gpu and profile.name in flavors:
            assert flavors[profile.name]["spec"]["nodeLabels"] == profile.node_selector
    assert {"gpu-t4", "gpu-a100"} <= set(flavors)
    assert [o for o in objects if o["kind"] == "ClusterQueue"]


def test_tenant_with_a_queue_gets_a_local_queue(tmp_path):
    import shutil

    from kubeforge.deploy.tenants import add_tenant

    shutil.copytree(MANIFESTS / "tenants" / "base", tmp_path / "manifests" / "tenants" / "base")
    add_tenant(tmp_path, "team-q", gpus=1, cpu="4", memory="16Gi", owner="q", queue=True)
    objects = build(tmp_path / "manifests" / "tenants" / "team-q")
    (queue,) = [o for o in objects if o["kind"] == "LocalQueue"]
    assert queue["metadata"]["namespace"] == "team-q" and queue["spec"]["clusterQueue"] == "kubeforge-gpu"
    assert validate_objects(objects, KUEUE_CRDS) == []


def test_tenant_overlay_is_namespaced_with_its_quota_and_owner():
    objects = build(MANIFESTS / "tenants" / "team-a")
    (namespace,) = [o for o in objects if o["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == "team-a"
    assert namespace["metadata"]["labels"]["pipelines.kubeflow.org/enabled"] == "true"
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"team-a"}
    (quota,) = [o for o in objects if o["kind"] == "ResourceQuota"]
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "4"
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["name"] == "team-a-engineers"
    kinds = {o["kind"] for o in objects}
    assert {"LimitRange", "NetworkPolicy", "Role", "ServiceAccount"} <= kinds


def test_mig_tenant_quota_uses_the_mig_resource():
    (quota,) = [o for o in build(MANIFESTS / "tenants" / "team-b") if o["kind"] == "ResourceQuota"]
    assert quota["spec"]["hard"]["requests.nvidia.com/mig-1g.10gb"] == "2"
    assert "requests.nvidia.com/gpu" not in quota["spec"]["hard"]


def test_app_sets_fix_the_project_per_tenant():
    objects = build(MANIFESTS / "argocd")
    app_sets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ApplicationSet"}
    assert app_sets["apps-team-a"]["spec"]["template"]["spec"]["project"] == "team-a"
    assert "{{" not in app_sets["apps-team-a"]["spec"]["template"]["spec"]["project"]
    projects = {o["metadata"]["name"]: o for o in objects if o["kind"] == "AppProject"}
    assert projects["team-a"]["spec"]["destinations"] == [{"server": "https://kubernetes.default.svc",
                                                           "namespace": "team-a"}]


def test_kubeflow_tenant_gets_a_profile_instead_of_a_namespace(tmp_path):
    """No published Go module ships the Kubeflow Profile CRD, so its shape is asserted here; the other objects are
    validated strictly. The cluster tests install the CRD to have the API server check it."""
    import shutil

    from kubeforge.deploy.tenants import add_tenant

    shutil.copytree(MANIFESTS / "tenants" / "base", tmp_path / "manifests" / "tenants" / "base")
    add_tenant(tmp_path, "team-kf", gpus=1, cpu="4", memory="16Gi", owner="team-kf-engineers", kubeflow=True)
    objects = build(tmp_path / "manifests" / "tenants" / "team-kf")
    (profile,) = [o for o in objects if o["kind"] == "Profile"]
    assert not [o for o in objects if o["kind"] == "Namespace"]
    assert profile["metadata"]["name"] == "team-kf" and "namespace" not in profile["metadata"]
    assert profile["spec"]["owner"] == {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                                        "name": "team-kf-engineers"}
    assert profile["spec"]["resourceQuotaSpec"]["hard"]["requests.nvidia.com/gpu"] == "1"
    assert validate_objects([o for o in objects if o["kind"] != "Profile"]) == []
