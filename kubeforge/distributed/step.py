"""The ``train-distributed`` pipeline step as one function: stage inputs on the PVC, run the job, collect the model.

Everything is validated — profile, namespace, job objects — before the first byte is written to the shared volume
or the first request reaches the API server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeforge.config import DistributedConfig, ModelConfig, PlatformConfig, TrainConfig, load_platform
from kubeforge.distributed.jobs import TrainingJobRequest, render_job_objects
from kubeforge.distributed.launcher import JobOutcome, current_namespace, launch
from kubeforge.distributed.workspace import Workspace, collect_model, job_name_for, stage_workspace


@dataclass
class DistributedTrainResult:
    outcome: JobOutcome
    summary: dict[str, Any]  # the worker's training/result.json: history, best_epoch, world_size, ...


def plan_job(model_dir_key: str, settings: DistributedConfig, *, profile: str, image: str = "",
             namespace: str = "", job_name: str = "", env: dict[str, str] | None = None, queue: str = "",
             service_account: str = "", platform: PlatformConfig | None = None) -> TrainingJobRequest:
    """The job this step would create (also what a dry run prints); raises on any bad setting."""
    platform = platform or load_platform()
    name = job_name or job_name_for(model_dir_key)
    workspace = Workspace(Path(settings.checkpoint_mount) / name)
    request = TrainingJobRequest(
        name=name, namespace=namespace or current_namespace(), image=image or platform.image,
        profile=platform.profile(profile), settings=settings, worker_args=workspace.worker_args(),
        env=dict(env or {}), queue=queue, service_account=service_account)
    render_job_objects(request)
    return request


def train_distributed_step(splits_dir: str | Path, model_dir: str | Path, model_config: ModelConfig,
                           train_config: TrainConfig, settings: DistributedConfig, *, profile: str, image: str = "",
                           namespace: str = "", job_name: str = "", model_dir_key: str = "",
                           queue: str = "", service_account: str = "", api_client=None,
                           platform: PlatformConfig | None = None) -> DistributedTrainResult:
    """Train on the cluster and leave the model directory (weights, config, training record) at ``model_dir``.

    ``model_dir_key`` (e.g. the output artifact's URI) names the job when ``job_name`` is empty, so a retried step
    resumes the same job's checkpoint.
    """
    request = plan_job(model_dir_key or str(model_dir), settings, profile=profile, image=image, namespace=namespace,
                       job_name=job_name, queue=queue, service_account=service_account, platform=platform)
    workspace = stage_workspace(settings.checkpoint_mount, request.name, splits_dir, model_config, train_config)
    outcome = launch(request, api_client=api_client)
    collect_model(workspace, model_dir)
    summary = json.loads((Path(model_dir) / "training" / "result.json").read_text())
    return DistributedTrainResult(outcome=outcome, summary=summary)
