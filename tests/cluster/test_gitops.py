"""What the GitOps engines sync is accepted by a real API server (`--dry-run=server`, strict fields): the cluster
entry points (manifests/clusters/* for Argo CD, manifests/flux/clusters/* for Flux), the Flux tenant objects and the
promoted apps, with the CRDs they use (Argo CD, Kueue, Flux) installed from the operators' Go modules at test time."""

import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.deploy.schemas import ARGOCD_CRDS, FLUX_CRDS, KUEUE_CRDS, go_module_dir
from tests.cluster.conftest import CHART, MANIFESTS, apply, dump, install_crds, kustomize

pytestmark = pytest.mark.cluster


def _has_content(kustomization: Path) -> bool:
    """An env of a tenant nothing was promoted to yet lists no resources: there is nothing to apply."""
    data = yaml.safe_load(kustomization.read_text()) or {}
    return any(data.get(key) for key in ("resources", "components", "configMapGenerator", "secretGenerator"))


ENTRY_POINTS = sorted(path.parent for path in [
    *(MANIFESTS / "clusters").glob("*/kustomization.yaml"),
    *(MANIFESTS / "flux" / "clusters").glob("*/kustomization.yaml"),
    *(MANIFESTS / "flux" / "tenants").glob("kustomization.yaml"),
    *(MANIFESTS / "apps").glob("*/*/kustomization.yaml"),
] if _has_content(path))


@pytest.fixture(scope="module")
def operator_crds(cluster) -> None:
    """Argo CD, Kueue and Flux CRDs, installed for real."""
    install_crds(cluster, [yaml.safe_load((go_module_dir(module, version) / path).read_text())
                           for module, version, path in ARGOCD_CRDS + KUEUE_CRDS + FLUX_CRDS])


def ensure_namespaces(cluster, objects: list[dict]) -> None:
    """A dry run creates nothing, so namespaced objects need their namespaces to exist already: create exactly the
    namespaces the entry point declares or puts objects in (flux-system and argocd, which the engines bring)."""
    declared = [o for o in objects if o["kind"] == "Namespace"]
    used = {o["metadata"]["namespace"] for o in objects if o["metadata"].get("namespace")}
    extra = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
             for name in sorted(used - {o["metadata"]["name"] for o in declared})]
    if declared or extra:
        apply(cluster, dump(*declared, *extra))


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=[str(p.relative_to(MANIFESTS)) for p in ENTRY_POINTS])
def test_entry_point_applies_with_server_dry_run(cluster, operator_crds, entry_point: Path):
    rendered = kustomize(cluster, entry_point)
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    assert objects, f"{entry_point} lists resources but renders no objects"
    ensure_namespaces(cluster, objects)
    done = apply(cluster, rendered, "--dry-run=server")
    applied = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(applied) == len(objects), done.stdout
    assert all(line.endswith("(server dry run)") for line in applied), done.stdout


def test_flux_tenant_account_may_apply_the_serving_chart_in_its_namespace_only(cluster, operator_crds, helm):
    """Flux reconciles a tenant's apps impersonating the tenant's kubeforge-gitops account: that account must be
    allowed every object the serving chart renders in its namespace, and nothing in another tenant's."""
    tenants = kustomize(cluster, MANIFESTS / "flux" / "tenants")
    objects = [o for o in yaml.safe_load_all(tenants) if o]
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert len(accounts) >= 2, "expected one Flux account per tenant"
    ensure_namespaces(cluster, objects)
    apply(cluster, tenants)
    own, other = accounts[0]["metadata"], accounts[1]["metadata"]
    as_account = f"--as=system:serviceaccount:{own['namespace']}:{own['name']}"
    # the production values: Deployment, Service, ServiceAccount, HPA, PDB and NetworkPolicy (the ServiceMonitor
    # is left out: its CRD is another test's business)
    rendered = subprocess.run([helm, "template", "classifier", str(CHART), "--namespace", own["namespace"],
                               "-f", str(CHART / "ci" / "production-values.yaml"),
                               "--set", "serviceMonitor.enabled=false"], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    allowed = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", as_account, "-n", own["namespace"],
                              "-f", "-", input=rendered.stdout, check=False)
    assert allowed.returncode == 0, allowed.stderr
    denied = cluster.kubectl("apply", "--dry-run=server", as_account, "-n", other["namespace"], "-f", "-",
                             input=rendered.stdout.replace(f"namespace: {own['namespace']}",
                                                           f"namespace: {other['namespace']}"), check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
