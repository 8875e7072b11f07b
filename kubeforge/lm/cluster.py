"""Language-model training on a cluster: the run's shared volume, what ``lm-fetch`` puts on it, and the job that
trains from it (a TrainJob or PyTorchJob running ``kubeforge.lm.worker`` on ``nodes`` x ``procs_per_node``).

The pipeline creates the volume itself (kfp-kubernetes CreatePVC, deleted after the run) and mounts it at one path
in lm-fetch, the launching step, lm-evaluate and every pod of the job; nobody makes a PVC by hand. Its layout:

    data/            the lm-data splits (finetune/, corpus/ when pre-training or building a scratch base)
    base/            the base model, resolved once with the one resolver (path, hf://, s3://, pvc://, scratch:)
    lm-train.json    the LM sections the workers read
    model/           what rank 0 writes: adapter/ and/or merged/, training/ (its checkpoint is where a restarted job
                     resumes)

The pods read only the volume, so they run offline (HF_HUB_OFFLINE) and need no Hugging Face token.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeforge.config import (DistributedConfig, LMDataConfig, LMModelConfig, LMRuntimeConfig, PlatformConfig,
                              load_platform)
from kubeforge.distributed.jobs import JobSpecError, JobVolume, TrainingJobRequest, render_job_objects
from kubeforge.distributed.launcher import JobOutcome, current_namespace, launch
from kubeforge.distributed.workspace import WorkspaceError, job_name_for
from kubeforge.lm.worker import SPLIT_FILES, LMWorkerConfig, Task, split_files, write_lm_worker_config

LM_WORKER_MODULE = "kubeforge.lm.worker"
# the job's pods read everything from the volume: no Hub access, and a writable cache outside the image
LM_JOB_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/tmp/hf-home"}
CHECKPOINT_PART = Path("training") / "checkpoint"  # stays on the volume; the model artifact does not need it


@dataclass(frozen=True)
class LMWorkspace:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def config(self) -> Path:
        return self.root / "lm-train.json"

    @property
    def output(self) -> Path:
        return self.root / "model"

    def worker_args(self) -> list[str]:
        return ["--config", str(self.config), "--data", str(self.data), "--base", str(self.base),
                "--output", str(self.output)]

    def check_mounted(self) -> None:
        if not self.root.is_dir():
            raise WorkspaceError(f"{self.root} does not exist in this pod: mount the run's volume here "
                                 "(kfp.kubernetes.mount_pvc, at the same path as checkpoint_mount)")

    def check_fetched(self, task: Task) -> None:
        """What the job will read is there, before the job is created (not found by a pod minutes later)."""
        self.check_mounted()
        missing = [str(file) for file in split_files(self.data, task) if not file.is_file()]
        if not (self.base / "config.json").is_file():
            missing.append(str(self.base / "config.json"))
        if missing:
            raise WorkspaceError(f"the volume lacks {', '.join(missing)}: run lm-fetch on it first (same volume, "
                                 "same mount path)")


def _needs_corpus(model_config: LMModelConfig, task: Task) -> bool:
    """A scratch base trains its tokenizer on the corpus; pre-training trains on it."""
    return task == "pretrain" or model_config.base_model.startswith("scratch:")


def _replace_dir(staging: Path, target: Path) -> None:
    """Swap a finished directory in whole, so no reader sees half of it."""
    if target.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        os.replace(target, previous / target.name)
        os.replace(staging, target)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, target)


def _materialise(source: Path, destination: Path) -> None:
    """Copy the model files the resolver allows (safetensors, JSON, tokenizer) into ``destination`` as real files:
    a Hugging Face snapshot is symlinks into its cache's blobs. Hard links where the cache is on the same volume."""
    from kubeforge.lm.sources import ALLOWED_PATTERNS

    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if not path.is_file() or not any(fnmatch.fnmatch(relative, pattern) for pattern in ALLOWED_PATTERNS):
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        real = path.resolve()
        try:
            os.link(real, target)
        except OSError:
            shutil.copyfile(real, target)


def fetch_base_model(source: str, workspace: LMWorkspace, *, model_config: LMModelConfig, seed: int,
                     corpus: list[str] | None = None) -> Path:
    """Resolve ``source`` with the one resolver and leave it at ``workspace.base`` (refusing pickles as it does)."""
    from kubeforge.lm.sources import check_checkpoint_files, resolve_model_source

    workspace.check_mounted()
    staging = Path(tempfile.mkdtemp(prefix=".base-", dir=workspace.root))
    try:
        resolved = resolve_model_source(source, staging / "model", corpus=corpus, model_config=model_config,
                                        seed=seed)
        if resolved.resolve() != (staging / "model").resolve():  # hf:// (the cache), a path or pvc:// (in place)
            _materialise(resolved, staging / "model")
        check_checkpoint_files(staging / "model")
        _replace_dir(staging / "model", workspace.base)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return workspace.base


