"""The job's directory on the shared checkpoint PVC: splits and config in, model and checkpoint out.

The launching step (a KFP task with the PVC mounted at the same path as the training pods) stages its inputs here,
the workers read them and rank 0 writes ``output/`` — including ``output/training/checkpoint``, which a restarted
job resumes from — and the step copies the model back into its output artifact. Nothing here is deleted: a retried
step with the same job name finds the checkpoint and continues.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kubeforge.config import ConfigError, ModelConfig, TrainConfig
from kubeforge.distributed.worker import write_worker_config

JOB_NAME_PREFIX = "kubeforge-train-"


class WorkspaceError(ValueError):
    """The shared volume is missing, or a finished job left no model behind."""


def job_name_for(key: str) -> str:
    """A stable, valid job name for a run: the same key (e.g. the step's output URI) always maps to the same job,
    so a retried step re-attaches to its job or resumes from its checkpoint instead of starting over."""
    if not key:
        raise ConfigError("a job name needs a non-empty key")
    return JOB_NAME_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def config(self) -> Path:
        return self.root / "train.json"

    @property
    def output(self) -> Path:
        return self.root / "model"

    def worker_args(self) -> list[str]:
        return ["--splits", str(self.splits), "--config", str(self.config), "--output", str(self.output),
                "--no-progress"]


def stage_workspace(mount: str | Path, job_name: str, splits_dir: str | Path, model_config: ModelConfig,
                    train_config: TrainConfig) -> Workspace:
    """Copy the splits and write the worker config under ``<mount>/<job_name>``; an existing model/checkpoint stays."""
    mount = Path(mount)
    if not mount.is_dir():
        raise WorkspaceError(f"{mount} does not exist in this pod: mount the checkpoint PVC here too "
                             "(kfp.kubernetes.mount_pvc on this task, at the same path as checkpoint_mount)")
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise WorkspaceError(f"splits directory {splits_dir} does not exist")
    workspace = Workspace(mount / job_name)
    workspace.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".splits-", dir=workspace.root))
    try:  # swap in whole, so a worker never sees half-copied splits
        shutil.copytree(splits_dir, staging, dirs_exist_ok=True)
        if workspace.splits.exists():
            shutil.rmtree(workspace.splits)
        os.replace(staging, workspace.splits)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_worker_config(workspace.config, model_config, train_config)
    return workspace


def collect_model(workspace: Workspace, destination: str | Path) -> Path:
    """Copy the trained model directory (weights, config, training record) to ``destination``."""
    from kubeforge.models import SPEC_FILE, WEIGHTS_FILE

    missing = [name for name in (WEIGHTS_FILE, SPEC_FILE) if not (workspace.output / name).is_file()]
    if missing:
        raise WorkspaceError(f"the job finished but {workspace.output} has no {', '.join(missing)}; "
                             "is the PVC mounted at the same path in the job's pods and in this step?")
    destination = Path(destination)
    shutil.copytree(workspace.output, destination, dirs_exist_ok=True)
    return destination
