"""The process ``torchrun`` starts on every node: ``python -m kubeforge.distributed.worker``.

    torchrun --nproc-per-node 2 -m kubeforge.distributed.worker --splits S --config train.json --output M

It reads the splits and a JSON config (``{"model": {...}, "train": {...}}``), joins the process group torchrun
describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT), trains with DDP and, on rank 0 only, writes the same
model directory as the single-process train step: ``model.safetensors`` + ``model.json`` and ``training/`` (checkpoint,
history, result). A restarted job finds the checkpoint under ``--output`` and resumes. Without torchrun (no
WORLD_SIZE) it trains in one process, exactly as ``kubeforge.steps.train_step`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError

from kubeforge.config import ConfigError, ModelConfig, TrainConfig, describe_validation_error

RECORD_DIR = "training"  # same layout as kubeforge.steps.TRAINING_RECORD
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Rendezvous:
    """Where this process sits in the job, as torchrun (or the Trainer / training operator) exported it."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def primary(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Rendezvous:
        environ = dict(os.environ if environ is None else environ)
        try:
            values = {name: int(environ.get(var, default)) for name, var, default in
                      (("rank", "RANK", "0"), ("local_rank", "LOCAL_RANK", "0"), ("world_size", "WORLD_SIZE", "1"))}
        except ValueError:
            raise ConfigError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (set by torchrun)") from None
        found = cls(**values)
        if found.world_size < 1 or not 0 <= found.rank < found.world_size or found.local_rank < 0:
            raise ConfigError(f"inconsistent torchrun environment: RANK={found.rank} WORLD_SIZE={found.world_size} "
                              f"LOCAL_RANK={found.local_rank}")
        return found


def read_worker_config(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """The config file the launcher writes next to the splits; every problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"worker config {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"worker config {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) - {"model", "train"}:
        raise ConfigError(f"worker config {path} must be an object with 'model' and 'train' sections only")
    try:
        return ModelConfig(**raw.get("model", {})), TrainConfig(**raw.get("train", {}))
    except ValidationError as exc:
        raise ConfigError(f"worker config {path}: {describe_validation_error(exc)}") from None
    except TypeError:
        raise ConfigError(f"worker config {path}: 'model' and 'train' must be objects") from None


def write_worker_config(path: str | Path, model_config: ModelConfig, train_config: TrainConfig) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model_config.model_dump(), "train": train_config.model_dump()}, indent=2))
    return path


def resolve_backend(backend: str, train_config: TrainConfig) -> str:
    import torch

    if backend not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"unknown backend {backend!r}; use auto, gloo or nccl")
    if backend == "auto":
        return "nccl" if train_config.device != "cpu" and torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend 'nccl' needs CUDA, which this node does not have; use gloo")
    return backend


def join_process_group(rendezvous: Rendezvous, backend: str, timeout_s: float = 1800.0) -> None:
    """A single process (WORLD_SIZE 1) trains without a process group, so its run is the plain one."""
    import torch
    import torch.distributed as dist

    if rendezvous.world_size == 1:
        return
    if backend == "nccl":
        torch.cuda.set_device(rendezvous.local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # rank 0's model files are complete before any process reports success
        dist.destroy_process_group()


def abandon_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def train_distributed(splits_dir: str | Path, output_dir: str | Path, model_config: ModelConfig,
                      train_config: TrainConfig, *, resume: bool = True, progress: bool = True,
                      on_epoch_end: Callable[[int, dict], None] | None = None):
    """Train this rank's share; rank 0 writes the model directory (weights, config, training record)."""
    from kubeforge.data import read_splits
    from kubeforge.models import build_model, count_parameters, save_model
    from kubeforge.steps import model_spec_for
    from kubeforge.training import process_group, set_seed, train_model

    rank, world = process_group()
    output_dir = Path(output_dir)
    splits = read_splits(splits_dir)
    spec = model_spec_for(splits, model_config)
    set_seed(train_config.seed)  # same seed on every rank: identical initial weights and dropout streams
    model = build_model(spec)
    record = output_dir / RECORD_DIR
    result = train_model(model, splits.X_train, splits.y_train, splits.X_val, splits.y_val, train_config, record,
                         resume=resume, warm_start=train_config.warm_start or None, progress=progress,
                         on_epoch_end=on_epoch_end)
    if rank == 0:
        save_model(model, spec, output_dir)
        summary = {**asdict(result), "parameters": count_parameters(model), "world_size": world}
        (record / RESULT_FILE).write_text(json.dumps(summary, indent=2))
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubeforge.distributed.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--splits", required=True, help="splits directory written by the preprocess step")
    parser.add_argument("--config", required=True, help='JSON file {"model": {...}, "train": {...}}')
    parser.add_argument("--output", required=True, help="model directory; its training/ holds the checkpoint")
    parser.add_argument("--backend", default="auto", help="auto (nccl on CUDA, else gloo), gloo or nccl")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None,
         on_epoch_end: Callable[[int, dict], None] | None = None) -> int:
    """Exit 2 on bad input before joining the group (so torchrun fails fast), 0 on success."""
    from kubeforge.data import DataError, read_splits

    args = parse_args(argv)
    try:
        rendezvous = Rendezvous.from_env()
        model_config, train_config = read_worker_config(args.config)
        read_splits(args.splits)  # validates the directory before any process waits on the others
        backend = resolve_backend(args.backend, train_config)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    join_process_group(rendezvous, backend)

    def log_epoch(epoch: int, record: dict) -> None:  # one JSON line per epoch: what a pod's log should show
        if rendezvous.primary:
            print(json.dumps({"epoch_end": record}), flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)

    try:
        result = train_distributed(args.splits, args.output, model_config, train_config,
                                   resume=not args.no_resume, progress=not args.no_progress,
                                   on_epoch_end=log_epoch)
    except BaseException:
        abandon_process_group()  # no barrier: the other ranks may never reach it
        raise
    leave_process_group()
    if rendezvous.primary:
        best = result.history[result.best_epoch - 1] if result.best_epoch else {}
        print(json.dumps({"world_size": rendezvous.world_size, "epochs_run": result.epochs_run,
                          "best_epoch": result.best_epoch, "val_accuracy": best.get("val_accuracy")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
