"""The training loop: AdamW + cosine schedule, bf16 autocast on CUDA, early stopping on validation loss, a checkpoint
every epoch and exact resume.

Batches are slices of tensors already on the device (no per-item DataLoader collation), and shuffling depends only on
(seed, epoch), so an interrupted-and-resumed run ends with the same weights as an uninterrupted one.

Under ``torchrun`` (a process group is initialised, see kubeforge.distributed.worker) the same loop runs data-parallel:
the model is wrapped in DistributedDataParallel, each rank takes its DistributedSampler share of every epoch and
``batch_size / world_size`` rows per step (the global batch stays ``batch_size``), losses and accuracies are summed
across ranks, and only rank 0 writes checkpoints, history and best weights. Every rank resumes from the same
checkpoint, so it must sit on storage all nodes see.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from safetensors.torch import save_file
from tqdm.auto import tqdm

from kubeforge.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint
from kubeforge.config import TrainConfig
from kubeforge.models import WEIGHTS_FILE, ModelError, load_weights

CHECKPOINT_DIR = "checkpoint"
BEST_WEIGHTS = "best.safetensors"
HISTORY_FILE = "history.json"


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    device: str = "cpu"
    samples_per_second: float = 0.0


def select_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine; use 'auto' or 'cpu'")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def process_group() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless a torch.distributed process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _shuffle(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def _distributed_order(n: int, seed: int, epoch: int, rank: int, world: int, device: torch.device) -> torch.Tensor:
    """This rank's share of the epoch; every rank gets the same number of rows (the sampler pads by repeating)."""
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long, device=device)


