import json

import pytest

from kubeforge.compression import CompressionError
from kubeforge.compression.artifact import load_predictor
from kubeforge.compression.step import compress_step, report_section, summary_metrics, to_markdown
from kubeforge.config import CompressConfig, ConfigError, RunConfig
from kubeforge.data import write_splits
from kubeforge.models import save_model


@pytest.fixture(scope="module")
def run_dirs(teacher, digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("step")
    write_splits(digits, root / "splits")
    save_model(teacher.module, teacher.spec, root / "model")
    return root


def config(**kwargs) -> CompressConfig:
    return CompressConfig(**{"compress_methods": ["int8-dynamic", "onnx-int8"], **kwargs})


def test_gate_passes_and_writes_the_chosen_model(run_dirs, digits):
    report = compress_step(run_dirs / "splits", run_dirs / "model", run_dirs / "out", config(max_accuracy_drop=1.0))
    assert report["gate"] == "passed" and report["chosen"] in ("int8-dynamic", "onnx-int8")
    saved = json.loads((run_dirs / "out" / "compression.json").read_text())
    assert saved["chosen"] == report["chosen"] and len(saved["candidates"]) == 2
    assert saved["environment"]["versions"]["onnxruntime"]
    probabilities = load_predictor(run_dirs / "out")(digits.X_test)
    chosen = next(m for m in report["candidates"] if m["name"] == report["chosen"])
    assert abs((probabilities.argmax(1) == digits.y_test).mean() - chosen["accuracy"]) < 1e-9
    for m in [report["baseline"], *report["candidates"]]:
        assert m["p99_ms_b1"] >= m["p50_ms_b1"] > 0 and m["p50_ms_b32"] > 0 and m["size_bytes"] > 0
    markdown = to_markdown(report)
    assert "| onnx-int8 |" in markdown and "CPU flags" in markdown
    assert "data:image/png;base64" in report_section(report).body_html
    assert summary_metrics(report)["chosen_size_ratio"] >= 3.5


def test_gate_at_zero_fails_with_every_candidate_in_the_message(run_dirs):
    with pytest.raises(CompressionError) as failure:
        compress_step(run_dirs / "splits", run_dirs / "model", run_dirs / "failed",
                      config(compress_methods=["distill"], student_hidden_sizes=[4], distill_epochs=1,
                             max_accuracy_drop=0.0))
    message = str(failure.value)
    assert "no candidate passed the accuracy gate (max drop 0.0 points)" in message and "distill" in message
    assert not (run_dirs / "failed" / "model.json").exists()
    assert json.loads((run_dirs / "failed" / "compression.json").read_text())["gate"] == "failed"


@pytest.mark.parametrize("methods, message", [
    (["int8-dynamic+prune-structured"], "prune-structured cannot follow int8-dynamic"),
    (["onnx-int8+fp16"], "fp16 cannot follow onnx-int8"),
])
def test_impossible_chains_are_refused_before_work(run_dirs, methods, message, tmp_path):
    with pytest.raises(CompressionError, match=message):
        compress_step(run_dirs / "splits", run_dirs / "model", tmp_path / "out", config(compress_methods=methods))
    assert not (tmp_path / "out").exists()


def test_structured_pruning_of_a_plugin_model_is_refused_before_work(run_dirs, digits, tmp_path):
    from kubeforge.models import build_model
    from tests.kubeforge.conftest import spec_for

    spec = spec_for(digits, model="tests.kubeforge.plugin_model:TinyNet")
    save_model(build_model(spec), spec, tmp_path / "plugin")
    with pytest.raises(CompressionError, match="prune-structured rebuilds mlp and cnn layers; model 'tests"):
        compress_step(run_dirs / "splits", tmp_path / "plugin", tmp_path / "out",
                      config(compress_methods=["prune-structured"]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values, message", [
    ({"compress_methods": ["zip"]}, "unknown compression method 'zip'"),
    ({"compress_methods": ["distill+gzip"]}, "unknown compression method 'gzip' in 'distill\\+gzip'"),
    ({"compress_methods": []}, "at least one compression method"),
    ({"max_accuracy_drop": -1}, "max_accuracy_drop: Input should be greater than or equal to 0"),
    ({"max_accuracy_drop": 101}, "max_accuracy_drop: Input should be less than or equal to 100"),
    ({"objective": "speed"}, "objective"),
    ({"bench_runs": 10}, "bench_runs: Input should be greater than or equal to 100"),
])
def test_bad_settings_are_refused_by_the_config(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_flat(values)
