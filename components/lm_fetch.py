"""lm-fetch: our initializer. Resolves the data sets and the base model with the one resolver onto the run's volume,
which the pipeline itself creates (CreatePVC) and mounts here at ``workspace_mount``: no PVC made by hand.

Unlike Kubeflow Trainer's model/dataset initializers it needs no pre-made claim with a magic name, accepts every
source the local pipelines accept (a path, hf://, s3://, gs://, pvc://, scratch:), refuses pickle checkpoints, and
also hands the splits on as this step's Dataset for lm-evaluate and lm-report. An hf:// token comes from $HF_TOKEN
(the pipeline maps an optional Secret to it).
"""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_fetch(
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
    workspace_mount: str,
    lm_splits: Output[Dataset],
    lm_data_stats: Output[Metrics],
) -> str:
    """Returns the base model's directory on the volume (what the job and lm-evaluate open)."""
    from kubeforge.artifacts import label
    from kubeforge.config import RunConfig
    from kubeforge.lm.cluster import fetch_to_workspace

    config = RunConfig.from_component_args(locals(), ["lm_model", "lm_data", "lm_runtime"])
    fetched = fetch_to_workspace(workspace_mount, lm_splits.path, config.lm_model, config.lm_data, config.lm_runtime)
    label(lm_splits, "Corpus and fine-tuning splits")
    for name, value in fetched["stats"].get("metrics", {}).items():
        lm_data_stats.log_metric(name, value)
    label(lm_data_stats, "Data statistics")
    return fetched["base_dir"]