@torch.no_grad()
def _validation_sums(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, autocast: bool,
                     batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    loss = torch.zeros((), device=X.device)
    correct = torch.zeros((), device=X.device)
    for start in range(0, len(X), batch_size):
        xb, yb = X[start:start + batch_size], y[start:start + batch_size]
        with torch.autocast(device_type=X.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(xb).float()
        loss += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
    return loss, correct


def _validate(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, autocast: bool, rank: int = 0,
              world: int = 1) -> tuple[float, float]:
    """Mean loss and accuracy over the whole validation split; under DDP each rank scores a strided share."""
    loss, correct = _validation_sums(model, X[rank::world], y[rank::world], autocast)
    if world > 1:
        sums = torch.stack([loss, correct])
        dist.all_reduce(sums)
        loss, correct = sums[0], sums[1]
    return float(loss) / len(X), float(correct) / len(X)


def _agree_on_start_epoch(start_epoch: int, device: torch.device, checkpoint: Path) -> None:
    """A rank that cannot see the checkpoint would train from epoch 1 while the others resume: refuse instead."""
    bounds = torch.tensor([start_epoch, -start_epoch], dtype=torch.long, device=device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    if int(bounds[0]) != -int(bounds[1]):
        raise CheckpointError(f"{checkpoint}: ranks disagree on where to resume (epochs {-int(bounds[1])} to "
                              f"{int(bounds[0])}); the checkpoint directory must be on storage every node sees "
                              "(a ReadWriteMany PVC)")


def warm_start_from(model: torch.nn.Module, model_dir: str | Path) -> None:
    """Fine-tuning keeps this run's standardisation (fitted on its own data) and takes every learned weight."""
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"warm_start {model_dir}: no {WEIGHTS_FILE}; point it at an earlier run's model directory")
    own_scaler = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("standardize.")}
    load_weights(model, weights, map_location=str(next(model.parameters()).device))
    model.load_state_dict(own_scaler, strict=False)


def train_model(model: torch.nn.Module, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                y_val: np.ndarray, config: TrainConfig, workdir: str | Path, *, resume: bool = False,
                warm_start: str | Path | None = None, on_epoch_end: Callable[[int, dict], None] | None = None,
                progress: bool = True) -> TrainResult:
    """Train in place; at the end the model holds the best-validation-loss weights (on every rank under DDP)."""
    if len(X_train) == 0 or len(X_val) == 0:
        raise ValueError("training and validation splits must not be empty")
    rank, world = process_group()
    primary = rank == 0
    workdir = Path(workdir)
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    device = select_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # the worker pinned LOCAL_RANK's GPU
    autocast = config.mixed_precision and device.type == "cuda"
    model.to(device)
    if warm_start:
        warm_start_from(model, warm_start)
    # copies: splits read from Parquet are read-only arrays, and the device may differ anyway
    X, y = torch.tensor(X_train, device=device), torch.tensor(y_train, dtype=torch.long, device=device)
    Xv, yv = torch.tensor(X_val, device=device), torch.tensor(y_val, dtype=torch.long, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)

    result = TrainResult(device=str(device))
    best_loss, bad_epochs, start_epoch, train_seconds = float("inf"), 0, 1, 0.0
    checkpoint = workdir / CHECKPOINT_DIR
    if resume and has_checkpoint(checkpoint):
        state = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
        extra = state["extra"]
        start_epoch = state["epoch"] + 1
        best_loss, bad_epochs, train_seconds = extra["best_loss"], extra["bad_epochs"], extra["train_seconds"]
        result.history, result.best_epoch = extra["history"], extra["best_epoch"]
        if extra.get("stopped_early"):
            start_epoch, result.stopped_early = config.epochs + 1, True
    if world > 1:
        _agree_on_start_epoch(start_epoch, device, checkpoint)
        network: torch.nn.Module = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        step_rows = max(1, config.batch_size // world)
    else:
        network, step_rows = model, config.batch_size

    bar = tqdm(range(start_epoch, config.epochs + 1), desc="train", unit="epoch", disable=not (progress and primary),
               initial=start_epoch - 1, total=config.epochs)
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        if world > 1:
            order = _distributed_order(len(X), config.seed, epoch, rank, world, device)
        else:
            order = _shuffle(len(X), config.seed, epoch, device)
        total = torch.zeros((), device=device)
        for start in range(0, len(order), step_rows):
            batch = order[start:start + step_rows]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = network(X[batch])
            loss = F.cross_entropy(logits.float(), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        if world > 1:
            sums = torch.stack([total, torch.tensor(float(len(order)), device=device)])
            dist.all_reduce(sums)
            train_loss = float(sums[0]) / float(sums[1])
        else:
            train_loss = float(total) / len(X)
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        epoch_seconds = time.perf_counter() - started
        train_seconds += epoch_seconds
        val_loss, val_accuracy = _validate(model, Xv, yv, autocast, rank, world)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  "val_accuracy": val_accuracy, "learning_rate": learning_rate, "seconds": round(epoch_seconds, 4)}
        result.history.append(record)
        if val_loss < best_loss - 1e-7:
            best_loss, bad_epochs, result.best_epoch = val_loss, 0, epoch
            if primary:
                save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                          str(workdir / BEST_WEIGHTS))
        else:
            bad_epochs += 1
        stop = bad_epochs >= config.patience
        if primary:
            save_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                            extra={"best_loss": best_loss, "bad_epochs": bad_epochs,
                                   "best_epoch": result.best_epoch, "history": result.history,
                                   "train_seconds": train_seconds, "stopped_early": stop})
            (workdir / HISTORY_FILE).write_text(json.dumps(result.history, indent=2))
        bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_accuracy:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if stop:
            result.stopped_early = True
            break
    bar.close()

    result.epochs_run = len(result.history)
    if primary and (workdir / BEST_WEIGHTS).is_file():
        load_weights(model, workdir / BEST_WEIGHTS, map_location=str(device))
    if world > 1:  # the other ranks take rank 0's best weights, so no rank needs to read rank 0's files
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    result.samples_per_second = (len(X) * result.epochs_run / train_seconds) if train_seconds else 0.0
    return result
