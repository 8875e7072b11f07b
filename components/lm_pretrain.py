"""lm-pretrain: pre-train (or continue pre-training) a causal LM on the packed corpus; placed by the GPU profile."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_pretrain(
    lm_splits: Input[Dataset],
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
    pretrain_steps: int,
    pretrain_learning_rate: float,
    pretrain_warmup_steps: int,
    pretrain_batch_size: int,
    pretrain_grad_accum: int,
    pretrain_patience: int,
    lm_device: str,
    lm_mixed_precision: bool,
    lm_seed: int,
    lm_weight_decay: float,
    gradient_checkpointing: bool,
    eval_interval: int,
    checkpoint_interval: int,
    parallelism: str,
    cpu_threads: int,
    pretrained_model: Output[Model],
    pretrain_metrics: Output[Metrics],
):
    """Writes a Hugging Face model directory (config.json, model.safetensors, tokenizer) and its training record."""
    from kubeforge.artifacts import label
    from kubeforge.config import RunConfig
    from kubeforge.lm.steps import pretrain_step, training_metrics

    config = RunConfig.from_component_args(locals(), ["lm_model", "lm_data", "pretrain", "lm_runtime"])
    result = pretrain_step(lm_splits.path, pretrained_model.path, config.lm_model, config.lm_data, config.pretrain,
                           config.lm_runtime)
    pretrained_model.metadata.update({"framework": "transformers", "format": "safetensors",
                                      "base_model": base_model, "parameters": result["total_parameters"]})
    label(pretrained_model, f"Pre-trained LM ({base_model})")
    for name, value in training_metrics(result).items():
        pretrain_metrics.log_metric(name, value)
    label(pretrain_metrics, "Pre-training metrics")
