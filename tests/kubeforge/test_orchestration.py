"""The default pipeline end to end through kfp.local, as `kubeforge run` does it."""

import json
from pathlib import Path

import pytest

from kubeforge.config import load_platform
from kubeforge.orchestration import PipelineRunError, run_local

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return run_local("train-compress", {"epochs": 30, "compress_methods": ["onnx-int8", "distill+onnx-int8"]},
                     load_platform(), runs_dir=tmp_path_factory.mktemp("runs"))


def executor_output(run_dir: Path, task: str) -> dict:
    return json.loads((run_dir / task / "executor_output.json").read_text())


def test_every_artifact_exists(digits_run):
    run_dir = digits_run.run_dir
    assert run_dir.name.startswith("train-compress-")
    for relative in ("preprocess/splits/train.parquet", "preprocess/splits/schema.json",
                     "preprocess/data_report", "train/trained_model/model.safetensors",
                     "train/trained_model/model.json", "train/trained_model/training/history.json",
                     "train/trained_model/training/checkpoint/state.safetensors",
                     "evaluate/evaluation", "evaluate/evaluation_report", "report/run_report",
                     "compress/compressed_model/model.onnx", "compress/compressed_model/model.json",
                     "compress/compressed_model/compression.json", "compress/compression_report",
                     "report.html", "summary.json"):
        assert (run_dir / relative).exists(), relative
    assert not list(run_dir.rglob("*.pt")) and not list(run_dir.rglob("*.pkl"))


def test_metrics_are_logged_with_display_names(digits_run):
    train = executor_output(digits_run.run_dir, "train")["artifacts"]
    metrics = train["train_metrics"]["artifacts"][0]["metadata"]
    assert metrics["display_name"] == "Training metrics" and metrics["val_accuracy"] > 0.9
    evaluate = executor_output(digits_run.run_dir, "evaluate")["artifacts"]
    assert evaluate["test_metrics"]["artifacts"][0]["metadata"]["accuracy"] >= 0.90
    confusion = evaluate["confusion"]["artifacts"][0]["metadata"]
    assert confusion["display_name"] == "Confusion matrix"
    assert len(confusion["confusionMatrix"]["rows"]) == 10
    compress = executor_output(digits_run.run_dir, "compress")["artifacts"]
    chosen = compress["compression_metrics"]["artifacts"][0]["metadata"]
    assert chosen["chosen_size_ratio"] >= 3.0 and chosen["chosen_accuracy_drop"] <= 1.0
    for outputs in (train, evaluate, compress):
        for name, output in outputs.items():
            assert output["artifacts"][0]["metadata"].get("display_name"), name


def test_summary_and_report(digits_run):
    summary = json.loads((digits_run.run_dir / "summary.json").read_text())
    assert summary == digits_run.summary
    assert summary["test"]["accuracy"] >= 0.90
    assert summary["params"]["epochs"] == 30 and summary["profile"] == "cpu"
    page = digits_run.report.read_text()
    assert page.count("data:image/png;base64") == 4  # curves, confusion, importance, compression trade-off
    assert "Evaluation (test split)" in page and "Compression" in page
    assert summary["compression"]["gate"] == "passed"
    assert summary["compression"]["chosen"] in ("onnx-int8", "distill+onnx-int8")


def test_a_failing_step_is_reported_by_name(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,y\n1,0\n2,0\n")
    with pytest.raises(PipelineRunError, match="pipeline train-evaluate failed: .*preprocess"):
        run_local("train-evaluate", {"dataset": str(bad), "label_column": "y"}, load_platform(),
                  runs_dir=tmp_path / "runs")
