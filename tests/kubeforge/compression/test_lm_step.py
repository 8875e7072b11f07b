"""The lm-compress step end to end on a tiny trained Llama: every candidate measured from its own directory, the
gate, the choice by objective, the chosen directory equal to the measured one, the report, and bad input refused
before any work."""

import json

import pytest
import torch

from kubeforge.compression import CompressionError
from kubeforge.compression.lm_bench import Workload, heldout_perplexity, measure_all
from kubeforge.compression.lm_report import lm_compression_markdown, lm_compression_metrics, lm_compression_section
from kubeforge.compression.lm_step import lm_compress_step, load_lm_compression, model_to_compress
from kubeforge.config import LMRuntimeConfig
from kubeforge.lm.inference import open_runner
from tests.kubeforge.compression.lm_fixtures import (build_tiny_lm, lm_data_config, lm_settings,  # noqa: F401
                                                     offline_one_thread, write_lm_splits)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline_one_thread")]
METHODS = ["int8-weight", "prune-layers", "distill", "prune-layers+onnx-int8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-compress")
    data = write_lm_splits(root / "data")
    model = build_tiny_lm(root / "model", data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = lm_compress_step(data, model, root / "out", lm_settings(lm_compress_methods=METHODS),
                                  lm_data_config(), LMRuntimeConfig())
    finally:
        torch.set_num_threads(threads)
    return root, report


def test_the_fastest_passing_candidate_is_chosen_and_its_directory_is_the_measured_one(run):
    root, report = run
    assert report["gate"] == "passed" and [m["name"] for m in report["candidates"]] == METHODS
    fastest = max((m for m in report["candidates"] if m["passed"]), key=lambda m: m["decode_tokens_s_b1"])
    assert report["chosen"] == fastest["name"] and report["objective"] == "latency"
    out = root / "out"
    assert load_lm_compression(out)["chosen"] == report["chosen"]
    chosen = next(m for m in report["candidates"] if m["name"] == report["chosen"])
    weights = out / report["artifact"]["weights"][0]
    import hashlib

    assert hashlib.sha256(weights.read_bytes()).hexdigest() == chosen["sha256"] == report["artifact"]["sha256"]
    assert not (root / ".out-candidates").exists()  # the other candidates' directories are cleaned up


def test_the_served_directory_reproduces_the_measured_figures(run):
    root, report = run
    chosen = next(m for m in report["candidates"] if m["name"] == report["chosen"])
    from kubeforge.compression.lm_step import _workload
    from kubeforge.lm.sources import load_causal_lm

    model, tokenizer = load_causal_lm(root / "model")
    workload, _, _ = _workload(root / "data", tokenizer, lm_data_config(), 96)
    assert isinstance(workload, Workload)
    assert heldout_perplexity(open_runner(root / "out"), workload.heldout) == chosen["perplexity"]
    again = measure_all([("baseline", root / "model"), ("served", root / "out")], workload, threads=1, rounds=1)
    assert again[1].greedy_agreement == chosen["greedy_agreement"] and again[1].size_bytes == chosen["size_bytes"]


def test_every_candidate_carries_the_same_figures(run):
    root, report = run
    from kubeforge.lm.evaluation import evaluate_causal_lm
    from kubeforge.lm.corpus import read_examples
    from kubeforge.lm.sequences import encode_examples
    from kubeforge.lm.sources import load_causal_lm

    model, tokenizer = load_causal_lm(root / "model")
    heldout = encode_examples(read_examples(root / "data" / "finetune" / "heldout.jsonl"), tokenizer, 48)
    base = report["baseline"]
    assert base["perplexity"] == pytest.approx(evaluate_causal_lm(model, heldout)["perplexity"], rel=1e-4)
    for m in [base, *report["candidates"]]:
        assert m["size_bytes"] > 0 and m["parameters"] > 0 and m["perplexity"] > 1
        assert 0 <= m["greedy_agreement"] <= 1 and m["decode_tokens_s_b1"] > 0 and m["decode_tokens_s_b8"] > 0
        assert m["ttft_ms"] > 0 and m["ttft_prompt_tokens"] == 95  # 128 asked, capped by the context of 96
        assert len(m["rounds"]["decode_tokens_s_b1"]) == 1
    figures = {m["name"]: m for m in report["candidates"]}
    assert base["greedy_agreement"] == 1.0 and base["perplexity_increase_pct"] == 0.0
    assert figures["int8-weight"]["size_ratio"] > 3 and figures["int8-weight"]["precision"] == "int8"
    assert figures["prune-layers"]["parameters"] < base["parameters"]
    assert figures["distill"]["parameter_share"] < 0.6
    assert figures["prune-layers+onnx-int8"]["kind"] == "onnx" and figures["prune-layers+onnx-int8"]["size_ratio"] > 3
    assert all(any(note.startswith("built in") for note in m["notes"]) for m in report["candidates"])
    versions = report["environment"]["versions"]
    assert versions["torchao"] != "not installed" and versions["onnxruntime"] != "not installed"
    assert report["workload"]["agreement_tokens"] == 32 and report["workload"]["prompts"] == 8


def test_markdown_metrics_and_the_report_section(run):
    _, report = run
    markdown = lm_compression_markdown(report)
    assert "| prune-layers+onnx-int8 | pass |" in markdown and "CPU flags" in markdown
    metrics = lm_compression_metrics(report)
    assert metrics["chosen_decode_speedup_b1"] > 0 and "int8_weight_size_ratio" in metrics
    section = lm_compression_section(report)
    assert section.title == "Compression" and "data:image/png;base64" in section.body_html
    from kubeforge.lm.report import lm_sections

    stats = {"finetune": {"source": "pydoc:docstrings", "train": {"examples": 3, "characters": 9},
                          "heldout": {"examples": 1, "characters": 3}}}
    record = {"history": [{"step": 1, "loss": 2.0, "val_loss": 2.1}], "steps_run": 1, "best_step": 1,
              "best_val_loss": 2.1, "tokens_per_second": 10.0, "trainable_parameters": 1, "total_parameters": 2,
              "device": "cpu"}
    evaluation = {"base": {"perplexity": 9.0}, "finetuned": {"perplexity": 8.0}, "beats_base": True,
                  "heldout_examples": 1, "perplexity_ratio": 0.9, "completions": [], "max_new_tokens": 4}
    titles = [s.title for s in lm_sections(stats, None, record, evaluation, report)]
    assert titles[-1] == "Compression" and len(lm_sections(stats, None, record, evaluation)) == len(titles) - 1


def test_a_failed_gate_names_every_candidate_and_ships_nothing(run, tmp_path):
    root, _ = run
    settings = lm_settings(lm_compress_methods=["prune-layers"], heal_steps=0, max_perplexity_increase=0.0,
                           min_greedy_agreement=1.0)
    with pytest.raises(CompressionError) as failure:
        lm_compress_step(root / "data", root / "model", tmp_path / "out", settings, lm_data_config(),
                         LMRuntimeConfig())
    message = str(failure.value)
    assert "no candidate passed the LM gate (perplexity increase <= 0.0 %, greedy agreement >= 1.0)" in message
    assert "prune-layers" in message and "perplexity" in message and "tok/s b1" in message
    saved = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert saved["gate"] == "failed" and saved["candidates"][0]["passed"] is False
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compression.json"]


def test_a_bad_request_fails_before_any_candidate_is_built(run, tmp_path):
    root, _ = run
    with pytest.raises(CompressionError, match="leaves none"):
        lm_compress_step(root / "data", root / "model", tmp_path / "out",
                         lm_settings(lm_compress_methods=["int8-weight", "prune-layers"], prune_layer_fraction=0.95),
                         lm_data_config(), LMRuntimeConfig(), workdir=tmp_path / "work")
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_a_lora_adapter_is_merged_into_its_base_before_compression(run, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root, _ = run
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "model"),
                             LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "ft" / "adapter")
    source, how = model_to_compress(tmp_path / "ft", tmp_path / "work", base_dir=root / "model")
    assert how == "the LoRA adapter merged into its base"
    merged = AutoModelForCausalLM.from_pretrained(source)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)
    assert not any(name.startswith("base_model") for name in merged.state_dict())
