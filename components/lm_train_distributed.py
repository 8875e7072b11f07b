"""lm-train-distributed: fine-tune a causal LM on N nodes x M GPUs with FSDP2 (or DDP) as a Kubeflow Trainer TrainJob
(or a PyTorchJob), from the run's volume that lm-fetch filled, and hand the model back as this step's artifact.

The step itself only launches and waits (give it a light profile); the job's pods get ``training_profile``. Mount
the run's volume on it at ``checkpoint_mount`` (the pods mount it there too) and pass its name as
``checkpoint_pvc``. With more than one node the volume must be ReadWriteMany: every rank reads the checkpoint when a
restarted job resumes. Its ServiceAccount needs what train-distributed's needs (manifests/tenants/base/rbac.yaml).
"""

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_train_distributed(
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
    nodes: int,
    procs_per_node: int,
    dist_backend: str,
    job_kind: str,
    checkpoint_pvc: str,
    checkpoint_mount: str,
    max_restarts: int,
    job_timeout_s: int,
    training_profile: str,
    finetuned_model: Output[Model],
    finetune_metrics: Output[Metrics],
    job_report: Output[Markdown],
    training_image: str = "",
    namespace: str = "",
    job_name: str = "",
    queue: str = "",
):
    """Writes what lm-finetune writes (adapter/, merged/, training/), so lm-evaluate and lm-report take it as is."""
    from kubeforge.artifacts import label
    from kubeforge.config import RunConfig
    from kubeforge.lm.cluster import lm_train_distributed_step
    from kubeforge.lm.steps import training_metrics
    from kubeforge.lm.worker import LMWorkerConfig

    sections = ["lm_model", "lm_data", "finetune", "lm_runtime", "lora", "distributed"]
    config = RunConfig.from_component_args(locals(), sections)
    worker_config = LMWorkerConfig("finetune", config.lm_model, config.lm_data, config.finetune, config.lm_runtime,
                                   config.lora)
    done = lm_train_distributed_step(finetuned_model.path, worker_config, config.distributed,
                                     profile=training_profile, image=training_image, namespace=namespace,
                                     job_name=job_name, model_dir_key=finetuned_model.uri, queue=queue)
    summary, outcome = done.summary, done.outcome
    finetuned_model.metadata.update({"framework": "transformers", "format": "safetensors", "method": finetune_method,
                                     "lora_rank": lora_rank, "world_size": summary["world_size"],
                                     "parallelism": summary["parallelism"],
                                     "job": f"{outcome.kind}/{outcome.namespace}/{outcome.name}"})
    label(finetuned_model, f"Fine-tuned LM ({finetune_method}, {nodes}x{procs_per_node} {parallelism})")
    for name, value in {**training_metrics(summary), "world_size": summary["world_size"]}.items():
        finetune_metrics.log_metric(name, value)
    label(finetune_metrics, "Fine-tuning metrics")
    resumed = summary.get("resumed_from_step")
    with open(job_report.path, "w") as handle:
        handle.write(f"# Distributed fine-tuning\n\n{outcome.kind} `{outcome.namespace}/{outcome.name}`: "
                     f"**{outcome.state}** on {nodes} node(s) x {procs_per_node} process(es), {parallelism}, "
                     f"profile `{training_profile}`" + (" (re-attached to an existing job)" if outcome.attached else "")
                     + f"\n\nBest held-out loss {summary['best_val_loss']:.4f} at step {summary['best_step']} of "
                     f"{summary['steps_run']}" + (f"; resumed from step {resumed}" if resumed else "") + ".\n")
    label(job_report, "Distributed fine-tuning job")
