"""The in-cluster image build Job against the real control plane: the Job controller (kube-controller-manager)
creates the builder pod, the scheduler places it, and kwok's fake kubelet runs it to completion. No image is built
(kwok runs no containers); what is proven is everything kubeforge.serving.image_build does around the builder."""

import subprocess

import pytest

from kubeforge.serving.image_build import ImageBuildError, run_image_job
from kubeforge.serving.image_job import render_image_job
from tests.cluster.conftest import KUBEFORGE, apply, dump, get_json, kustomize, wait_for

pytestmark = pytest.mark.cluster

BUILD_NAMESPACE = "gamma"  # a tenant whose namespace enforces the baseline Pod Security level
IMAGE = "registry.example/team-a/classifier:1.0"
CONTEXT_CLAIM = "bento-context"


@pytest.fixture(scope="module")
def build_namespace(cluster, gitops_repo, tenants) -> str:
    """A tenant onboarded with `kubeforge tenant add --pod-security baseline` (Kaniko runs as root), with the
    build-context claim bound to a pre-provisioned volume (the scheduler will not place a pod whose claim is unbound)."""
    done = subprocess.run([str(KUBEFORGE), "tenant", "add", BUILD_NAMESPACE, "--gpus", "0", "--cpu", "8",
                           "--memory", "16Gi", "--owner", "builders", "--pod-security", "baseline",
                           "--repo", str(gitops_repo)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    apply(cluster, kustomize(cluster, gitops_repo / "manifests" / "tenants" / BUILD_NAMESPACE))
    apply(cluster, dump(
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "image-builds-context"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                  "hostPath": {"path": "/var/lib/kubeforge-context"},
                  "claimRef": {"namespace": BUILD_NAMESPACE, "name": CONTEXT_CLAIM}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": CONTEXT_CLAIM, "namespace": BUILD_NAMESPACE},
         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": "image-builds-context",
                  "resources": {"requests": {"storage": "1Gi"}}}}))
    wait_for(lambda: get_json(cluster, "pvc", CONTEXT_CLAIM, "-n", BUILD_NAMESPACE).get("status", {}).get("phase")
             == "Bound", 60, "the build-context claim to bind")
    wait_for(lambda: get_json(cluster, "resourcequota", "kubeforge-quota", "-n", BUILD_NAMESPACE)
             .get("status", {}).get("hard"), 60, "the quota status")
    return BUILD_NAMESPACE


@pytest.fixture(scope="module")
def runner(cluster, build_namespace):
    """An API client acting as the tenant's pipeline-runner account, as the build-image step does in a pod."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    client.set_default_header("Impersonate-User", f"system:serviceaccount:{build_namespace}:pipeline-runner")
    return client


def job_names(cluster, namespace: str) -> list[str]:
    return [item["metadata"]["name"] for item in get_json(cluster, "jobs", "-n", namespace)["items"]]


def test_a_kaniko_build_job_runs_to_completion_as_the_pipeline_runner(cluster, runner, build_namespace):
    job = render_image_job(IMAGE, namespace=build_namespace, name="build-ok", context_pvc=CONTEXT_CLAIM)

    assert run_image_job(job, api_client=runner, timeout_s=90, poll_s=0.5) == f"{build_namespace}/build-ok"
    status = get_json(cluster, "job", "build-ok", "-n", build_namespace)["status"]
    assert status["succeeded"] == 1


def test_a_build_whose_pod_cannot_be_placed_times_out_and_is_deleted(cluster, runner, build_namespace):
    job = render_image_job(IMAGE, namespace=build_namespace, name="build-unplaceable", context_pvc=CONTEXT_CLAIM)
    job["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "no-such-node"}

    with pytest.raises(ImageBuildError) as raised:
        run_image_job(job, api_client=runner, timeout_s=5, poll_s=0.5)

    message = str(raised.value)
    assert "not finished after 5 s" in message and "the Job was deleted" in message
    assert "not scheduled" in message  # the scheduler's reason, read from the pod
    assert "build-unplaceable" not in job_names(cluster, build_namespace)


def test_a_tenant_namespace_refuses_the_root_builder_at_once(cluster, api_client, tenants):
    """Tenant namespaces enforce the restricted Pod Security Standard by default; Kaniko runs as root, so admission
    refuses its pod. The runner says so at once instead of waiting for the timeout."""
    job = render_image_job(IMAGE, namespace="alpha", name="build-refused", context_pvc=CONTEXT_CLAIM)

    with pytest.raises(ImageBuildError) as raised:
        run_image_job(job, api_client=api_client, timeout_s=120, poll_s=0.5)

    message = str(raised.value)
    assert "its pod was refused" in message and "restricted" in message
    assert "build-refused" not in job_names(cluster, "alpha")


def test_a_namespace_that_does_not_exist_is_named_in_the_error(api_client):
    job = render_image_job(IMAGE, namespace="no-such-tenant", name="build-nowhere", context_pvc=CONTEXT_CLAIM)

    with pytest.raises(ImageBuildError, match="cannot create the image build Job no-such-tenant/build-nowhere"):
        run_image_job(job, api_client=api_client, timeout_s=5, poll_s=0.5)
