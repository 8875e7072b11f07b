import json
import os
import subprocess

import pytest
import yaml

from kubeforge.config import load_platform
from kubeforge.deploy.gitops import (PromotionError, evidence_from_model, git_environment, promote,
                                     promote_to_remote)
from kubeforge.deploy.schemas import ARGOCD_CRDS, FLUX_CRDS, HTTPROUTE_CRD, SERVICE_MONITOR_CRD, validate_objects
from tests.kubeforge.deploy.conftest import argo_applications, build, git

IMAGE = "registry.example.com/team-a/classifier:1.0"
RELEASE = "manifests/apps/team-a/prod/classifier"


def head(repo):
    return git(repo, "rev-parse", "HEAD").strip()


def promote_prod(repo, run_dir, **kwargs):
    return promote(run_dir, **{"tenant": "team-a", "env": "prod", "repo": repo, "image": IMAGE,
                               "platform": load_platform(), "profile": "gpu-t4", **kwargs})


def test_promotion_is_a_commit_touching_only_that_release_with_the_evidence(repo, run_dir):
    result = promote_prod(repo, run_dir)
    assert head(repo) == result.commit and result.path == RELEASE
    changed = sorted(git(repo, "show", "--name-only", "--format=", "HEAD").split())
    assert changed == ["manifests/apps/team-a/prod/classifier/helmrelease.yaml",
                       "manifests/apps/team-a/prod/classifier/kustomization.yaml",
                       "manifests/apps/team-a/prod/classifier/kustomizeconfig.yaml",
                       "manifests/apps/team-a/prod/classifier/values.yaml",
                       "manifests/apps/team-a/prod/kustomization.yaml"]
    message = git(repo, "log", "-1", "--format=%B")
    for evidence in (run_dir.name, "0.9750", "0.9720", "-0.28 points", "onnx-int8", "59.6 KiB", "3.31x",
                     "p50 0.017 ms", "p99 0.025 ms"):
        assert evidence in message, evidence
    values = yaml.safe_load((repo / RELEASE / "values.yaml").read_text())
    assert values["image"] == {"repository": "registry.example.com/team-a/classifier", "tag": "1.0"}
    assert values["gpu"]["product"] == "Tesla-T4"
    assert values["podAnnotations"]["kubeforge.io/run-id"] == run_dir.name
    assert "kubeforge.io/model-dir" not in values["podAnnotations"]


def test_flux_applies_a_helm_release_valued_from_the_promoted_file(repo, run_dir):
    promote_prod(repo, run_dir)
    objects = build(repo / "manifests" / "apps" / "team-a" / "prod")
    assert validate_objects(objects, FLUX_CRDS) == []
    (release,) = [o for o in objects if o["kind"] == "HelmRelease"]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert {o["metadata"]["namespace"] for o in objects} == {"team-a"}
    assert release["spec"]["serviceAccountName"] == "kubeforge-gitops"
    assert release["spec"]["chart"]["spec"]["sourceRef"] == {"kind": "GitRepository", "name": "kubeforge-gitops"}
    assert (repo / release["spec"]["chart"]["spec"]["chart"] / "Chart.yaml").is_file()
    (values_from,) = release["spec"]["valuesFrom"]
    assert values_from["name"] == config_map["metadata"]["name"] != "classifier-values"  # follows the hashed name
    assert config_map["data"][values_from["valuesKey"]] == (repo / RELEASE / "values.yaml").read_text()


def test_argo_generates_a_valid_multi_source_application_per_release(repo, run_dir):
    promote_prod(repo, run_dir)
    promote_prod(repo, run_dir, env="dev", app="churn")
    (application,) = argo_applications(repo, "prod", "team-a")
    assert validate_objects([application], ARGOCD_CRDS) == []
    spec = application["spec"]
    assert application["metadata"]["name"] == "team-a-classifier" and spec["project"] == "team-a"
    assert spec["destination"]["namespace"] == "team-a"
    chart, values = spec["sources"]
    assert (repo / chart["path"] / "Chart.yaml").is_file()
    assert values["ref"] == "values" and values["repoURL"] == chart["repoURL"]
    assert chart["helm"]["valueFiles"] == [f"$values/{RELEASE}/values.yaml"]
    assert "team-a-churn" in {a["metadata"]["name"] for a in argo_applications(repo, "dev", "team-a")}
    assert "team-a-churn" not in {a["metadata"]["name"] for a in argo_applications(repo, "prod", "team-a")}


