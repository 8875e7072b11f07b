"""Resumable causal-LM training state as safetensors + JSON (never a pickle).

Unlike the classifier's checkpoint (kubeforge.checkpoint), tensors are keyed by parameter name (FQN), not by
position: only the trainable parameters are stored (a LoRA run saves megabytes, not the frozen base), and the
AdamW state comes from ``torch.distributed.checkpoint.state_dict``, which keys it by name so the same file resumes
one process, DDP or FSDP. The best weights seen so far travel in the same file, so a resumed run restores the same
best model an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kubeforge.checkpoint import CheckpointError

TENSORS = "state.safetensors"
META = "state.json"
_WEIGHTS, _BEST, _OPTIMIZER, _RNG = "weights.", "best.", "optimizer.", "rng."


@dataclass
class LMCheckpoint:
    """Everything that decides the steps after ``step``; tensors on the CPU, keyed by parameter name."""

    step: int
    weights: dict[str, torch.Tensor]
    best_weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # {"state": {name: {...}}, "param_groups": [...]}, as get_optimizer_state_dict gives
    scheduler: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """The global generators (dropout, and anything the caller samples after training)."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous()


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, values in state.get("state", {}).items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIMIZER}{name}.{key}"] = _cpu(value)
            else:
                scalars.setdefault(str(name), {})[key] = value
    return tensors, {"param_groups": state.get("param_groups", []), "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIMIZER):
            name, slot = key[len(_OPTIMIZER):].rsplit(".", 1)
            state.setdefault(name, {})[slot] = value
    for name, values in meta["scalars"].items():
        state.setdefault(name, {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_lm_checkpoint(directory: str | Path, checkpoint: LMCheckpoint) -> None:
    """Write to a temp dir beside the target and swap it in: a kill mid-write leaves the previous one intact."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{_WEIGHTS}{name}": _cpu(value) for name, value in checkpoint.weights.items()}
    tensors.update({f"{_BEST}{name}": _cpu(value) for name, value in checkpoint.best_weights.items()})
    optimizer_tensors, optimizer_meta = _split_optimizer(checkpoint.optimizer)
    tensors.update(optimizer_tensors)
    rng = dict(checkpoint.rng)
    if "torch" in rng:
        tensors[f"{_RNG}torch"] = rng.pop("torch")
    for index, state in enumerate(rng.pop("cuda", None) or []):
        tensors[f"{_RNG}cuda.{index}"] = state
    meta = {"step": checkpoint.step, "optimizer": optimizer_meta, "scheduler": checkpoint.scheduler,
            "rng": rng, "extra": checkpoint.extra}
    staging = Path(tempfile.mkdtemp(prefix=".lm-checkpoint-", dir=directory.parent))
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


def has_lm_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / TENSORS).is_file() and (Path(directory) / META).is_file()


def load_lm_checkpoint(directory: str | Path) -> LMCheckpoint:
    directory = Path(directory)
    if not has_lm_checkpoint(directory):
        raise CheckpointError(f"{directory}: no complete checkpoint ({TENSORS} + {META})")
    try:
        tensors = load_file(str(directory / TENSORS))
        meta = json.loads((directory / META).read_text())
        rng = dict(meta["rng"])
        if f"{_RNG}torch" in tensors:
            rng["torch"] = tensors[f"{_RNG}torch"]
        cuda = sorted((k for k in tensors if k.startswith(f"{_RNG}cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        if cuda:
            rng["cuda"] = [tensors[k] for k in cuda]
        return LMCheckpoint(
            step=int(meta["step"]),
            weights={k[len(_WEIGHTS):]: v for k, v in tensors.items() if k.startswith(_WEIGHTS)},
            best_weights={k[len(_BEST):]: v for k, v in tensors.items() if k.startswith(_BEST)},
            optimizer=_join_optimizer(tensors, meta["optimizer"]),
            scheduler=meta["scheduler"], extra=meta["extra"], rng=rng)
    except (KeyError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{directory}: unreadable checkpoint ({exc})") from None
