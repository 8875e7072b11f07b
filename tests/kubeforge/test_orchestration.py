"""The default pipeline end to end through kfp.local, as `kubeforge run` does it; how a failed step is reported."""

import json
import re
from pathlib import Path

import pytest

from kubeforge.config import load_platform
from kubeforge.data import DataError
from kubeforge.orchestration import PipelineRunError, failure_error, is_user_error, pipeline_steps, run_local
from kubeforge.run_output import StepFailure


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return run_local("train-compress", {"epochs": 30, "compress_methods": ["onnx-int8", "distill+onnx-int8"]},
                     load_platform(), runs_dir=tmp_path_factory.mktemp("runs"))


def executor_output(run_dir: Path, task: str) -> dict:
    return json.loads((run_dir / task / "executor_output.json").read_text())


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_every_step_has_its_log(digits_run):
    run_dir = digits_run.run_dir
    for step in ("preprocess", "train", "evaluate", "compress", "package", "report"):
        assert "[KFP Executor" in (run_dir / step / "log.txt").read_text(), step
    assert re.search(r"^train: +\d+%\|.*\| \d+/30 ", (run_dir / "train" / "log.txt").read_text(), re.M)  # the bar
    assert "Executing task 'compress'" in (run_dir / "run.log").read_text()


@pytest.mark.slow
def test_a_failing_step_is_reported_in_its_own_words(tmp_path):
    few = tmp_path / "few.csv"  # valid as a table (the preflight check passes it), too small to split
    few.write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(6)))
    with pytest.raises(PipelineRunError) as info:
        run_local("train-evaluate", {"dataset": str(few), "label_column": "y"}, load_platform(),
                  runs_dir=tmp_path / "runs")
    error = info.value
    assert str(error) == (f"{few}: class '0' has 3 rows; a stratified split with val_fraction=0.15 and "
                          "test_fraction=0.2 needs at least 8")
    assert error.step == "preprocess" and error.user_error
    assert error.log == error.run_dir / "preprocess" / "log.txt"
    assert "kubeforge.errors.DataError: " + str(error) in error.log.read_text()


def test_bad_data_is_refused_before_any_step_starts(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,y\n1,0\n2,0\n")
    with pytest.raises(DataError, match="label column 'y' has a single class"):
        run_local("train-evaluate", {"dataset": str(bad), "label_column": "y"}, load_platform(),
                  runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_steps_are_listed_in_the_order_kfp_local_runs_them():
    from kubeforge_pipelines import build_pipeline

    assert pipeline_steps(build_pipeline("train-compress", load_platform())) == [
        "preprocess", "train", "compress", "evaluate", "package", "report"]


@pytest.mark.parametrize("error_type, expected", [
    ("kubeforge.data.DataError", True), ("kubeforge.config.base.ConfigError", True),
    ("kubeforge.deploy.tenants.TenantError", True),  # a ConfigError subclass, found by importing it
    ("kubeforge.compression.candidate.CompressionError", True), ("ZeroDivisionError", False),
    ("kubeforge.checkpoint.CheckpointError", True), ("kubeforge.no_such_module.Thing", False), ("RuntimeError", False),
])
def test_bad_input_is_told_from_an_internal_failure(error_type, expected):
    assert is_user_error(error_type) is expected


def test_the_error_carries_the_cause_first_and_the_rest_of_a_long_message(tmp_path):
    gate = failure_error(StepFailure("compress", "kubeforge.compression.candidate.CompressionError",
                                     "no candidate passed the accuracy gate (max drop 0.1 points):\nname  drop\nint8  2.0",
                                     tmp_path / "compress" / "log.txt"), tmp_path)
    assert str(gate) == "no candidate passed the accuracy gate (max drop 0.1 points)" and gate.user_error
    assert gate.details == "name  drop\nint8  2.0" and gate.step == "compress"
    internal = failure_error(StepFailure("train", "ZeroDivisionError", "division by zero", None), None)
    assert str(internal) == "ZeroDivisionError: division by zero" and not internal.user_error
    bare = failure_error(StepFailure("train", "kubeforge.models.ModelError", "", None), None)
    assert str(bare) == "train failed with ModelError (no message)" and bare.user_error
