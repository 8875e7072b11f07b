"""train-distributed: train on N nodes x M GPUs as a Kubeflow Trainer TrainJob (or a PyTorchJob) and hand the model
back as this step's Model artifact.

The step itself is light (it only launches and waits): give it a CPU profile, and mount the checkpoint PVC on it at
``checkpoint_mount`` (``kfp.kubernetes.mount_pvc``), the same path the job's pods use. Its ServiceAccount needs
create/get/list/patch/delete on trainingruntimes and trainjobs (or pytorchjobs), and get/list on pods and pods/log:
the tenant base's ``pipeline-runner`` account has exactly that (manifests/tenants/base/rbac.yaml).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def train_distributed(
    splits: Input[Dataset],
    model: str,
    hidden_sizes: list,
    channels: list,
    dropout: float,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    weight_decay: float,
    patience: int,
    seed: int,
    device: str,
    mixed_precision: bool,
    warm_start: str,
    nodes: int,
    procs_per_node: int,
    dist_backend: str,
    job_kind: str,
    checkpoint_pvc: str,
    checkpoint_mount: str,
    max_restarts: int,
    job_timeout_s: int,
    training_profile: str,
    trained_model: Output[Model],
    train_metrics: Output[Metrics],
    job_report: Output[Markdown],
    training_image: str = "",
    namespace: str = "",
    job_name: str = "",
    queue: str = "",
):
    """Same model/training parameters as ``train``, plus where and how wide to run; the model directory it writes
    (model.safetensors + model.json + training/) is what ``train`` writes, so evaluate/compress take it as is."""
    from kubeforge.artifacts import label
    from kubeforge.config import DistributedConfig, ModelConfig, TrainConfig
    from kubeforge.distributed.step import train_distributed_step

    model_config = ModelConfig(model=model, hidden_sizes=hidden_sizes, channels=channels, dropout=dropout)
    train_config = TrainConfig(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                               weight_decay=weight_decay, patience=patience, seed=seed, device=device,
                               mixed_precision=mixed_precision, warm_start=warm_start)
    settings = DistributedConfig(nodes=nodes, procs_per_node=procs_per_node, dist_backend=dist_backend,
                                 job_kind=job_kind, checkpoint_pvc=checkpoint_pvc, checkpoint_mount=checkpoint_mount,
                                 max_restarts=max_restarts, job_timeout_s=job_timeout_s)
    done = train_distributed_step(splits.path, trained_model.path, model_config, train_config, settings,
                                  profile=training_profile, image=training_image, namespace=namespace,
                                  job_name=job_name, model_dir_key=trained_model.uri, queue=queue)
    summary, outcome = done.summary, done.outcome
    final = summary["history"][summary["best_epoch"] - 1]
    trained_model.metadata.update({"framework": "pytorch", "format": "safetensors", "architecture": model,
                                   "best_epoch": summary["best_epoch"], "world_size": summary["world_size"],
                                   "job": f"{outcome.kind}/{outcome.namespace}/{outcome.name}"})
    label(trained_model, f"Trained {model} on {nodes}x{procs_per_node}")
    for name in ("best_epoch", "epochs_run", "world_size"):
        train_metrics.log_metric(name, summary[name])
    train_metrics.log_metric("val_loss", final["val_loss"])
    train_metrics.log_metric("val_accuracy", final["val_accuracy"])
    train_metrics.log_metric("samples_per_second", round(summary["samples_per_second"], 1))
    label(train_metrics, "Training metrics")
    with open(job_report.path, "w") as handle:
        handle.write(f"# Distributed training\n\n{outcome.kind} `{outcome.namespace}/{outcome.name}`: "
                     f"**{outcome.state}** on {nodes} node(s) x {procs_per_node} process(es), profile "
                     f"`{training_profile}`" + (" (re-attached to an existing job)" if outcome.attached else "")
                     + f"\n\nBest epoch {summary['best_epoch']} of {summary['epochs_run']}, "
                     f"validation accuracy {final['val_accuracy']:.4f}.\n")
    label(job_report, "Distributed training job")
