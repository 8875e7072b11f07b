"""train: fit a model on the splits; the run's GPU request is applied by the pipeline's scheduling profile."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def train(
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
    trained_model: Output[Model],
    train_metrics: Output[Metrics],
):
    """Writes model.safetensors + model.json (and the training record: checkpoint, history) to the Model artifact."""
    from kubeforge.artifacts import label
    from kubeforge.config import ModelConfig, TrainConfig
    from kubeforge.steps import train_step

    model_config = ModelConfig(model=model, hidden_sizes=hidden_sizes, channels=channels, dropout=dropout)
    train_config = TrainConfig(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                               weight_decay=weight_decay, patience=patience, seed=seed, device=device,
                               mixed_precision=mixed_precision, warm_start=warm_start)
    result = train_step(splits.path, trained_model.path, model_config, train_config)
    final = result.history[result.best_epoch - 1]
    trained_model.metadata.update({"framework": "pytorch", "format": "safetensors", "architecture": model,
                                   "device": result.device, "best_epoch": result.best_epoch})
    label(trained_model, f"Trained {model}")
    train_metrics.log_metric("best_epoch", result.best_epoch)
    train_metrics.log_metric("epochs_run", result.epochs_run)
    train_metrics.log_metric("val_loss", final["val_loss"])
    train_metrics.log_metric("val_accuracy", final["val_accuracy"])
    train_metrics.log_metric("samples_per_second", round(result.samples_per_second, 1))
    label(train_metrics, "Training metrics")
