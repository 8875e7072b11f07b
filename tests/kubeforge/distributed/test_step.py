import pytest

from kubeforge.config import ConfigError, DataConfig, DistributedConfig, ModelConfig, TrainConfig
from kubeforge.data import prepare
from kubeforge.distributed.jobs import JobSpecError
from kubeforge.distributed.step import plan_job, train_distributed_step
from kubeforge.distributed.workspace import WorkspaceError


def test_plan_names_the_job_after_the_output_and_points_the_worker_at_the_pvc():
    settings = DistributedConfig(nodes=2, checkpoint_pvc="ckpt", checkpoint_mount="/mnt/pvc")
    request = plan_job("s3://b/run/train/trained_model", settings, profile="gpu-t4", namespace="team-a")
    assert request.name.startswith("kubeforge-train-")
    assert request.worker_args[:2] == ["--splits", f"/mnt/pvc/{request.name}/splits"]
    assert request.image  # the platform's project image when none is given
    assert plan_job("s3://b/run/train/trained_model", settings, profile="gpu-t4", namespace="team-a").name == \
        request.name


def test_bad_input_is_refused_before_the_volume_is_touched(tmp_path):
    splits = tmp_path / "splits"
    prepare(DataConfig(dataset="iris"), splits)
    mount = tmp_path / "pvc"
    mount.mkdir()
    settings = DistributedConfig(checkpoint_pvc="ckpt", checkpoint_mount=str(mount))

    def run(profile="cpu", settings=settings, **kwargs):
        return train_distributed_step(splits, tmp_path / "model", ModelConfig(), TrainConfig(), settings,
                                      profile=profile, namespace="team-a", **kwargs)

    with pytest.raises(ConfigError, match="unknown profile 'gpu-b200'"):
        run("gpu-b200")
    with pytest.raises(JobSpecError, match="checkpoint_pvc is required"):
        run(settings=settings.model_copy(update={"checkpoint_pvc": ""}))
    with pytest.raises(JobSpecError, match="DNS-1035"):
        run(job_name="Bad_Name")
    assert list(mount.iterdir()) == []
    with pytest.raises(WorkspaceError, match="mount the checkpoint PVC"):
        run(settings=settings.model_copy(update={"checkpoint_mount": str(tmp_path / "not-mounted")}))
    assert not (tmp_path / "model").exists()