def fetch_to_workspace(mount: str | Path, splits_dir: str | Path, model_config: LMModelConfig, data: LMDataConfig,
                       runtime: LMRuntimeConfig, *, task: Task = "finetune") -> dict[str, Any]:
    """lm-fetch: the splits into ``splits_dir`` (the step's artifact) and onto the volume, the base model onto the
    volume. Returns the data statistics and the base directory on the volume."""
    from kubeforge.lm.corpus import read_documents
    from kubeforge.lm.steps import lm_data_step

    workspace = LMWorkspace(Path(mount))
    workspace.check_mounted()
    need_corpus = _needs_corpus(model_config, task)
    stats = lm_data_step(data, splits_dir, need_corpus=need_corpus)
    staging = Path(tempfile.mkdtemp(prefix=".data-", dir=workspace.root))
    try:
        shutil.copytree(splits_dir, staging / "data")
        _replace_dir(staging / "data", workspace.data)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    corpus = ([document.text for document in read_documents(workspace.data / "corpus" / SPLIT_FILES[0])]
              if need_corpus else None)
    base = fetch_base_model(model_config.base_model, workspace, model_config=model_config, seed=runtime.lm_seed,
                            corpus=corpus)
    return {"stats": stats, "base_dir": str(base)}


def plan_lm_job(model_dir_key: str, settings: DistributedConfig, *, profile: str, volume_claim: str = "",
                image: str = "", namespace: str = "", job_name: str = "", queue: str = "",
                service_account: str = "", platform: PlatformConfig | None = None) -> TrainingJobRequest:
    """The LM job this step would create (also what ``kubeforge job render --kind lm`` prints); raises on any bad
    setting. ``volume_claim`` is the run's volume (default: the settings' checkpoint_pvc)."""
    platform = platform or load_platform()
    claim = volume_claim or settings.checkpoint_pvc
    if not claim:
        raise JobSpecError("the LM job needs the run's volume: the lm-finetune-cluster pipeline creates it (pass its "
                           "name), or name an existing PVC that lm-fetch filled with checkpoint_pvc")
    workspace = LMWorkspace(Path(settings.checkpoint_mount))
    request = TrainingJobRequest(
        name=job_name or job_name_for(model_dir_key), namespace=namespace or current_namespace(),
        image=image or platform.image, profile=platform.profile(profile), settings=settings,
        worker_args=workspace.worker_args(), env=dict(LM_JOB_ENV), queue=queue, service_account=service_account,
        worker_module=LM_WORKER_MODULE, volume=JobVolume(claim, settings.checkpoint_mount))
    render_job_objects(request)
    return request


def collect_lm_model(workspace: LMWorkspace, destination: str | Path) -> Path:
    """Copy what rank 0 wrote (less the resumable checkpoint, which stays on the volume) to ``destination``."""
    from kubeforge.lm.steps import RESULT_FILE, TRAINING_RECORD

    result = workspace.output / TRAINING_RECORD / RESULT_FILE
    if not result.is_file():
        raise WorkspaceError(f"the job finished but {result} does not exist; is the volume mounted at the same path "
                             "in the job's pods and in this step?")
    checkpoint = (workspace.output / CHECKPOINT_PART).resolve()
    destination = Path(destination)
    shutil.copytree(workspace.output, destination, dirs_exist_ok=True,
                    ignore=lambda directory, names: [name for name in names
                                                     if (Path(directory) / name).resolve() == checkpoint])
    return destination


@dataclass
class LMDistributedResult:
    outcome: JobOutcome
    summary: dict[str, Any]  # the worker's training/result.json


def lm_train_distributed_step(out_dir: str | Path, config: LMWorkerConfig, settings: DistributedConfig, *,
                              profile: str, volume_claim: str = "", image: str = "", namespace: str = "",
                              job_name: str = "", model_dir_key: str = "", queue: str = "",
                              service_account: str = "", api_client=None,
                              platform: PlatformConfig | None = None) -> LMDistributedResult:
    """Train on the cluster from the volume lm-fetch filled and leave the model directory at ``out_dir``.

    ``model_dir_key`` (the output artifact's URI) names the job when ``job_name`` is empty, so a retried step
    re-attaches to its job or resumes from the checkpoint on the volume.
    """
    from kubeforge.lm.steps import load_lm_result

    request = plan_lm_job(model_dir_key or str(out_dir), settings, profile=profile, volume_claim=volume_claim,
                          image=image, namespace=namespace, job_name=job_name, queue=queue,
                          service_account=service_account, platform=platform)
    workspace = LMWorkspace(Path(settings.checkpoint_mount))
    workspace.check_fetched(config.task)
    write_lm_worker_config(workspace.config, config)
    outcome = launch(request, api_client=api_client)
    collect_lm_model(workspace, out_dir)
    return LMDistributedResult(outcome=outcome, summary=load_lm_result(out_dir))
