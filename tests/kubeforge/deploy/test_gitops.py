import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.config import load_platform
from kubeforge.deploy.gitops import PromotionError, promote

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"
IMAGE = "registry.example.com/team-a/classifier:1.0"


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "gitops"
    shutil.copytree(MANIFESTS, root / "manifests")
    git(tmp_path, "init", "-q", str(root))
    git(root, "config", "user.email", "ci@example.com")
    git(root, "config", "user.name", "CI")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "initial")
    return root


@pytest.fixture
def run_dir(tmp_path):
    """A finished run as `kubeforge run` leaves it: summary.json, the compressed model and its report."""
    from kubeforge.config import ModelConfig
    from kubeforge.models import ModelSpec, build_model, save_model

    run = tmp_path / "train-compress-2026-11-24-10-00-00-000000"
    model_dir = run / "compress" / "compressed_model"
    spec = ModelSpec(config=ModelConfig(hidden_sizes=[4]), input_dim=2, num_classes=2, feature_names=["a", "b"],
                     class_names=["x", "y"], scaler_mean=[0, 0], scaler_scale=[1, 1])
    save_model(build_model(spec), spec, model_dir)
    measurement = {"name": "onnx-int8", "precision": "int8", "kind": "onnx", "accuracy": 0.972,
                   "accuracy_drop": 0.28, "size_bytes": 61_000, "size_ratio": 3.31, "p50_ms_b1": 0.017,
                   "p99_ms_b1": 0.025}
    (model_dir / "compression.json").write_text(json.dumps({
        "gate": "passed", "chosen": "onnx-int8", "max_accuracy_drop": 1.0, "candidates": [measurement],
        "baseline": {**measurement, "name": "baseline", "size_bytes": 204_000}}))
    (run / "summary.json").write_text(json.dumps({
        "run_id": run.name, "pipeline": "train-compress", "profile": "cpu", "test": {"accuracy": 0.975}}))
    return run


def test_promotion_is_a_commit_touching_only_that_path_with_the_evidence(repo, run_dir):
    result = promote(run_dir, tenant="team-a", env="prod", repo=repo, image=IMAGE, platform=load_platform(),
                     profile="gpu-t4")
    assert git(repo, "rev-parse", "HEAD").strip() == result.commit
    changed = git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert changed == ["manifests/apps/team-a/classifier/values-prod.yaml"]
    message = git(repo, "log", "-1", "--format=%B")
    for evidence in (run_dir.name, "0.9750", "0.9720", "-0.28 points", "onnx-int8", "59.6 KiB", "3.31x",
                     "p50 0.017 ms", "p99 0.025 ms"):
        assert evidence in message, evidence
    values = yaml.safe_load((repo / result.path).read_text())
    assert values["image"] == {"repository": "registry.example.com/team-a/classifier", "tag": "1.0"}
    assert values["gpu"]["product"] == "Tesla-T4"
    assert values["podAnnotations"]["kubeforge.io/run-id"] == run_dir.name


def head(repo):
    return git(repo, "rev-parse", "HEAD").strip()


def test_refuses_a_run_that_failed_the_gate(repo, run_dir):
    report = run_dir / "compress" / "compressed_model" / "compression.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "gate": "failed", "chosen": None}))
    before = head(repo)
    with pytest.raises(PromotionError, match="failed the accuracy gate"):
        promote(run_dir, tenant="team-a", env="prod", repo=repo, image=IMAGE, platform=load_platform())
    assert head(repo) == before


def test_refuses_an_unknown_tenant_and_an_unfinished_run(repo, run_dir, tmp_path):
    with pytest.raises(PromotionError, match="unknown tenant 'team-z'"):
        promote(run_dir, tenant="team-z", env="prod", repo=repo, image=IMAGE, platform=load_platform())
    (run_dir / "summary.json").unlink()
    with pytest.raises(PromotionError, match="has no summary.json"):
        promote(run_dir, tenant="team-a", env="prod", repo=repo, image=IMAGE, platform=load_platform())
    with pytest.raises(PromotionError, match="does not exist"):
        promote(tmp_path / "nope", tenant="team-a", env="prod", repo=repo, image=IMAGE, platform=load_platform())


def test_refuses_a_dirty_target_path(repo, run_dir):
    app = repo / "manifests" / "apps" / "team-a" / "classifier"
    app.mkdir(parents=True)
    (app / "notes.txt").write_text("work in progress")
    before = head(repo)
    with pytest.raises(PromotionError, match="has uncommitted changes"):
        promote(run_dir, tenant="team-a", env="prod", repo=repo, image=IMAGE, platform=load_platform())
    assert head(repo) == before and not (app / "values-prod.yaml").exists()


def test_push_failure_is_reported(repo, run_dir):
    with pytest.raises(PromotionError, match="git push failed"):
        promote(run_dir, tenant="team-a", env="dev", repo=repo, image=IMAGE, platform=load_platform(), push=True)


def test_not_a_git_repository(tmp_path, run_dir):
    with pytest.raises(PromotionError, match="is not a git repository"):
        promote(run_dir, tenant="team-a", env="dev", repo=tmp_path / "plain", image=IMAGE, platform=load_platform())
