"""One throwaway control plane per test session (kwokctl --runtime binary, see kubeforge/devtools/kwok_cluster.py),
or an existing cluster given by $KUBEFORGE_TEST_KUBECONFIG (scripts/e2e-kind.sh). Torn down on every exit path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubeforge.devtools.kwok_cluster import (ClusterError, KwokCluster, MissingBinaries, cached_binaries,
                                             remove_stale_clusters)
from tests.charts.conftest import helm  # noqa: F401 - the pinned helm, shared

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "kubeforge-serving"
KUBEFORGE = Path(sys.executable).parent / "kubeforge"
# the two tenants every cluster test shares: quotas sized so the serving releases fit in alpha
TENANTS = {"alpha": dict(gpus=4, cpu="48", memory="320Gi", owner="alpha-engineers"),
           "beta": dict(gpus=2, cpu="8", memory="32Gi", owner="beta-engineers")}


class ExistingCluster:
    """A cluster someone else started (kind via scripts/e2e-kind.sh); only kubectl is needed."""

    def __init__(self, kubeconfig: Path):
        self.name, self.kubeconfig, self.start_seconds = "external", kubeconfig, 0.0

    kubectl = KwokCluster.kubectl


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"cluster tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster():
    external = os.environ.get("KUBEFORGE_TEST_KUBECONFIG")
    if external:
        yield ExistingCluster(Path(external))
        return
    if shutil.which("kubectl") is None:
        _unavailable("kubectl is not on PATH")
    try:
        binaries = cached_binaries()
    except MissingBinaries as error:
        _unavailable(str(error))
    remove_stale_clusters(binaries)
    cluster = KwokCluster(f"test-{os.getpid()}", binaries)
    try:
        seconds = cluster.up()
    except ClusterError as error:
        pytest.fail(f"the kwok cluster did not start: {error}", pytrace=False)
    print(f"\nkwok cluster {cluster.name} up in {seconds:.1f} s", file=sys.stderr)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated run (CI time limit) still tears the cluster down
    try:
        yield cluster
    finally:
        signal.signal(signal.SIGTERM, previous)
        cluster.down()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def api_client(cluster):
    """A kubernetes client on the test cluster with the admin kubeconfig."""
    from kubernetes import config

    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


def apply(cluster, documents: str, *flags: str) -> subprocess.CompletedProcess:
    """Server-side apply with strict field validation: unknown or duplicate fields are errors, not warnings."""
    return cluster.kubectl("apply", "--server-side", "--field-manager=kubeforge-tests", "--validate=strict",
                           *flags, "-f", "-", input=documents)


def kustomize(cluster, path: Path) -> str:
    return cluster.kubectl("kustomize", str(path)).stdout


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", "-o", "json", *args).stdout)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def gitops_repo(tmp_path_factory) -> Path:
    """A scratch GitOps repository holding the tenant base, where `kubeforge tenant add` writes the test tenants."""
    repo = tmp_path_factory.mktemp("gitops")
    shutil.copytree(MANIFESTS / "tenants" / "base", repo / "manifests" / "tenants" / "base")
    for name, quota in TENANTS.items():
        done = subprocess.run([str(KUBEFORGE), "tenant", "add", name, "--gpus", str(quota["gpus"]),
                               "--cpu", quota["cpu"], "--memory", quota["memory"], "--owner", quota["owner"],
                               "--repo", str(repo)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    return repo


@pytest.fixture(scope="session")
def tenants(cluster, gitops_repo) -> dict[str, dict]:
    """Both tenants applied server-side, the platform's PriorityClasses too; returns TENANTS once quotas are live."""
    apply(cluster, kustomize(cluster, MANIFESTS / "platform"))
    for name in TENANTS:
        apply(cluster, kustomize(cluster, gitops_repo / "manifests" / "tenants" / name))
    for name in TENANTS:
        # quota admission refuses pods until the controller-manager has computed the quota's status
        wait_for(lambda name=name: get_json(cluster, "resourcequota", "kubeforge-quota", "-n", name)
                 .get("status", {}).get("hard"), 60, f"the quota status of {name}")
    return TENANTS


def restricted_pod(name: str, *, gpus: int = 0, product: str = "", cpu: str = "100m",
                   memory: str = "128Mi") -> dict:
    """A pod that passes the `restricted` Pod Security Standard the tenant namespaces enforce."""
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    spec: dict = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}},
                  "containers": [{"name": "main", "image": "registry.example/kubeforge/probe:1",
                                  "resources": resources,
                                  "securityContext": {"allowPrivilegeEscalation": False,
                                                      "capabilities": {"drop": ["ALL"]}}}]}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        if product:
            spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def dump(*documents: dict) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def install_crds(cluster, documents: list[dict]) -> None:
    """Apply CRDs and wait until the API server serves them (`kubectl wait` races the first status write)."""
    apply(cluster, dump(*documents))
    for name in (d["metadata"]["name"] for d in documents):
        wait_for(lambda name=name: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in get_json(cluster, "crd", name).get("status", {}).get("conditions") or []),
            60, f"CRD {name} to be established")
