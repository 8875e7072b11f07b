"""`kubeforge runs list|show|compare` over run directories holding the summary.json `kubeforge run` writes."""

import json

import pytest
from typer.testing import CliRunner

from kubeforge.cli import app
from kubeforge.config import ConfigError
from kubeforge.runs import compare_runs, find_run, format_value, list_runs

runner = CliRunner()


def classifier_summary(run_id, accuracy, epochs, chosen="onnx-int8", wall=24.9):
    return {"pipeline": "train-compress", "run_id": run_id, "profile": "cpu", "wall_seconds": wall,
            "params": {"dataset": "digits", "epochs": epochs, "hidden_sizes": [256, 128], "learning_rate": 0.003},
            "training": {"best_epoch": 6, "epochs_run": 14, "stopped_early": True, "device": "cpu",
                         "samples_per_second": 873.2, "parameters": 50826},
            "test": {"accuracy": accuracy, "f1_macro": accuracy - 0.001},
            "compression": {"chosen": chosen, "gate": "passed", "accuracy": accuracy - 0.01, "size_ratio": 16.0},
            "artifacts": {"train/trained_model": "train/trained_model", "report/run_report": "report/run_report"}}


def lm_summary(run_id, perplexity):
    return {"pipeline": "lm-pretrain-finetune", "run_id": run_id, "profile": "cpu", "wall_seconds": 61.0,
            "params": {"pretrain_steps": 300, "finetune_method": "lora", "lora_rank": 8},
            "training": {"pretrain_steps": 300, "pretrain_tokens_per_second": 2100.5, "parameters": 1_800_000},
            "test": {"perplexity": perplexity, "base_perplexity": 670.2, "tokens_per_second": 512.0},
            "compression": None, "artifacts": {"lm-finetune/finetuned_model": "lm-finetune/finetuned_model"}}


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    for summary in (classifier_summary("train-compress-2026-11-24-15-04-33-000001", 0.975, 40),
                    classifier_summary("train-compress-2026-11-25-09-00-00-000002", 0.9611, 20, chosen=None, wall=18.2),
                    lm_summary("lm-pretrain-finetune-2026-11-26-10-30-00-000003", 41.7)):
        run = root / summary["run_id"]
        (run / "train").mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "report.html").write_text("<html></html>")
    (root / "train-compress-2026-11-27-08-00-00-000004" / "preprocess").mkdir(parents=True)  # a failed run
    return root


def invoke(*args):
    return runner.invoke(app, ["runs", *args])


def test_list_shows_newest_first_with_headline_chosen_and_wall_time(runs_dir):
    records, incomplete = list_runs(runs_dir)
    assert [r.run_id[-6:] for r in records] == ["000003", "000002", "000001"]
    assert [r.headline for r in records] == [("perplexity", 41.7), ("accuracy", 0.9611), ("accuracy", 0.975)]
    assert [p.name[-6:] for p in incomplete] == ["000004"]
    result = invoke("list", "--runs-dir", str(runs_dir))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    lm_row = next(line for line in lines if "lm-pretrain-finetune-2026" in line)
    assert "2026-11-26 10:30" in lm_row and "perplexity 41.7000" in lm_row and "61.0 s" in lm_row
    first = next(line for line in lines if "000001" in line)
    assert "accuracy 0.9750" in first and "onnx-int8" in first and "24.9 s" in first
    assert "1 run directory without a summary (failed or still running)" in result.output


def test_list_filters_by_pipeline_and_says_when_there_is_nothing(runs_dir, tmp_path):
    only = invoke("list", "--runs-dir", str(runs_dir), "--pipeline", "lm-pretrain-finetune")
    assert "000003" in only.output and "000001" not in only.output
    empty = invoke("list", "--runs-dir", str(tmp_path / "none"))
    assert empty.exit_code == 0 and "no runs in" in empty.output


def test_show_prints_settings_metrics_artifacts_and_report(runs_dir):
    result = invoke("show", "000001", "--runs-dir", str(runs_dir))
    assert result.exit_code == 0, result.output
    for expected in ("train-compress-2026-11-24-15-04-33-000001", "accuracy", "0.9750", "training best_epoch",
                     "compression chosen", "hidden_sizes", "[256, 128]", "train/trained_model",
                     f"report: {runs_dir / 'train-compress-2026-11-24-15-04-33-000001' / 'report.html'}"):
        assert expected in result.output, expected
    lm = invoke("show", "latest", "--runs-dir", str(runs_dir))
    assert "base_perplexity" in lm.output and "lora_rank" in lm.output and "training pretrain_steps" in lm.output


def test_compare_puts_metrics_and_differing_settings_side_by_side(runs_dir):
    first, second = find_run("000001", runs_dir), find_run("000002", runs_dir)
    metrics, settings = compare_runs(first, second)
    accuracy = next(row for row in metrics if row.name == "accuracy")
    assert (accuracy.first, accuracy.second) == (0.975, 0.9611) and accuracy.delta == "-0.0139 (-1.4%)"
    assert [(row.name, row.first, row.second) for row in settings] == [("epochs", 40, 20)]
    result = invoke("compare", "000001", "000002", "--runs-dir", str(runs_dir))
    assert result.exit_code == 0, result.output
    assert "settings that differ" in result.output and "epochs" in result.output
    assert "learning_rate" not in result.output  # equal settings are not listed


def test_a_classifier_and_a_language_model_run_compare_too(runs_dir):
    metrics, settings = compare_runs(find_run("000001", runs_dir), find_run("000003", runs_dir))
    by_name = {row.name: row for row in metrics}
    assert by_name["perplexity"].first is None and by_name["perplexity"].second == 41.7
    assert by_name["accuracy"].second is None and by_name["accuracy"].delta == ""
    assert {row.name for row in settings} >= {"epochs", "lora_rank"}


@pytest.mark.parametrize("reference, message", [
    ("nothing-like-it", "no run 'nothing-like-it' in"),
    ("train-compress", "run 'train-compress' is ambiguous"),
    ("train-compress-2026-11-27-08-00-00-000004", "has no summary.json: the run failed or has not finished"),
])
def test_unknown_ambiguous_or_unfinished_runs_are_usage_errors(runs_dir, reference, message):
    with pytest.raises(ConfigError, match=message):
        find_run(reference, runs_dir)
    result = invoke("show", reference, "--runs-dir", str(runs_dir))
    assert result.exit_code == 2 and message in result.output


def test_a_run_directory_path_works_from_anywhere(runs_dir):
    path = runs_dir / "lm-pretrain-finetune-2026-11-26-10-30-00-000003"
    assert find_run(str(path), "elsewhere").pipeline == "lm-pretrain-finetune"


def test_a_corrupt_summary_is_named(runs_dir):
    (runs_dir / "train-compress-2026-11-24-15-04-33-000001" / "summary.json").write_text("{")
    with pytest.raises(ConfigError, match="summary.json: unreadable"):
        find_run(str(runs_dir / "train-compress-2026-11-24-15-04-33-000001"), runs_dir)


@pytest.mark.parametrize("value, text", [(0.97501, "0.9750"), (670.24, "670.2400"), (2100.5, "2,100.5"),
                                         (50826, "50,826"), (True, "yes"), (None, "-"), ([64, 32], "[64, 32]"),
                                         ("cpu", "cpu")])
def test_values_are_formatted_for_reading(value, text):
    assert format_value(value) == text
