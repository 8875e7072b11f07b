"""lm-finetune: LoRA (or full) fine-tuning of a causal LM; the base is an earlier step's model or ``base_model``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_finetune(
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
    finetune_steps: int,
    finetune_learning_rate: float,
    finetune_warmup_steps: int,
    finetune_batch_size: int,
    finetune_grad_accum: int,
    finetune_patience: int,
    lm_device: str,
    lm_mixed_precision: bool,
    lm_seed: int,
    lm_weight_decay: float,
    gradient_checkpointing: bool,
    eval_interval: int,
    checkpoint_interval: int,
    parallelism: str,
    cpu_threads: int,
    finetune_method: str,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float,
    lora_target_modules: list,
    merge_adapter: bool,
    finetuned_model: Output[Model],
    finetune_metrics: Output[Metrics],
    pretrained_model: Input[Model] = None,
):
    """Writes adapter/ (LoRA weights on their own) and merged/ (a plain model) plus the training record."""
    from kubeforge.artifacts import label
    from kubeforge.config import RunConfig
    from kubeforge.lm.steps import finetune_step, training_metrics

    config = RunConfig.from_component_args(locals(), ["lm_model", "lm_data", "finetune", "lm_runtime", "lora"])
    result = finetune_step(lm_splits.path, finetuned_model.path, config.lm_model, config.lm_data, config.finetune,
                           config.lm_runtime, config.lora,
                           base_dir=pretrained_model.path if pretrained_model is not None else None)
    finetuned_model.metadata.update({"framework": "transformers", "format": "safetensors",
                                     "method": finetune_method, "lora_rank": lora_rank,
                                     "trainable_parameters": result["trainable_parameters"]})
    label(finetuned_model, f"Fine-tuned LM ({finetune_method})")
    for name, value in training_metrics(result).items():
        finetune_metrics.log_metric(name, value)
    label(finetune_metrics, "Fine-tuning metrics")