def test_promoted_values_render_with_the_chart(repo, run_dir, helm):
    promote_prod(repo, run_dir)
    done = subprocess.run([helm, "template", "classifier", str(repo / "charts" / "kubeforge-serving"),
                           "--namespace", "team-a", "-f", str(repo / RELEASE / "values.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    assert validate_objects(objects, (SERVICE_MONITOR_CRD, HTTPROUTE_CRD)) == []
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == IMAGE
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_promotions_accumulate_in_the_env_list(repo, run_dir):
    promote_prod(repo, run_dir)
    promote_prod(repo, run_dir, app="churn")
    before = head(repo)
    with pytest.raises(PromotionError, match="already holds exactly this release"):
        promote_prod(repo, run_dir)
    assert head(repo) == before
    promote_prod(repo, run_dir, image="registry.example.com/team-a/classifier:1.1")  # a new image: a new commit
    env_list = yaml.safe_load((repo / "manifests" / "apps" / "team-a" / "prod" / "kustomization.yaml").read_text())
    assert env_list["resources"] == ["churn", "classifier"]
    assert {o["metadata"]["name"] for o in build(repo / "manifests" / "apps" / "team-a" / "prod")
            if o["kind"] == "HelmRelease"} == {"churn", "classifier"}


def test_refuses_a_run_that_failed_the_gate(repo, run_dir):
    report = run_dir / "compress" / "compressed_model" / "compression.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "gate": "failed", "chosen": None}))
    before = head(repo)
    with pytest.raises(PromotionError, match="failed the accuracy gate"):
        promote_prod(repo, run_dir)
    assert head(repo) == before and not (repo / RELEASE).exists()


def test_refuses_unknown_tenant_env_and_names_and_an_unfinished_run(repo, run_dir, tmp_path):
    with pytest.raises(PromotionError, match="unknown tenant 'team-z'"):
        promote_prod(repo, run_dir, tenant="team-z")
    with pytest.raises(PromotionError, match=r"unknown env 'staging'.*known: dev, prod"):
        promote_prod(repo, run_dir, env="staging")
    with pytest.raises(PromotionError, match="app 'Bad_Name' is not a DNS-1123 label"):
        promote_prod(repo, run_dir, app="Bad_Name")
    with pytest.raises(PromotionError, match="at most 53 characters"):  # Helm's limit on a release name
        promote_prod(repo, run_dir, app="a" * 54)
    (run_dir / "summary.json").unlink()
    with pytest.raises(PromotionError, match="has no summary.json"):
        promote_prod(repo, run_dir)
    with pytest.raises(PromotionError, match="does not exist"):
        promote_prod(repo, tmp_path / "nope")
    assert git(repo, "status", "--porcelain") == ""


def test_refuses_a_dirty_release_path(repo, run_dir):
    (repo / RELEASE).mkdir(parents=True)
    (repo / RELEASE / "notes.txt").write_text("work in progress")
    before = head(repo)
    with pytest.raises(PromotionError, match="has uncommitted changes"):
        promote_prod(repo, run_dir)
    assert head(repo) == before and not (repo / RELEASE / "values.yaml").exists()


def test_push_failure_is_reported(repo, run_dir):
    with pytest.raises(PromotionError, match="git push failed"):
        promote_prod(repo, run_dir, push=True)


def test_not_a_git_repository(tmp_path, run_dir):
    with pytest.raises(PromotionError, match="is not a git repository"):
        promote_prod(tmp_path / "plain", run_dir)


# --- the cluster pipeline's path: clone, commit, push ---------------------------------------------------------------

@pytest.fixture
def remote(repo, tmp_path):
    """A bare repository reached by a file:// URL, as the pipeline reaches the platform's git server."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    return bare


def push_model(run_dir, remote, **kwargs):
    model_dir = run_dir / "compress" / "compressed_model"
    arguments = {"repo_url": remote.as_uri(), "branch": "main", "tenant": "team-a", "env": "prod", "image": IMAGE,
                 "platform": load_platform(), "profile": "gpu-t4", "run_id": "train-compress-abc12",
                 "environ": {"PATH": os.environ["PATH"], "HOME": str(run_dir)}, **kwargs}
    return promote_to_remote(model_dir, model_dir / "compression.json", **arguments)


def test_remote_promotion_pushes_one_commit_with_the_evidence(run_dir, remote):
    before = git(remote, "rev-parse", "main").strip()
    result = push_model(run_dir, remote)
    assert result.pushed and git(remote, "rev-parse", "main").strip() == result.commit
    assert git(remote, "rev-parse", f"{result.commit}^").strip() == before
    changed = git(remote, "show", "--name-only", "--format=", "main").split()
    assert changed and all(path.startswith("manifests/apps/team-a/prod/") for path in changed)
    message = git(remote, "log", "-1", "--format=%B%n%an <%ae>", "main")
    for evidence in ("run train-compress-abc12", "0.9750", "0.9720", "-0.28 points", "onnx-int8",
                     "p50 0.017 ms", "kubeforge pipeline <"):
        assert evidence in message, evidence
    values = yaml.safe_load(git(remote, "show", f"main:{RELEASE}/values.yaml"))
    assert values["podAnnotations"]["kubeforge.io/run-id"] == "train-compress-abc12"


def test_remote_promotion_rebases_over_a_concurrent_commit(run_dir, remote, tmp_path):
    """Another commit lands between our clone and our push (a post-checkout hook in our clone pushes it)."""
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", remote.as_uri(), str(other))
    (other / "manifests" / "apps" / "team-b" / "dev" / "note.txt").write_text("team-b's change\n")
    git(other, "add", "-A")
    git(other, "-c", "user.name=B", "-c", "user.email=b@example.com", "commit", "-qm", "team-b change")
    hooks = tmp_path / "template" / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "post-checkout").write_text("#!/bin/sh\nunset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE\n"
                                         f"git -C '{other}' push -q origin HEAD:main\n")
    (hooks / "post-checkout").chmod(0o755)
    result = push_model(run_dir, remote, environ={"PATH": os.environ["PATH"], "HOME": str(run_dir),
                                                  "GIT_TEMPLATE_DIR": str(tmp_path / "template")})
    log = git(remote, "log", "--format=%s", "-2", "main").splitlines()
    assert log[0].startswith("promote team-a/classifier to prod") and log[1] == "team-b change"
    assert result.commit == git(remote, "rev-parse", "main").strip()


def test_remote_promotion_refuses_a_failed_gate_before_cloning(run_dir, remote):
    report = run_dir / "compress" / "compressed_model" / "compression.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "gate": "failed", "chosen": None}))
    before = git(remote, "rev-parse", "main")
    with pytest.raises(PromotionError, match="failed the accuracy gate"):
        push_model(run_dir, remote, repo_url="file:///does/not/exist.git")
    assert git(remote, "rev-parse", "main") == before


def test_remote_promotion_refusals_leave_the_remote_unchanged(run_dir, remote):
    before = git(remote, "rev-parse", "main")
    with pytest.raises(PromotionError, match="unknown tenant 'team-z'"):
        push_model(run_dir, remote, tenant="team-z")
    with pytest.raises(PromotionError, match=r"git clone of .* \(branch nope\) failed"):
        push_model(run_dir, remote, branch="nope")
    with pytest.raises(PromotionError, match="run_id must not be empty"):
        push_model(run_dir, remote, run_id=" ")
    with pytest.raises(PromotionError, match="is not a kubeforge compression report"):
        evidence_from_model(run_dir / "summary.json", run_id="r", pipeline="p", profile="cpu")
    assert git(remote, "rev-parse", "main") == before


def test_credentials_reach_git_as_a_header_not_in_the_command_line(tmp_path):
    env = git_environment({"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GITOPS_USERNAME": "bot",
                           "GITOPS_TOKEN": "s3cret"})
    done = subprocess.run(["git", "config", "--get", "http.extraHeader"], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "Authorization: Basic Ym90OnMzY3JldA=="  # base64("bot:s3cret")
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "GIT_CONFIG_COUNT" not in git_environment({"PATH": os.environ["PATH"]})
