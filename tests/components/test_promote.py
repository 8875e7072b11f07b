import json

import pytest
import yaml
from kfp import dsl

from kubeforge_components.promote import promote
from tests.kubeforge.deploy.conftest import git, repo, run_dir  # noqa: F401 - shared fixtures

IMAGE = "registry.example.com/team-a/classifier:2.0"


def test_interface_takes_the_model_its_report_and_where_to_push():
    inputs = promote.component_spec.inputs
    assert {name: spec.type for name, spec in inputs.items()} == {
        "compressed_model": "system.Model@0.0.1", "compression_json": "system.Artifact@0.0.1",
        **{name: "String" for name in ("tenant", "env", "image", "profile", "repo_url", "branch", "run_id", "app",
                                       "pipeline_name", "kserve_deployment_mode")},
        "kserve": "Boolean", "kserve_min_replicas": "Integer", "kserve_max_replicas": "Integer"}
    required = {name for name, spec in inputs.items() if not spec.optional}
    kserve = {"kserve", "kserve_min_replicas", "kserve_max_replicas", "kserve_deployment_mode"}
    assert required == set(inputs) - {"app", "pipeline_name"} - kserve  # where to push is never guessed
    assert {name: inputs[name].default for name in kserve} == {  # the Helm release unless asked
        "kserve": False, "kserve_min_replicas": 1, "kserve_max_replicas": 1, "kserve_deployment_mode": "Standard"}
    outputs = promote.component_spec.outputs
    assert (outputs["promotion_report"].type, outputs["Output"].type) == ("system.Markdown@0.0.1", "String")


def promotion_pipeline(model_uri: str, report_uri: str, repo_url: str, **release):
    @dsl.pipeline(name="promote-test")
    def pipeline() -> str:
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=True)
        report = dsl.importer(artifact_uri=report_uri, artifact_class=dsl.Artifact, reimport=True)
        task = promote(compressed_model=model.output, compression_json=report.output, tenant="team-a", env="prod",
                       image=IMAGE, profile="cpu", repo_url=repo_url, branch="main", run_id="promote-test-run",
                       **release)
        return task.outputs["Output"]
    return pipeline


@pytest.fixture
def remote(repo, tmp_path):  # noqa: F811 - the shared repo fixture
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    return bare


@pytest.mark.slow
def test_promote_step_pushes_the_release_from_a_pipeline(kfp_local, run_dir, remote, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GITOPS_AUTHOR_NAME", "pipeline bot")
    model_dir = run_dir / "compress" / "compressed_model"
    pipeline = promotion_pipeline(str(model_dir), str(model_dir / "compression.json"), remote.as_uri())
    commit = pipeline().output
    assert commit == git(remote, "rev-parse", "main").strip()
    message = git(remote, "log", "-1", "--format=%B%an", "main")
    assert "promote team-a/classifier to prod: run promote-test-run" in message and "pipeline bot" in message
    values = yaml.safe_load(git(remote, "show", "main:manifests/apps/team-a/prod/classifier/values.yaml"))
    assert values["image"]["tag"] == "2.0"


@pytest.mark.slow
def test_promote_step_fails_and_pushes_nothing_for_a_failed_gate(kfp_local, run_dir, remote, capfd):  # noqa: F811
    model_dir = run_dir / "compress" / "compressed_model"
    report = model_dir / "compression.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "gate": "failed", "chosen": None}))
    before = git(remote, "rev-parse", "main")
    with pytest.raises(RuntimeError):
        promotion_pipeline(str(model_dir), str(report), remote.as_uri())()
    assert "failed the accuracy gate" in "".join(capfd.readouterr())
    assert git(remote, "rev-parse", "main") == before


@pytest.mark.slow
def test_promote_step_pushes_a_kserve_release_when_asked(kfp_local, run_dir, remote):  # noqa: F811
    model_dir = run_dir / "compress" / "compressed_model"
    pipeline = promotion_pipeline(str(model_dir), str(model_dir / "compression.json"), remote.as_uri(), kserve=True,
                                  kserve_min_replicas=2, kserve_max_replicas=5)
    commit = pipeline().output
    assert commit == git(remote, "rev-parse", "main").strip()
    files = git(remote, "ls-tree", "--name-only", "main", "manifests/apps/team-a/prod/classifier/").split()
    assert sorted(f.rsplit("/", 1)[-1] for f in files) == ["inferenceservice.yaml", "kustomization.yaml"]
    service = yaml.safe_load(git(remote, "show", "main:manifests/apps/team-a/prod/classifier/inferenceservice.yaml"))
    predictor = service["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 5)
    assert predictor["containers"][0]["image"] == IMAGE
    assert predictor["annotations"]["kubeforge.io/run-id"] == "promote-test-run"
    assert "release: KServe InferenceService (Standard mode, replicas 2-5)" in git(remote, "log", "-1", "--format=%B")


@pytest.mark.slow
def test_promote_step_refuses_bad_kserve_settings_and_pushes_nothing(kfp_local, run_dir, remote, capfd):  # noqa: F811
    model_dir = run_dir / "compress" / "compressed_model"
    before = git(remote, "rev-parse", "main")
    with pytest.raises(RuntimeError):
        promotion_pipeline(str(model_dir), str(model_dir / "compression.json"), remote.as_uri(), kserve=True,
                           kserve_min_replicas=0)()
    assert "scaling to zero needs the Knative deployment mode" in "".join(capfd.readouterr())
    assert git(remote, "rev-parse", "main") == before
