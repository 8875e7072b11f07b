"""kubeforge's training loop vs a bare hand-written torch loop: same model, data, optimiser and schedule.

Both do per-epoch validation; kubeforge additionally checkpoints every epoch and tracks early stopping, and that
overhead is exactly what this measures. Data: 40 000 synthetic rows x 64 features (generated, nothing downloaded),
large enough that an epoch is not dominated by fixed per-epoch costs.

    python -m bench.training_throughput [--epochs 5] [--repeats 3]
Target: kubeforge samples/s >= 0.95 x bare loop.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from sklearn.datasets import make_classification

from bench._harness import interleaved, median, write
from kubeforge.config import ModelConfig, TrainConfig
from kubeforge.models import ModelSpec, build_model
from kubeforge.training import set_seed, train_model

ROWS, FEATURES, CLASSES = 40_000, 64, 10


def make_data():
    X, y = make_classification(n_samples=ROWS + ROWS // 5, n_features=FEATURES, n_informative=32,
                               n_classes=CLASSES, random_state=0)
    X = X.astype(np.float32)
    return X[:ROWS], y[:ROWS].astype(np.int64), X[ROWS:], y[ROWS:].astype(np.int64)


def make_model(seed: int):
    set_seed(seed)
    spec = ModelSpec(config=ModelConfig(hidden_sizes=[256, 128]), input_dim=FEATURES, num_classes=CLASSES,
                     feature_names=[f"f{i}" for i in range(FEATURES)], class_names=[str(c) for c in range(CLASSES)],
                     scaler_mean=[0.0] * FEATURES, scaler_scale=[1.0] * FEATURES)
    return build_model(spec)


def bare_loop(model, X, y, Xv, yv, config: TrainConfig) -> None:
    """What an engineer would write by hand: no checkpoints, no early stopping, no history file."""
    X, y, Xv, yv = (torch.from_numpy(a) for a in (X, y, Xv, yv))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(len(X), generator=generator)
        for start in range(0, len(X), config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = loss_fn(model(X[batch]), y[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        schedule.step()
        model.eval()
        with torch.no_grad():
            loss_fn(model(Xv), yv).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    X, y, Xv, yv = make_data()
    config = TrainConfig(epochs=args.epochs, batch_size=128, patience=args.epochs + 1, device="cpu")

    def kubeforge_run() -> None:
        with tempfile.TemporaryDirectory() as workdir:
            train_model(make_model(0), X, y, Xv, yv, config, workdir, progress=False)

    def bare_run() -> None:
        bare_loop(make_model(0), X, y, Xv, yv, config)

    timings = interleaved({"kubeforge": kubeforge_run, "bare": bare_run}, args.repeats)
    samples = args.epochs * ROWS
    rates = {name: samples / median(seconds) for name, seconds in timings.items()}
    ratio = rates["kubeforge"] / rates["bare"]
    write("training_throughput", {
        "workload": f"MLP {FEATURES}-256-128-{CLASSES}, {ROWS} rows, batch {config.batch_size}, {args.epochs} epochs",
        "seconds": timings, "samples_per_second": rates, "ratio": round(ratio, 3), "target": ">= 0.95",
        "meets_target": ratio >= 0.95},
        command=f"python -m bench.training_throughput --epochs {args.epochs} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
