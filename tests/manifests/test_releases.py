"""Every release committed under manifests/apps renders for both engines: Argo CD (the Application its app set
generates, and the chart rendered with a Helm release's values) and Flux (validated with the kustomize builds, KServe
releases included)."""

import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.deploy.gitops import KSERVE_MANIFEST, environments
from kubeforge.deploy.schemas import ARGOCD_CRDS, HTTPROUTE_CRD, SERVICE_MONITOR_CRD, validate_objects
from tests.manifests.argocd import argo_applications

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "manifests" / "apps"
HELM_RELEASES = sorted(p.parent for p in APPS.glob("*/*/*/values.yaml"))
KSERVE_RELEASES = sorted(p.parent for p in APPS.glob(f"*/*/*/{KSERVE_MANIFEST}"))
RELEASES = sorted(HELM_RELEASES + KSERVE_RELEASES)
TENANTS = sorted(p.name for p in (ROOT / "manifests" / "tenants").iterdir() if p.is_dir() and p.name != "base")


def release_id(path: Path) -> str:
    return str(path.relative_to(APPS))


def test_the_repository_holds_at_least_one_release():
    assert HELM_RELEASES


def test_no_release_directory_is_both_kinds():
    assert not set(HELM_RELEASES) & set(KSERVE_RELEASES)


@pytest.mark.parametrize("release", HELM_RELEASES, ids=[release_id(p) for p in HELM_RELEASES])
def test_release_values_render_with_the_chart(helm, release):
    tenant = release.parents[1].name
    done = subprocess.run([helm, "template", release.name, str(ROOT / "charts" / "kubeforge-serving"),
                           "--namespace", tenant, "-f", str(release / "values.yaml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    assert validate_objects(objects, (SERVICE_MONITOR_CRD, HTTPROUTE_CRD)) == []
    assert any(o["kind"] == "Deployment" for o in objects)


@pytest.mark.parametrize("env", environments(ROOT))
def test_argo_applications_of_every_tenant_are_valid(env):
    applications = [a for tenant in TENANTS for a in argo_applications(ROOT, env, tenant)]
    expected = {f"{p.parents[1].name}-{p.name}" for p in RELEASES if p.parent.name == env}
    assert {a["metadata"]["name"] for a in applications} == expected
    assert validate_objects(applications, ARGOCD_CRDS) == []
