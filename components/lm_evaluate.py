"""lm-evaluate: base vs fine-tuned on the held-out fine-tuning set (perplexity, accuracy, tokens/s, completions)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_evaluate(
    lm_splits: Input[Dataset],
    finetuned_model: Input[Model],
    base_model: str,
    tokenizer_vocab: int,
    context_length: int,
    corpus: str,
    finetune_dataset: str,
    max_length: int,
    holdout_fraction: float,
    holdout_seed: int,
    eval_prompts: int,
    max_new_tokens: int,
    lm_device: str,
    lm_mixed_precision: bool,
    lm_seed: int,
    lm_weight_decay: float,
    gradient_checkpointing: bool,
    eval_interval: int,
    checkpoint_interval: int,
    parallelism: str,
    cpu_threads: int,
    lm_metrics: Output[Metrics],
    lm_evaluation_report: Output[Markdown],
    lm_evaluation: Output[Artifact],
    pretrained_model: Input[Model] = None,
):
    """The base is the pre-trained step's model when the pipeline has one, else ``base_model`` resolved again."""
    from kubeforge.artifacts import label
    from kubeforge.config import RunConfig
    from kubeforge.lm.steps import evaluate_lm_step, evaluation_markdown, evaluation_metrics

    config = RunConfig.from_component_args(locals(), ["lm_model", "lm_data", "lm_runtime"])
    result = evaluate_lm_step(lm_splits.path, finetuned_model.path, lm_evaluation.path, config.lm_model,
                              config.lm_data, config.lm_runtime,
                              base_dir=pretrained_model.path if pretrained_model is not None else None)
    label(lm_evaluation, "LM evaluation (JSON)")
    for name, value in evaluation_metrics(result).items():
        lm_metrics.log_metric(name, value)
    label(lm_metrics, "Held-out metrics (base vs fine-tuned)")
    with open(lm_evaluation_report.path, "w") as handle:
        handle.write(evaluation_markdown(result))
    label(lm_evaluation_report, "LM evaluation report")
