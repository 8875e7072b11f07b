"""The tenant app set generates the right Application for each kind of release promoted into a scratch GitOps
repository: the Helm chart with the release's values, or the KServe release's own directory; switching a release's
kind keeps its Application and changes only its sources."""

import subprocess

import pytest
import yaml

from kubeforge.config import load_platform
from kubeforge.deploy.gitops import promote
from kubeforge.deploy.kserve import KServeOptions
from kubeforge.deploy.schemas import ARGOCD_CRDS, KSERVE_CRD, validate_objects
from kubeforge.deploy.tenants import RELEASE_KIND_LABEL
from tests.kubeforge.deploy.conftest import repo, run_dir  # noqa: F401 - a scratch GitOps repository and a run
from tests.manifests.argocd import argo_applications, tenant_app_set

IMAGE = "registry.example.com/team-a/classifier:1.0"
KSERVE_RELEASE = "manifests/apps/team-a/prod/classifier"


def promote_prod(repo, run_dir, **kwargs):  # noqa: F811
    return promote(run_dir, **{"tenant": "team-a", "env": "prod", "repo": repo, "image": IMAGE,
                               "platform": load_platform(), "profile": "gpu-t4", **kwargs})


def by_name(applications):
    return {a["metadata"]["name"]: a for a in applications}


def test_a_kserve_release_is_an_application_of_its_own_directory(repo, run_dir):  # noqa: F811
    promote_prod(repo, run_dir, kserve=KServeOptions(min_replicas=1, max_replicas=3))
    promote_prod(repo, run_dir, app="churn")  # a Helm release next to it
    applications = by_name(argo_applications(repo, "prod", "team-a"))
    assert set(applications) == {"team-a-classifier", "team-a-churn"}
    assert validate_objects(applications.values(), ARGOCD_CRDS) == []

    kserve = applications["team-a-classifier"]
    assert kserve["metadata"]["labels"] == {"kubeforge.io/tenant": "team-a", RELEASE_KIND_LABEL: "kserve"}
    (source,) = kserve["spec"]["sources"]  # no chart, no $values: the directory's kustomization is the release
    assert source == {"repoURL": "https://git.example.com/platform/kubeforge-gitops.git", "targetRevision": "main",
                      "path": KSERVE_RELEASE}
    assert kserve["spec"]["project"] == "team-a" and kserve["spec"]["destination"]["namespace"] == "team-a"

    helm = applications["team-a-churn"]
    assert helm["metadata"]["labels"][RELEASE_KIND_LABEL] == "helm"
    chart, values = helm["spec"]["sources"]
    assert chart["path"] == "charts/kubeforge-serving" and values["ref"] == "values"
    assert chart["helm"] == {"releaseName": "churn",
                             "valueFiles": ["$values/manifests/apps/team-a/prod/churn/values.yaml"]}


