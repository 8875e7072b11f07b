"""Resumable training state as safetensors + JSON (never a pickle).

Everything that decides the next epoch's result is saved: weights, AdamW moments, the LR schedule, the epoch, and
the RNG states (dropout draws from torch's global generator), so a restarted pod continues bit-identically.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TENSORS = "state.safetensors"
META = "state.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit the model being resumed."""


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, epoch: int, extra: dict[str, Any]) -> None:
    """Write to a temp dir and swap it in, so a kill mid-write leaves the previous checkpoint intact."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_tensors, optimizer_meta = _split_optimizer_state(optimizer.state_dict())
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    numpy_state = np.random.get_state()
    meta = {
        "epoch": epoch,
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict(),
        "rng_numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "rng_python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "extra": extra,
    }
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=directory.parent))
    try:
        save_file(tensors, str(staging / TENSORS))
        (staging / META).write_text(json.dumps(meta))
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / TENSORS).is_file() and (Path(directory) / META).is_file()


def load_checkpoint(directory: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> dict[str, Any]:
    directory = Path(directory)
    if not has_checkpoint(directory):
        raise CheckpointError(f"{directory}: no complete checkpoint ({TENSORS} + {META})")
    tensors = load_file(str(directory / TENSORS))
    meta = json.loads((directory / META).read_text())
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k[len("model."):]: v.to(device) for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}: checkpoint does not fit the model ({str(exc).splitlines()[0]})") from None
    optimizer.load_state_dict(_join_optimizer_state(tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    kind, keys, *rest = meta["rng_numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    return {"epoch": meta["epoch"], "extra": meta["extra"]}
