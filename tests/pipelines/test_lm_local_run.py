"""The README's language-model job, `kubeforge run lm-pretrain-finetune`, through kfp.local on a tiny budget: every
step runs in its own interpreter as on a laptop, and the run directory holds what `kubeforge runs`, `kubeforge serve`
and the report read."""

import json

import pytest

from kubeforge.config import load_platform
from kubeforge.orchestration import run_local

pytestmark = pytest.mark.slow
TINY = {"pretrain_steps": 6, "pretrain_warmup_steps": 1, "finetune_steps": 6, "finetune_warmup_steps": 1,
        "eval_interval": 3, "eval_prompts": 2, "max_new_tokens": 8, "lm_distill_steps": 4, "heal_steps": 2,
        "lm_bench_rounds": 1, "lm_compress_methods": ["int8-weight", "onnx-int8"], "min_greedy_agreement": 0.0,
        "max_perplexity_increase": 1000.0}


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    return run_local("lm-pretrain-finetune", TINY, load_platform(), runs_dir=tmp_path_factory.mktemp("runs"))


def test_every_step_leaves_its_artifacts_and_no_pickle(lm_run):
    run_dir = lm_run.run_dir
    for relative in ("lm-data/lm_splits/stats.json", "lm-pretrain/pretrained_model/model.safetensors",
                     "lm-pretrain/pretrained_model/tokenizer.json",
                     "lm-finetune/finetuned_model/adapter/adapter_model.safetensors",
                     "lm-finetune/finetuned_model/merged/config.json", "lm-evaluate/lm_evaluation",
                     "lm-compress/compressed_model/compression.json", "lm-package/bento",
                     "lm-package/build_context/env/docker/Dockerfile", "report.html", "summary.json"):
        assert (run_dir / relative).exists(), relative
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_summary_and_report_carry_the_language_model_figures(lm_run):
    summary = json.loads((lm_run.run_dir / "summary.json").read_text())
    assert summary["pipeline"] == "lm-pretrain-finetune"
    assert summary["test"]["perplexity"] > 1 and summary["test"]["base_perplexity"] > 1
    assert summary["training"]["pretrain_steps"] == 6 and summary["training"]["finetune_steps"] == 6
    assert summary["compression"]["chosen"] in ("int8-weight", "onnx-int8")
    html = lm_run.report.read_text()
    for text in ("pre-training", "Evaluation: base vs fine-tuned", "ompress"):
        assert text in html, text