@pytest.mark.slow  # KServe's CRD is 2 MB of YAML to load
def test_what_argo_renders_from_the_kserve_source_is_the_inference_service(repo, run_dir):  # noqa: F811
    promote_prod(repo, run_dir, kserve=KServeOptions(min_replicas=2, max_replicas=3))
    (application,) = argo_applications(repo, "prod", "team-a")
    (source,) = application["spec"]["sources"]
    done = subprocess.run(["kubectl", "kustomize", str(repo / source["path"])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (service,) = [o for o in yaml.safe_load_all(done.stdout) if o]
    assert (service["kind"], service["metadata"]["name"]) == ("InferenceService", "classifier")
    assert "namespace" not in service["metadata"]  # Argo CD puts it in the destination namespace, team-a
    assert service["spec"]["predictor"]["minReplicas"] == 2
    assert validate_objects([service], (KSERVE_CRD,), builtin=False) == []


def test_switching_kinds_keeps_the_application_and_swaps_its_sources(repo, run_dir):  # noqa: F811
    promote_prod(repo, run_dir)
    (helm,) = argo_applications(repo, "prod", "team-a")
    promote_prod(repo, run_dir, kserve=KServeOptions())
    (kserve,) = argo_applications(repo, "prod", "team-a")
    promote_prod(repo, run_dir)
    (back,) = argo_applications(repo, "prod", "team-a")
    assert helm["metadata"]["name"] == kserve["metadata"]["name"] == back["metadata"]["name"]
    assert len(helm["spec"]["sources"]) == 2 and len(kserve["spec"]["sources"]) == 1
    assert back == helm
    # automated prune is what removes the previous kind's objects once the sources change
    assert kserve["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}


def test_each_env_generates_only_its_own_releases_of_either_kind(repo, run_dir):  # noqa: F811
    promote_prod(repo, run_dir, env="dev", kserve=KServeOptions())
    promote_prod(repo, run_dir, app="churn")
    assert set(by_name(argo_applications(repo, "dev", "team-a"))) == {"team-a-classifier"}
    assert set(by_name(argo_applications(repo, "prod", "team-a"))) == {"team-a-churn"}


def test_a_directory_holding_both_kinds_would_be_refused_by_the_app_set(repo, run_dir):  # noqa: F811
    """promote never leaves both files; if a hand edit did, Argo CD refuses duplicate Application names, so the
    release would not silently run as the wrong kind."""
    promote_prod(repo, run_dir, kserve=KServeOptions())
    (repo / KSERVE_RELEASE / "values.yaml").write_text("image: {repository: x, tag: '1'}\n")
    with pytest.raises(AssertionError, match=r"duplicate Applications \['team-a-classifier'\]"):
        argo_applications(repo, "prod", "team-a")


def test_cli_promotes_a_kserve_release_that_argo_deploys_as_one(repo, run_dir):  # noqa: F811
    from typer.testing import CliRunner

    from kubeforge.cli import app

    runner = CliRunner()
    common = ["promote", str(run_dir), "--tenant", "team-a", "--env", "prod", "-t", IMAGE, "--repo", str(repo),
              "--profile", "gpu-t4"]
    stray = runner.invoke(app, [*common, "--max-replicas", "3"])
    assert stray.exit_code == 2 and "--max-replicas only apply with --kserve" in stray.output
    bad = runner.invoke(app, [*common, "--kserve", "--deployment-mode", "Serverless"])
    assert bad.exit_code == 2 and "deployment mode 'Serverless' is not Standard or Knative" in bad.output
    unpinned = runner.invoke(app, [*common[:6], "-t", "registry.example.com/team-a/classifier", "--repo", str(repo),
                                   "--kserve"])
    assert unpinned.exit_code == 2 and "needs a tag or a digest for KServe" in unpinned.output
    assert not (repo / KSERVE_RELEASE).exists()  # every refusal wrote nothing
    done = runner.invoke(app, [*common, "--kserve", "--min-replicas", "0", "--max-replicas", "3",
                               "--deployment-mode", "Knative"])
    assert done.exit_code == 0, done.output
    assert "release: KServe InferenceService (Knative mode, replicas 0-3)" in done.output
    assert sorted(p.name for p in (repo / KSERVE_RELEASE).iterdir()) == ["inferenceservice.yaml",
                                                                         "kustomization.yaml"]
    service = yaml.safe_load((repo / KSERVE_RELEASE / "inferenceservice.yaml").read_text())
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert (service["spec"]["predictor"]["minReplicas"], service["spec"]["predictor"]["maxReplicas"]) == (0, 3)
    (application,) = argo_applications(repo, "prod", "team-a")
    assert application["metadata"]["labels"][RELEASE_KIND_LABEL] == "kserve"


def test_the_template_patch_is_rendered_by_go_templates(repo):  # noqa: F811
    """The patch is a Go template: it must parse and render for both kinds, and stay a mapping either way."""
    from tests.manifests.argocd import render

    app_set = tenant_app_set(repo, "prod", "team-a")
    patch = app_set["spec"]["templatePatch"]
    options = app_set["spec"]["goTemplateOptions"]
    helm, kserve = render([(patch, {"path": {"filename": "values.yaml", "path": "p"}}),
                           (patch, {"path": {"filename": "inferenceservice.yaml", "path": "p"}})], options)
    assert yaml.safe_load(helm) == {"metadata": {"labels": {RELEASE_KIND_LABEL: "helm"}}}
    assert yaml.safe_load(kserve)["spec"]["sources"][0]["path"] == "p"
    with pytest.raises(AssertionError, match="map has no entry for key"):  # missingkey=error is live
        render([(patch, {"path": {"path": "p"}})], options)
