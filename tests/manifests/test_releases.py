"""Every release committed under manifests/apps renders for both engines: Argo CD (the Application its app set
generates, and the chart rendered with its values) and Flux (validated with the kustomize builds)."""

import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.deploy.gitops import environments
from kubeforge.deploy.schemas import ARGOCD_CRDS, HTTPROUTE_CRD, SERVICE_MONITOR_CRD, validate_objects
from tests.kubeforge.deploy.conftest import argo_applications

ROOT = Path(__file__).resolve().parents[2]
RELEASES = sorted(p.parent for p in (ROOT / "manifests" / "apps").glob("*/*/*/values.yaml"))
TENANTS = sorted(p.name for p in (ROOT / "manifests" / "tenants").iterdir() if p.is_dir() and p.name != "base")


def test_the_repository_holds_at_least_one_release():
    assert RELEASES


@pytest.mark.parametrize("release", RELEASES, ids=[str(p.relative_to(ROOT / "manifests" / "apps")) for p in RELEASES])
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
