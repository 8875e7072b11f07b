import shutil
from pathlib import Path

import pytest
import yaml

from kubeforge.deploy.tenants import TenantError, add_tenant, list_tenants, parse_quantity, total_quota

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"


@pytest.fixture
def repo(tmp_path):
    shutil.copytree(MANIFESTS / "tenants" / "base", tmp_path / "manifests" / "tenants" / "base")
    shutil.copytree(MANIFESTS / "argocd", tmp_path / "manifests" / "argocd",
                    ignore=shutil.ignore_patterns("tenants"))
    (tmp_path / "manifests" / "argocd" / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- platform.yaml\n")
    for env in ("dev", "prod"):
        shutil.copytree(MANIFESTS / "clusters" / env, tmp_path / "manifests" / "clusters" / env)
    return tmp_path


def add(repo, name="team-x", **kwargs):
    return add_tenant(repo, name, **{"gpus": 2, "cpu": "16", "memory": "64Gi", "owner": "team-x-devs", **kwargs})


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_add_then_list(repo):
    result = add(repo)
    assert "manifests/tenants/team-x/kustomization.yaml" in result.written
    (tenant,) = list_tenants(repo)
    assert (tenant.name, tenant.owner, tenant.gpus, tenant.cpu, tenant.memory) == (
        "team-x", "team-x-devs", 2, "16", "64Gi")


def test_second_identical_add_changes_nothing(repo):
    add(repo)
    before = snapshot(repo)
    result = add(repo)
    assert result.written == []
    assert sorted(result.unchanged) == [
        "manifests/argocd/kustomization.yaml", "manifests/argocd/tenants/team-x.yaml",
        "manifests/flux/tenants/kustomization.yaml", "manifests/flux/tenants/team-x.yaml",
        "manifests/tenants/kustomization.yaml", "manifests/tenants/team-x/kustomization.yaml",
        "manifests/tenants/team-x/namespace.yaml"]
    assert snapshot(repo) == before


def test_add_writes_flux_objects_and_an_empty_release_list_per_env(repo):
    result = add(repo)
    for env in ("dev", "prod"):
        path = f"manifests/apps/team-x/{env}/kustomization.yaml"
        assert path in result.written
        assert yaml.safe_load((repo / path).read_text())["resources"] == []
    flux = list(yaml.safe_load_all((repo / "manifests" / "flux" / "tenants" / "team-x.yaml").read_text()))
    assert {d["metadata"]["namespace"] for d in flux} == {"team-x"}
    (apps,) = [d for d in flux if d["kind"] == "Kustomization"]
    assert apps["spec"]["serviceAccountName"] == "kubeforge-gitops"
    assert yaml.safe_load((repo / "manifests" / "flux" / "tenants" / "kustomization.yaml").read_text())[
        "resources"] == ["team-x.yaml"]


def test_add_never_touches_the_promoted_release_lists(repo):
    add(repo)
    env_list = repo / "manifests" / "apps" / "team-x" / "prod" / "kustomization.yaml"
    env_list.write_text(env_list.read_text().replace("resources: []", "resources:\n- classifier"))
    promoted = env_list.read_text()
    add(repo, cpu="20", force=True)
    assert env_list.read_text() == promoted


def test_app_set_project_is_fixed_and_values_come_from_the_release(repo):
    add(repo)
    project, app_set = yaml.safe_load_all((repo / "manifests" / "argocd" / "tenants" / "team-x.yaml").read_text())
    assert project["spec"]["destinations"] == [{"server": "https://kubernetes.default.svc", "namespace": "team-x"}]
    template = app_set["spec"]["template"]["spec"]
    assert template["project"] == "team-x"
    chart, values = template["sources"]
    assert chart["path"] == "charts/kubeforge-serving" and values["ref"] == "values"
    assert chart["helm"]["valueFiles"] == ["$values/{{.path.path}}/values.yaml"]
    git_generator = app_set["spec"]["generators"][0]["matrix"]["generators"][1]["git"]
    # one file per release kind marks its directory: the chart's values or the InferenceService
    assert git_generator["files"] == [{"path": "manifests/apps/team-x/{{.env}}/*/values.yaml"},
                                      {"path": "manifests/apps/team-x/{{.env}}/*/inferenceservice.yaml"}]
    assert "directories" not in git_generator


def test_app_set_patches_kserve_releases_to_their_own_directory(repo):
    add(repo, "team-x")
    _, app_set = yaml.safe_load_all((repo / "manifests" / "argocd" / "tenants" / "team-x.yaml").read_text())
    patch = app_set["spec"]["templatePatch"]
    assert app_set["spec"]["goTemplate"] is True  # templatePatch is only rendered for Go templates
    kserve_branch = patch[patch.index('{{- if eq .path.filename "inferenceservice.yaml" }}'):]
    assert "path: '{{ .path.path }}'" in kserve_branch and "helm" not in kserve_branch
    assert '- repoURL: "https://git.example.com/platform/kubeforge-gitops.git"' in kserve_branch
    assert patch.startswith("metadata:\n  labels:\n    kubeforge.io/release-kind: ")  # never an empty patch
    text = (repo / "manifests" / "argocd" / "tenants" / "team-x.yaml").read_text()
    assert "  templatePatch: |\n    metadata:\n" in text  # a readable block in review, not an escaped string


def test_flux_role_grants_inference_services_without_update(repo):
    add(repo)
    flux = list(yaml.safe_load_all((repo / "manifests" / "flux" / "tenants" / "team-x.yaml").read_text()))
    (role,) = [d for d in flux if d["kind"] == "Role"]
    rules = {(group, resource): rule["verbs"] for rule in role["rules"] for group in rule["apiGroups"]
             for resource in rule["resources"]}
    assert rules[("serving.kserve.io", "inferenceservices")] == ["get", "list", "watch", "create", "patch", "delete"]
    assert not [key for key in rules if key[0] == "serving.kserve.io" and key[1] != "inferenceservices"]


def test_hand_edits_are_refused_with_a_diff_unless_forced(repo):
    add(repo)
    overlay = repo / "manifests" / "tenants" / "team-x" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace('"16"', '"99"'))
    edited = snapshot(repo)
    with pytest.raises(TenantError, match=r"(?s)rerun with --force.*-.*\"99\".*\+.*\"16\""):
        add(repo)
    assert snapshot(repo) == edited  # nothing written
    add(repo, force=True)
    assert '"99"' not in overlay.read_text()


