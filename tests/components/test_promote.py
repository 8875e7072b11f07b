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
                                       "pipeline_name")}}
    required = {name for name, spec in inputs.items() if not spec.optional}
    assert required == set(inputs) - {"app", "pipeline_name"}  # where to push is never guessed
    outputs = promote.component_spec.outputs
    assert (outputs["promotion_report"].type, outputs["Output"].type) == ("system.Markdown@0.0.1", "String")


def promotion_pipeline(model_uri: str, report_uri: str, repo_url: str):
    @dsl.pipeline(name="promote-test")
    def pipeline() -> str:
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=True)
        report = dsl.importer(artifact_uri=report_uri, artifact_class=dsl.Artifact, reimport=True)
        task = promote(compressed_model=model.output, compression_json=report.output, tenant="team-a", env="prod",
                       image=IMAGE, profile="cpu", repo_url=repo_url, branch="main", run_id="promote-test-run")
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
