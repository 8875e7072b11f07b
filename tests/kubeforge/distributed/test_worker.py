import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kubeforge.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from kubeforge.data import prepare, read_splits
from kubeforge.distributed.worker import (Rendezvous, main, read_worker_config, resolve_backend,
                                          write_worker_config)
from kubeforge.models import load_model, predict_proba
from kubeforge.steps import load_train_result

HERE = Path(__file__).parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
EPOCHS = 8


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("splits")
    prepare(DataConfig(), directory)
    return directory


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return write_worker_config(tmp_path_factory.mktemp("config") / "train.json", ModelConfig(hidden_sizes=[64]),
                               TrainConfig(epochs=EPOCHS, patience=50, device="cpu"))


def torchrun(script: list[str], *args, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """Two CPU processes on one machine; one intra-op thread each, since the test machine's cores are shared."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", *script, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def worker(*args, **kwargs):
    return torchrun(["-m", "kubeforge.distributed.worker"], *args, **kwargs)


def accuracy_on_test(model_dir: Path, splits) -> float:
    model, _ = load_model(model_dir)
    return float(np.mean(predict_proba(model, splits.X_test).argmax(1) == splits.y_test))


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def two_process_run(digits_dir, config_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("ddp") / "model"
    done = worker("--splits", digits_dir, "--config", config_file, "--output", output, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    return output, done


def test_rendezvous_reads_torchrun_environment():
    assert Rendezvous.from_env({}) == Rendezvous(0, 0, 1)
    found = Rendezvous.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (found.rank, found.local_rank, found.world_size, found.primary) == (3, 1, 4, False)
    with pytest.raises(ConfigError, match="RANK=4 WORLD_SIZE=4"):
        Rendezvous.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="must be integers"):
        Rendezvous.from_env({"RANK": "zero"})


def test_backend_follows_the_device():
    assert resolve_backend("auto", TrainConfig(device="cpu")) == "gloo"
    if not torch.cuda.is_available():
        assert resolve_backend("auto", TrainConfig()) == "gloo"
        with pytest.raises(ConfigError, match="nccl' needs CUDA"):
            resolve_backend("nccl", TrainConfig())
    with pytest.raises(ConfigError, match="unknown backend 'mpi'"):
        resolve_backend("mpi", TrainConfig())


def test_config_round_trip_and_bad_files(tmp_path):
    path = write_worker_config(tmp_path / "c.json", ModelConfig(model="cnn"), TrainConfig(epochs=3))
    model_config, train_config = read_worker_config(path)
    assert model_config.model == "cnn" and train_config.epochs == 3
    with pytest.raises(ConfigError, match="does not exist"):
        read_worker_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"train": {"epochs": 0}}')
    with pytest.raises(ConfigError, match="bad.json: epochs"):
        read_worker_config(tmp_path / "bad.json")
    (tmp_path / "extra.json").write_text('{"train": {}, "data": {}}')
    with pytest.raises(ConfigError, match="'model' and 'train' sections only"):
        read_worker_config(tmp_path / "extra.json")


def test_bad_input_exits_2_before_training(tmp_path, config_file, capsys):
    output = tmp_path / "model"
    assert main(["--splits", str(tmp_path / "nowhere"), "--config", str(config_file), "--output", str(output)]) == 2
    assert "not a kubeforge splits directory" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert main(["--splits", str(tmp_path), "--config", str(tmp_path / "bad.json"), "--output", str(output)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not output.exists()


def test_single_process_worker_matches_the_train_step_layout(digits_dir, tmp_path, capsys):
    config = write_worker_config(tmp_path / "c.json", ModelConfig(hidden_sizes=[32]),
                                 TrainConfig(epochs=2, patience=50, device="cpu"))
    output = tmp_path / "model"
    assert main(["--splits", str(digits_dir), "--config", str(config), "--output", str(output),
                 "--no-progress"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["epoch_end"]["epoch"] for line in lines[:-1]] == [1, 2]
    assert lines[-1]["world_size"] == 1 and lines[-1]["epochs_run"] == 2
    assert {"model.safetensors", "model.json", "training"} <= {p.name for p in output.iterdir()}
    result = load_train_result(output)
    assert result["world_size"] == 1 and result["epochs_run"] == 2
    assert (output / "training" / "checkpoint" / "state.safetensors").is_file()


@pytest.mark.slow
def test_two_processes_reach_the_single_process_accuracy(two_process_run, digits_dir, config_file, tmp_path):
    ddp_output, done = two_process_run
    single_output = tmp_path / "single"
    assert main(["--splits", str(digits_dir), "--config", str(config_file), "--output", str(single_output),
                 "--no-progress"]) == 0
    splits = read_splits(digits_dir)
    single, ddp = accuracy_on_test(single_output, splits), accuracy_on_test(ddp_output, splits)
    assert single >= 0.9 and ddp >= 0.9
    assert abs(single - ddp) <= 0.03
    result = load_train_result(ddp_output)
    assert result["world_size"] == 2 and result["epochs_run"] == EPOCHS
    assert [h["epoch"] for h in result["history"]] == list(range(1, EPOCHS + 1))
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["epoch_end"]["epoch"] for r in reports if "epoch_end" in r] == list(range(1, EPOCHS + 1))
    assert [r["world_size"] for r in reports if "world_size" in r] == [2]  # only rank 0 reports


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(two_process_run, digits_dir, config_file, tmp_path):
    output = tmp_path / "model"
    killed = torchrun([str(HERE / "crashing_worker.py")], "--splits", digits_dir, "--config", config_file,
                      "--output", output, "--no-progress")
    assert killed.returncode != 0
    state = json.loads((output / "training" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 3
    assert not (output / "model.safetensors").exists()

    resumed = worker("--splits", digits_dir, "--config", config_file, "--output", output, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = load_train_result(output)
    assert [h["epoch"] for h in result["history"]] == list(range(1, EPOCHS + 1))
    uninterrupted = weights(two_process_run[0])
    for name, tensor in weights(output).items():
        assert torch.equal(tensor, uninterrupted[name]), name


@pytest.mark.slow
def test_only_rank_0_writes_and_every_rank_ends_with_the_best_weights(digits_dir, tmp_path):
    done = torchrun([str(HERE / "rank_workdirs.py")], digits_dir, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "rank0" / "checkpoint" / "state.safetensors").is_file()
    assert (tmp_path / "rank0" / "best.safetensors").is_file()
    assert (tmp_path / "rank0" / "history.json").is_file()
    assert not (tmp_path / "rank1").exists()
    reports = [json.loads((tmp_path / "reports" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["checksum"] == reports[1]["checksum"]
    assert all("storage every node sees" in report["refused"] for report in reports), reports
