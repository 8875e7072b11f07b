"""train-evaluate: preprocess -> train (scheduled by a profile) -> evaluate -> report."""

from collections.abc import Callable

from kfp import dsl

from kubeforge.config import RunConfig
from kubeforge_components.evaluate import evaluate
from kubeforge_components.preprocess import preprocess
from kubeforge_components.report import report
from kubeforge_components.train import train
from kubeforge_pipelines.scheduling import Placement

NAME = "train-evaluate"
DESCRIPTION = "Preprocess, train, evaluate and report a classifier."
SECTIONS = ("data", "model", "train")
D = RunConfig().to_flat(SECTIONS)  # pipeline defaults come from the one config model


def build(placement: Placement) -> Callable:
    """The pipeline with training placed by ``train_profile`` and the light steps by ``step_profile``."""

    @dsl.pipeline(name=NAME, description=DESCRIPTION)
    def train_evaluate(
        dataset: str = D["dataset"],
        label_column: str = D["label_column"],
        val_fraction: float = D["val_fraction"],
        test_fraction: float = D["test_fraction"],
        split_seed: int = D["split_seed"],
        model: str = D["model"],
        hidden_sizes: list = D["hidden_sizes"],
        channels: list = D["channels"],
        dropout: float = D["dropout"],
        epochs: int = D["epochs"],
        learning_rate: float = D["learning_rate"],
        batch_size: int = D["batch_size"],
        weight_decay: float = D["weight_decay"],
        patience: int = D["patience"],
        seed: int = D["seed"],
        device: str = D["device"],
        mixed_precision: bool = D["mixed_precision"],
        warm_start: str = D["warm_start"],
    ) -> dsl.HTML:
        data = preprocess(dataset=dataset, label_column=label_column, val_fraction=val_fraction,
                          test_fraction=test_fraction, split_seed=split_seed)
        trained = train(splits=data.outputs["splits"], model=model, hidden_sizes=hidden_sizes, channels=channels,
                        dropout=dropout, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                        weight_decay=weight_decay, patience=patience, seed=seed, device=device,
                        mixed_precision=mixed_precision, warm_start=warm_start)
        scored = evaluate(splits=data.outputs["splits"], trained_model=trained.outputs["trained_model"], seed=seed)
        summary = report(splits=data.outputs["splits"], trained_model=trained.outputs["trained_model"],
                         evaluation=scored.outputs["evaluation"])
        data.set_display_name("preprocess")
        trained.set_display_name("train")
        scored.set_display_name("evaluate")
        summary.set_display_name("report")
        placement.training(trained)
        for task in (data, scored, summary):
            placement.step(task)
        return summary.outputs["run_report"]

    return train_evaluate
