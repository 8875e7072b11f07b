"""The GitOps cluster entry points (manifests/clusters/*) are accepted by a real API server (`--dry-run=server`),
with the CRDs they use installed from the operators' Go modules at test time."""

from pathlib import Path

import pytest
import yaml

from kubeforge.deploy.schemas import ARGOCD_CRDS, KUEUE_CRDS, go_module_dir
from tests.cluster.conftest import MANIFESTS, apply, dump, install_crds, kustomize

pytestmark = pytest.mark.cluster
ENTRY_POINTS = sorted(p.parent for p in (MANIFESTS / "clusters").glob("*/kustomization.yaml"))


@pytest.fixture(scope="module")
def operator_crds(cluster) -> set[tuple[str, str]]:
    """Argo CD and Kueue CRDs, installed for real; returns the (group, kind) pairs they define."""
    documents = [yaml.safe_load((go_module_dir(module, version) / path).read_text())
                 for module, version, path in ARGOCD_CRDS + KUEUE_CRDS]
    install_crds(cluster, documents)
    return {(d["spec"]["group"], d["spec"]["names"]["kind"]) for d in documents}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=[p.name for p in ENTRY_POINTS])
def test_cluster_entry_point_applies_with_server_dry_run(cluster, operator_crds, entry_point: Path):
    rendered = kustomize(cluster, entry_point)
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    used = {(o["apiVersion"].rpartition("/")[0], o["kind"]) for o in objects}
    assert used & operator_crds, "the entry point uses none of the operator CRDs: this test lost its point"
    # A dry run creates nothing, so namespaced objects need their namespaces to exist already: create exactly the
    # namespaces the entry point itself declares or places objects in (Argo CD's own included).
    namespaces = {o["metadata"]["namespace"] for o in objects if o["metadata"].get("namespace")}
    namespaces |= {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    declared = [o for o in objects if o["kind"] == "Namespace"]
    extra = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
             for n in sorted(namespaces - {o["metadata"]["name"] for o in declared})]
    apply(cluster, dump(*declared, *extra))
    done = apply(cluster, rendered, "--dry-run=server")
    applied = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(applied) == len(objects), done.stdout
    assert all(line.endswith("(server dry run)") for line in applied), done.stdout
