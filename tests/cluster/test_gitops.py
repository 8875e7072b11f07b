"""What the GitOps engines sync is accepted by a real API server (`--dry-run=server`, strict fields): the cluster
entry points (manifests/clusters/* for Argo CD, manifests/flux/clusters/* for Flux), the Flux tenant objects and the
promoted apps, with the CRDs they use (Argo CD, Kueue, Flux, KServe) installed from the operators' Go modules at test
time; the Applications the tenant app set generates for both kinds of release; and, by impersonation, what the
account Flux acts as for a tenant may do with each kind of release."""

import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.config import load_platform
from kubeforge.deploy.gitops import FLUX_ACCOUNT, promote
from kubeforge.deploy.kserve import KServeOptions
from kubeforge.deploy.schemas import ARGOCD_CRDS, FLUX_CRDS, KSERVE_CRD, KUEUE_CRDS, go_module_dir
from tests.cluster.conftest import CHART, MANIFESTS, apply, dump, get_json, install_crds, kustomize, wait_for
from tests.kubeforge.deploy.conftest import repo, run_dir  # noqa: F401 - a scratch GitOps repository and a run
from tests.manifests.argocd import argo_applications

pytestmark = pytest.mark.cluster
IMAGE = "registry.example/kubeforge/kubeforge-classifier:0.1.0"


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


@pytest.fixture(scope="module")
def kserve_crd(cluster) -> None:
    """KServe's full CRD (2 MB: server-side apply, far over a client-side apply's annotation limit)."""
    apply(cluster, (go_module_dir(KSERVE_CRD[0], KSERVE_CRD[1]) / KSERVE_CRD[2]).read_text())
    wait_for(lambda: any(c["type"] == "Established" and c["status"] == "True" for c in get_json(
        cluster, "crd", "inferenceservices.serving.kserve.io").get("status", {}).get("conditions") or []),
        60, "the InferenceService CRD to be established")


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


def flux_tenants(cluster) -> list[dict]:
    """The Flux tenant objects applied for real (accounts, Roles, bindings); returns them."""
    rendered = kustomize(cluster, MANIFESTS / "flux" / "tenants")
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    ensure_namespaces(cluster, objects)
    apply(cluster, rendered)
    return objects


def promote_kserve(repo: Path, run_dir: Path, max_replicas: int) -> Path:  # noqa: F811
    """A KServe release of team-a in prod; returns the env's directory, which Flux builds (namespace from its list)."""
    promote(run_dir, tenant="team-a", env="prod", repo=repo, image=IMAGE, platform=load_platform(), profile="gpu-t4",
            kserve=KServeOptions(min_replicas=1, max_replicas=max_replicas))
    return repo / "manifests" / "apps" / "team-a" / "prod"


def test_flux_tenant_account_may_apply_and_prune_a_kserve_release_in_its_namespace_only(
        cluster, operator_crds, kserve_crd, repo, run_dir):  # noqa: F811
    """kustomize-controller, impersonating the tenant's account, server-side applies the release (create, then
    patch on the next promotion), reads it and prunes it; the Role grants exactly that, and only in its namespace."""
    namespaces = sorted({o["metadata"]["namespace"] for o in flux_tenants(cluster)})
    own, other = "team-a", next(n for n in namespaces if n != "team-a")
    as_account = f"--as=system:serviceaccount:{own}:{FLUX_ACCOUNT}"
    ssa = ("apply", "--server-side", "--field-manager=kustomize-controller", "--validate=strict", as_account)
    first = kustomize(cluster, promote_kserve(repo, run_dir, max_replicas=2))
    try:
        created = cluster.kubectl(*ssa, "-f", "-", input=first, check=False)
        assert created.returncode == 0, created.stderr
        second = kustomize(cluster, promote_kserve(repo, run_dir, max_replicas=4))
        patched = cluster.kubectl(*ssa, "-f", "-", input=second, check=False)
        assert patched.returncode == 0, patched.stderr
        stored = get_json(cluster, "inferenceservice", "classifier", "-n", own, as_account)
        assert stored["spec"]["predictor"]["maxReplicas"] == 4
        assert stored["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert cluster.kubectl("auth", "can-i", verb, "inferenceservices.serving.kserve.io", "-n", own,
                                   as_account, check=False).stdout.strip() == "yes", verb
        for verb, namespace in (("update", own), ("get", other), ("create", other)):  # least privilege
            assert cluster.kubectl("auth", "can-i", verb, "inferenceservices.serving.kserve.io", "-n", namespace,
                                   as_account, check=False).stdout.strip() == "no", (verb, namespace)
        denied = cluster.kubectl(*ssa, "-f", "-", input=first.replace(f"namespace: {own}", f"namespace: {other}"),
                                 check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr
        pruned = cluster.kubectl("delete", "inferenceservice", "classifier", "-n", own, as_account, check=False)
        assert pruned.returncode == 0, pruned.stderr
    finally:
        cluster.kubectl("delete", "inferenceservice", "classifier", "-n", own, "--ignore-not-found", check=False)


def test_argo_applications_of_both_release_kinds_apply_with_server_dry_run(
        cluster, operator_crds, kserve_crd, repo, run_dir):  # noqa: F811
    """The Applications the tenant app set generates (the chart for a Helm release, the directory for a KServe
    one) are accepted by the Application CRD, and the KServe directory applies in the destination namespace."""
    promote_kserve(repo, run_dir, max_replicas=2)
    promote(run_dir, tenant="team-a", env="prod", repo=repo, image=IMAGE, platform=load_platform(), app="churn")
    applications = {a["metadata"]["name"]: a for a in argo_applications(repo, "prod", "team-a")}
    assert set(applications) == {"team-a-classifier", "team-a-churn"}
    ensure_namespaces(cluster, list(applications.values()))
    done = apply(cluster, dump(*applications.values()), "--dry-run=server")
    assert sorted(done.stdout.splitlines()) == [f"application.argoproj.io/{name} serverside-applied (server dry run)"
                                                for name in sorted(applications)], done.stdout
    (source,) = applications["team-a-classifier"]["spec"]["sources"]
    destination = applications["team-a-classifier"]["spec"]["destination"]["namespace"]
    apply(cluster, dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": destination}}))
    applied = apply(cluster, kustomize(cluster, repo / source["path"]), "--dry-run=server", "-n", destination)
    assert applied.stdout.strip() == "inferenceservice.serving.kserve.io/classifier serverside-applied " \
                                     "(server dry run)", applied.stdout
