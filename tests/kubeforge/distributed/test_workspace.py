import re

import pytest

from kubeforge.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from kubeforge.data import prepare
from kubeforge.distributed.jobs import MAX_NAME_LENGTH
from kubeforge.distributed.worker import read_worker_config
from kubeforge.distributed.workspace import (Workspace, WorkspaceError, collect_model, job_name_for,
                                             stage_workspace)


def test_job_names_are_stable_valid_and_distinct():
    name = job_name_for("s3://bucket/run-1/train-distributed/trained_model")
    assert name == job_name_for("s3://bucket/run-1/train-distributed/trained_model")
    assert name != job_name_for("s3://bucket/run-2/train-distributed/trained_model")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= MAX_NAME_LENGTH
    with pytest.raises(ConfigError):
        job_name_for("")


def test_staging_keeps_an_existing_checkpoint_and_rewrites_inputs(tmp_path):
    splits = tmp_path / "splits"
    prepare(DataConfig(dataset="iris"), splits)
    mount = tmp_path / "pvc"
    mount.mkdir()
    workspace = stage_workspace(mount, "kubeforge-train-1", splits, ModelConfig(), TrainConfig(epochs=3))
    (workspace.output / "training" / "checkpoint").mkdir(parents=True)
    (workspace.output / "training" / "checkpoint" / "state.json").write_text("{}")
    again = stage_workspace(mount, "kubeforge-train-1", splits, ModelConfig(), TrainConfig(epochs=5))
    assert again == workspace
    assert (workspace.output / "training" / "checkpoint" / "state.json").is_file()
    assert sorted(p.name for p in workspace.splits.iterdir()) == sorted(p.name for p in splits.iterdir())
    assert read_worker_config(workspace.config)[1].epochs == 5
    assert workspace.worker_args()[:2] == ["--splits", str(mount / "kubeforge-train-1" / "splits")]
    assert [p.name for p in workspace.root.iterdir() if p.name.startswith(".")] == []


def test_missing_mount_or_model_is_a_clear_error(tmp_path):
    with pytest.raises(WorkspaceError, match="mount the checkpoint PVC"):
        stage_workspace(tmp_path / "nowhere", "j", tmp_path, ModelConfig(), TrainConfig())
    with pytest.raises(WorkspaceError, match="splits directory"):
        stage_workspace(tmp_path, "j", tmp_path / "no-splits", ModelConfig(), TrainConfig())
    with pytest.raises(WorkspaceError, match="has no model.safetensors, model.json"):
        collect_model(Workspace(tmp_path / "j"), tmp_path / "out")
