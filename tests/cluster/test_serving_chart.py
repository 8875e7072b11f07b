"""charts/kubeforge-serving installed with helm into a tenant namespace: the real scheduler places the pods by the
values `kubeforge deploy values` derives from a scheduling profile; upgrade and rollback go through real rollouts."""

from pathlib import Path

import pytest
import yaml

from kubeforge.config import load_platform
from kubeforge.deploy.schemas import SERVICE_MONITOR_CRD, go_module_dir
from kubeforge.deploy.values import image_values, scheduling_values
from tests.cluster.conftest import CHART, apply, get_json, install_crds, wait_for

pytestmark = pytest.mark.cluster
NAMESPACE = "alpha"
IMAGE = "registry.example/kubeforge/kubeforge-classifier"


def profile_values(tmp_path: Path, profile: str, tag: str = "0.1.0") -> Path:
    """The chart values of `kubeforge deploy values --profile PROFILE` minus the run-specific model annotations."""
    values = {"image": image_values(f"{IMAGE}:{tag}"), **scheduling_values(load_platform().profile(profile))}
    path = tmp_path / f"{profile}-values.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


class Release:
    def __init__(self, cluster, helm: str, name: str):
        self.cluster, self.helm, self.name = cluster, helm, name

    def run(self, *args: str, check: bool = True):
        import subprocess

        done = subprocess.run([self.helm, *args, "--namespace", NAMESPACE, "--kubeconfig",
                               str(self.cluster.kubeconfig)], capture_output=True, text=True, timeout=300)
        if check:
            assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def install(self, values: Path, *extra: str):
        return self.run("install", self.name, str(CHART), "-f", str(values), "--wait", "--timeout", "3m", *extra)

    def pods(self) -> list[dict]:
        pods = get_json(self.cluster, "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={self.name}")
        return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]

    def deployment(self) -> dict:
        (deployment,) = get_json(self.cluster, "deployments", "-n", NAMESPACE, "-l",
                                 f"app.kubernetes.io/instance={self.name}")["items"]
        return deployment

    def rollout_status(self):
        name = self.deployment()["metadata"]["name"]
        self.cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", NAMESPACE, "--timeout=120s",
                             timeout=150)

    def uninstall(self):
        self.run("uninstall", self.name, "--wait", "--timeout", "2m", check=False)


def node_labels(cluster, pod: dict) -> dict:
    assert pod["spec"].get("nodeName"), f"pod {pod['metadata']['name']} is not scheduled"
    return get_json(cluster, "node", pod["spec"]["nodeName"])["metadata"]["labels"]


@pytest.mark.parametrize("profile,product", [("gpu-t4", "Tesla-T4"), ("gpu-a100", "NVIDIA-A100-SXM4-80GB")])
def test_gpu_profile_lands_only_on_gpu_nodes_of_its_product(cluster, tenants, helm, tmp_path, profile, product):
    release = Release(cluster, helm, f"serve-{profile}")
    values = profile_values(tmp_path, profile)
    try:
        release.install(values, "--set", "replicaCount=2")
        release.rollout_status()
        pods = release.pods()
        assert len(pods) == 2
        for pod in pods:
            assert node_labels(cluster, pod)["nvidia.com/gpu.product"] == product
            assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert pod["status"]["phase"] == "Running"
    finally:
        release.uninstall()


def test_gpu_product_no_node_offers_stays_pending_instead_of_landing_elsewhere(cluster, tenants, helm, tmp_path):
    release = Release(cluster, helm, "serve-h100")
    try:
        # no --wait: the rollout cannot complete, which is the point
        release.run("install", release.name, str(CHART), "-f", str(profile_values(tmp_path, "gpu-h100")))
        (pod,) = wait_for(lambda: [p for p in release.pods() if any(
            c["type"] == "PodScheduled" and c["status"] == "False" for c in p["status"].get("conditions", []))],
            60, "the scheduler to give up on the H100 pod")
        assert not pod["spec"].get("nodeName") and pod["status"]["phase"] == "Pending"
        (condition,) = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
        assert condition["reason"] == "Unschedulable"
        assert "node affinity/selector" in condition["message"]
    finally:
        release.uninstall()


def test_gpu_off_lands_on_cpu_nodes_and_upgrade_and_rollback_roll_out(cluster, tenants, helm, tmp_path):
    release = Release(cluster, helm, "serve-cpu")
    try:
        release.install(profile_values(tmp_path, "cpu", tag="0.1.0"), "--set", "replicaCount=2")
        release.rollout_status()
        for pod in release.pods():
            labels = node_labels(cluster, pod)
            assert "nvidia.com/gpu.product" not in labels and labels["node.kubernetes.io/instance-type"] == "cpu"
            assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"].get("limits", {})

        release.run("upgrade", release.name, str(CHART), "-f", str(profile_values(tmp_path, "cpu", tag="0.2.0")),
                    "--set", "replicaCount=2", "--wait", "--timeout", "3m")
        release.rollout_status()
        assert release.deployment()["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:0.2.0"
        assert {p["spec"]["containers"][0]["image"] for p in release.pods()} == {f"{IMAGE}:0.2.0"}

        release.run("rollback", release.name, "1", "--wait", "--timeout", "3m")
        release.rollout_status()
        assert release.deployment()["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:0.1.0"
        assert {p["spec"]["containers"][0]["image"] for p in release.pods()} == {f"{IMAGE}:0.1.0"}
        history = yaml.safe_load(release.run("history", release.name, "-o", "yaml").stdout)
        assert [entry["revision"] for entry in history] == [1, 2, 3]
        assert history[-1]["status"] == "deployed"
    finally:
        release.uninstall()


def test_production_objects_are_accepted_with_strict_field_validation(cluster, tenants, helm, tmp_path):
    crd = go_module_dir(SERVICE_MONITOR_CRD[0], SERVICE_MONITOR_CRD[1]) / SERVICE_MONITOR_CRD[2]
    install_crds(cluster, [yaml.safe_load(crd.read_text())])
    release = Release(cluster, helm, "serve-prod")
    rendered = release.run("template", release.name, str(CHART), "-f",
                           str(CHART / "ci" / "production-values.yaml")).stdout
    kinds = {o["kind"] for o in yaml.safe_load_all(rendered) if o}
    assert {"PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor"} <= kinds
    # a field the API does not know is an error under strict validation: proves the check is live
    broken = rendered.replace("kind: PodDisruptionBudget\n", "kind: PodDisruptionBudget\nunknownField: 1\n", 1)
    refused = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", NAMESPACE, "-f", "-",
                              input=broken, check=False)
    assert refused.returncode != 0 and 'unknown field "unknownField"' in refused.stderr
    try:
        apply(cluster, rendered, "-n", NAMESPACE)
        for kind in ("poddisruptionbudget", "horizontalpodautoscaler", "networkpolicy", "servicemonitor"):
            objects = get_json(cluster, kind, "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={release.name}")
            assert len(objects["items"]) == 1, kind
        release.rollout_status()
        # the disruption controller (controller-manager) evaluates the budget against the running pods
        assert wait_for(lambda: get_json(cluster, "poddisruptionbudget", "-n", NAMESPACE, "-l",
                                         f"app.kubernetes.io/instance={release.name}")["items"][0]
                        .get("status", {}).get("currentHealthy") == 2, 60, "the PDB to count 2 healthy pods")
    finally:
        cluster.kubectl("delete", "-n", NAMESPACE, "-f", "-", "--wait=false", input=rendered, check=False)