@pytest.mark.parametrize("name, message", [
    ("Team_A", "is not a DNS-1123 label"),
    ("-team", "is not a DNS-1123 label"),
    ("a" * 64, "is not a DNS-1123 label"),
    ("kube-system", "is reserved"),
    ("default", "is reserved"),
])
def test_invalid_names(repo, name, message):
    with pytest.raises(TenantError, match=message):
        add(repo, name)
    assert not (repo / "manifests" / "tenants" / name).exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"gpus": -1}, "gpus must be a non-negative integer"),
    ({"cpu": "-4"}, "cpu must not be negative"),
    ({"cpu": "lots"}, "cpu 'lots' is not a Kubernetes quantity"),
    ({"memory": "64GB"}, "memory '64GB' is not a Kubernetes quantity"),
    ({"owner": " "}, "owner .* must not be empty"),
    ({"gpu_resource": "amd.com/gpu"}, "is not nvidia.com/gpu or a MIG resource"),
    ({"pod_security": "privileged"}, "pod security level 'privileged' is not one of restricted, baseline"),
    ({"pod_security": "baseline", "kubeflow": True}, "--pod-security applies to plain namespaces"),
])
def test_invalid_quantities(repo, kwargs, message):
    with pytest.raises(TenantError, match=message):
        add(repo, **kwargs)


def test_namespaces_enforce_restricted_unless_baseline_is_asked_for(repo):
    add(repo)
    add(repo, "team-builds", pod_security="baseline")
    for name, level in (("team-x", "restricted"), ("team-builds", "baseline")):
        namespace = yaml.safe_load((repo / "manifests" / "tenants" / name / "namespace.yaml").read_text())
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == level
    assert {t.name: t.pod_security for t in list_tenants(repo)} == {"team-builds": "baseline", "team-x": "restricted"}
    assert add(repo, "team-builds", pod_security="baseline").written == []  # list -> add round-trips
    with pytest.raises(TenantError, match="rerun with --force"):
        add(repo, "team-builds")  # tightening it is a change like any other: shown as a diff, needs --force


def test_switching_to_a_kubeflow_profile_needs_force(repo):
    add(repo)
    with pytest.raises(TenantError, match="exists without a Kubeflow Profile; rerun with --force"):
        add(repo, kubeflow=True)
    add(repo, kubeflow=True, force=True)
    overlay = repo / "manifests" / "tenants" / "team-x"
    assert (overlay / "profile.yaml").is_file() and not (overlay / "namespace.yaml").exists()
    assert (overlay / "namespaced" / "kustomization.yaml").is_file()
    assert list_tenants(repo)[0].kubeflow


def test_outside_a_gitops_repo(tmp_path):
    with pytest.raises(TenantError, match="has no manifests/tenants/base"):
        add(tmp_path)


def test_quota_arithmetic(repo):
    assert parse_quantity("500m", "cpu") == 0.5
    assert parse_quantity("64Gi", "memory") == 64 * 2**30
    assert parse_quantity("1.5k", "x") == 1500
    add(repo, "team-x")
    add(repo, "team-y", gpus=1, cpu="500m", memory="1Gi", gpu_resource="nvidia.com/mig-1g.10gb")
    totals = total_quota(list_tenants(repo))
    assert totals == {"cpu": 16.5, "memory": 65 * 2**30, "nvidia.com/gpu": 2, "nvidia.com/mig-1g.10gb": 1}
