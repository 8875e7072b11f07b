import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts.conftest import helm, render  # noqa: F401 - the chart fixtures, shared
from tests.manifests.argocd import argo_applications  # noqa: F401 - what the ApplicationSet generates

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = ROOT / "manifests"


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def build(path: Path) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [o for o in yaml.safe_load_all(done.stdout) if o]


@pytest.fixture
def repo(tmp_path):
    """A GitOps repository as platform teams hold it: manifests/ and the chart, committed."""
    root = tmp_path / "gitops"
    shutil.copytree(MANIFESTS, root / "manifests")
    shutil.copytree(ROOT / "charts" / "kubeforge-serving", root / "charts" / "kubeforge-serving")
    git(tmp_path, "init", "-q", "-b", "main", str(root))
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
        "baseline": {**measurement, "name": "baseline", "accuracy": 0.975, "size_bytes": 204_000}}))
    (run / "summary.json").write_text(json.dumps({
        "run_id": run.name, "pipeline": "train-compress", "profile": "cpu", "test": {"accuracy": 0.975}}))
    return run
