"""Tenants from `kubeforge tenant add` on a real API server: quotas enforced by admission, RBAC by authorization."""

import pytest

from tests.cluster.conftest import TENANTS, apply, dump, get_json, restricted_pod, wait_for

pytestmark = pytest.mark.cluster


def test_quota_status_is_populated_by_the_controller_manager(cluster, tenants):
    for name, quota in tenants.items():
        status = get_json(cluster, "resourcequota", "kubeforge-quota", "-n", name)["status"]
        assert status["hard"]["requests.nvidia.com/gpu"] == str(quota["gpus"])
        assert status["hard"]["requests.cpu"] == quota["cpu"]
        assert status["used"]["requests.nvidia.com/gpu"] == "0"


def test_pod_over_the_gpu_quota_is_refused_and_one_within_is_admitted(cluster, tenants):
    limit = tenants["beta"]["gpus"]
    refused = cluster.kubectl("create", "-n", "beta", "-f", "-", check=False,
                              input=dump(restricted_pod("too-many-gpus", gpus=limit + 1)))
    assert refused.returncode != 0
    assert "exceeded quota: kubeforge-quota" in refused.stderr
    assert f"requested: requests.nvidia.com/gpu={limit + 1}" in refused.stderr
    assert f"limited: requests.nvidia.com/gpu={limit}" in refused.stderr

    apply(cluster, dump(restricted_pod("one-gpu", gpus=1, product="Tesla-T4")), "-n", "beta")
    try:
        used = wait_for(lambda: get_json(cluster, "resourcequota", "kubeforge-quota", "-n", "beta")["status"]["used"]
                        .get("requests.nvidia.com/gpu") == "1", 30, "the quota to count the admitted GPU pod")
        assert used
        # the admitted pod is really scheduled, and onto a node of the product it asked for
        node = wait_for(lambda: get_json(cluster, "pod", "one-gpu", "-n", "beta")["spec"].get("nodeName"), 60,
                        "the scheduler to bind the GPU pod")
        assert get_json(cluster, "node", node)["metadata"]["labels"]["nvidia.com/gpu.product"] == "Tesla-T4"
        # the remaining quota is now smaller: asking for all of it again is refused
        again = cluster.kubectl("create", "-n", "beta", "-f", "-", check=False,
                                input=dump(restricted_pod("rest-plus-one", gpus=limit)))
        assert "exceeded quota" in again.stderr
    finally:
        cluster.kubectl("delete", "pod", "one-gpu", "-n", "beta", "--grace-period=0", "--force", "--wait=false",
                        check=False)


def test_pod_violating_the_restricted_pod_security_standard_is_refused(cluster, tenants):
    pod = restricted_pod("root-pod")
    del pod["spec"]["securityContext"]["runAsNonRoot"]
    del pod["spec"]["containers"][0]["securityContext"]["capabilities"]
    refused = cluster.kubectl("create", "-n", "alpha", "-f", "-", check=False, input=dump(pod))
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted' in refused.stderr


def can_i(cluster, verb: str, resource: str, namespace: str, tenant: str) -> bool:
    done = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", f"{tenant}-user",
                           "--as-group", TENANTS[tenant]["owner"], check=False)
    assert done.stdout.strip() in {"yes", "no"}, done.stdout + done.stderr
    return done.stdout.strip() == "yes"


def test_tenant_group_works_in_its_own_namespace_only(cluster, tenants):
    # what the kubeforge-tenant Role grants (manifests/tenants/base/rbac.yaml) ...
    for verb, resource in [("list", "pods"), ("create", "deployments.apps"), ("get", "pods/log"),
                           ("create", "poddisruptionbudgets.policy"), ("list", "resourcequotas")]:
        assert can_i(cluster, verb, resource, "alpha", "alpha"), f"alpha cannot {verb} {resource} in alpha"
    # ... and what it does not: secrets, quota changes, anything in the other tenant's namespace
    assert not can_i(cluster, "get", "secrets", "alpha", "alpha")
    assert not can_i(cluster, "list", "secrets", "alpha", "alpha")
    assert not can_i(cluster, "update", "resourcequotas", "alpha", "alpha")
    for verb, resource in [("list", "pods"), ("get", "secrets"), ("create", "deployments.apps")]:
        assert not can_i(cluster, verb, resource, "beta", "alpha"), f"alpha can {verb} {resource} in beta"
    assert can_i(cluster, "list", "pods", "beta", "beta")


def test_impersonated_requests_are_forbidden_across_tenants(cluster, tenants):
    as_alpha = ["--as", "alpha-user", "--as-group", TENANTS["alpha"]["owner"]]
    assert cluster.kubectl("get", "pods", "-n", "alpha", *as_alpha).returncode == 0
    denied = cluster.kubectl("get", "pods", "-n", "beta", *as_alpha, check=False)
    assert denied.returncode != 0 and 'cannot list resource "pods"' in denied.stderr
    secrets = cluster.kubectl("get", "secrets", "-n", "alpha", *as_alpha, check=False)
    assert secrets.returncode != 0 and 'cannot list resource "secrets"' in secrets.stderr
