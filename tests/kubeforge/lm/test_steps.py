"""The LM steps chained as the pipelines chain them, on a tiny budget: every file a later step, the service or
transformers opens is there and none is a pickle; the evaluation compares the fine-tune with its base."""

import json

import pytest

from kubeforge.config import RunConfig
from kubeforge.lm import steps

pytestmark = pytest.mark.slow
TINY = {"pretrain_steps": 6, "pretrain_warmup_steps": 1, "finetune_steps": 6, "finetune_warmup_steps": 1,
        "eval_interval": 3, "checkpoint_interval": 3, "max_length": 64, "eval_prompts": 2, "max_new_tokens": 4,
        "tokenizer_vocab": 512, "pretrain_batch_size": 4, "finetune_batch_size": 4}


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-run")
    config = RunConfig.from_flat(TINY)
    stats = steps.lm_data_step(config.lm_data, root / "data")
    pretrained = steps.pretrain_step(root / "data", root / "pre", config.lm_model, config.lm_data, config.pretrain,
                                     config.lm_runtime, progress=False)
    tuned = steps.finetune_step(root / "data", root / "ft", config.lm_model, config.lm_data, config.finetune,
                                config.lm_runtime, config.lora, base_dir=root / "pre", progress=False)
    evaluation = steps.evaluate_lm_step(root / "data", root / "ft", root / "eval.json", config.lm_model,
                                        config.lm_data, config.lm_runtime, base_dir=root / "pre")
    steps.lm_report_step(root / "data", root / "ft", root / "eval.json", root / "report.html", pretrained_dir=root / "pre")
    return root, stats, pretrained, tuned, evaluation


def test_each_step_writes_what_the_next_one_opens_and_no_pickle(chained):
    root, *_ = chained
    for directory in (root / "pre", root / "ft" / "merged"):
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in directory.iterdir()}
    assert (root / "ft" / "adapter" / "adapter_model.safetensors").is_file()
    assert not [p for p in root.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert not (root / "pre" / steps.SOURCE_DIR).exists()  # the scratch build is not left inside the artifact


def test_training_records_tell_what_was_trained(chained):
    _, stats, pretrained, tuned, _ = chained
    assert pretrained["steps_run"] == 6 and pretrained["base_model"] == "scratch:tiny"
    assert pretrained["trainable_parameters"] == pretrained["total_parameters"]
    assert 0 < tuned["trainable_parameters"] < tuned["total_parameters"] / 5  # LoRA adapters only
    assert tuned["finetune_method"] == "lora" and set(tuned["train_data"]["kinds"]) == {"prompt_completion"}
    assert stats["corpus"]["train"]["documents"] > stats["corpus"]["heldout"]["documents"] > 0


def test_evaluation_puts_the_fine_tune_beside_its_base(chained):
    root, _, _, _, evaluation = chained
    for side in ("base", "finetuned"):
        assert evaluation[side]["perplexity"] == pytest.approx(__import__("math").exp(evaluation[side]["loss"]))
        assert 0.0 <= evaluation[side]["next_token_accuracy"] <= 1.0 and evaluation[side]["corpus_perplexity"] > 1
    assert evaluation["perplexity_ratio"] == pytest.approx(evaluation["finetuned"]["perplexity"] /
                                                           evaluation["base"]["perplexity"])
    assert len(evaluation["completions"]) == 2
    assert json.loads((root / "eval.json").read_text())["completions"] == evaluation["completions"]
    metrics = steps.evaluation_metrics(evaluation)
    assert metrics["finetuned_perplexity"] == round(evaluation["finetuned"]["perplexity"], 5)
    assert "| perplexity |" in steps.evaluation_markdown(evaluation)


def test_report_shows_both_trainings_and_the_comparison(chained):
    html = (chained[0] / "report.html").read_text()
    for text in ("pre-training", "fine-tuning", "Evaluation: base vs fine-tuned", "pydoc:docstrings", "<img"):
        assert text in html


def test_summary_of_a_run_directory(chained, tmp_path):
    import shutil

    root = chained[0]
    shutil.copytree(root / "pre", tmp_path / "lm-pretrain" / "pretrained_model")
    shutil.copytree(root / "ft", tmp_path / "lm-finetune" / "finetuned_model")
    (tmp_path / "lm-evaluate").mkdir()
    shutil.copyfile(root / "eval.json", tmp_path / "lm-evaluate" / "lm_evaluation")
    summary = steps.summarise_lm_run(tmp_path)
    assert summary["test"]["perplexity_ratio"] == pytest.approx(chained[4]["perplexity_ratio"])
    assert summary["training"]["pretrain_steps"] == 6 and summary["training"]["finetune_steps"] == 6
