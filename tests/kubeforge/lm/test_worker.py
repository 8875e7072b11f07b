"""The LM torchrun worker (kubeforge.lm.worker) and the volume it reads (kubeforge.lm.cluster): what lm-fetch puts
there, what the worker refuses before joining the group, one process vs two FSDP ranks, and a SIGKILLed job that
resumes from the checkpoint on the volume. Two CPU ranks over gloo stand in for the GPUs and NCCL of a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kubeforge.config import (ConfigError, DistributedConfig, LMDataConfig, LMModelConfig, LMRuntimeConfig,
                              LMTrainConfig, LoRAConfig, load_platform)
from kubeforge.distributed.jobs import JobSpecError, render_job_objects
from kubeforge.distributed.workspace import WorkspaceError
from kubeforge.lm.cluster import (LM_WORKER_MODULE, LMWorkspace, collect_lm_model, fetch_base_model,
                                  fetch_to_workspace, plan_lm_job)
from kubeforge.lm.steps import load_lm_result
from kubeforge.lm.worker import (LMWorkerConfig, main, read_lm_worker_config, resolve_lm_backend,
                                 write_lm_worker_config)
from kubeforge.models import ModelError
from tests.kubeforge.lm.conftest import TEST_CONTEXT, TEST_VOCAB

TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS, KILL_AT, CHECKPOINT_EVERY = 4, 3, 2
# the kill hook runs inside the worker's own main(): `torchrun --no-python` starts this one-liner on every rank
KILLING_WORKER = ("import os, signal, sys; from kubeforge.lm.worker import main; "
                  "kill = lambda record: record['step'] == int(os.environ['KILL_AT']) and "
                  "os.kill(os.getpid(), signal.SIGKILL); sys.exit(main(sys.argv[1:], on_step=kill))")


def worker_config(**runtime) -> LMWorkerConfig:
    """lora_dropout 0: dropout masks are drawn per rank, so with dropout two ranks cannot take one process's step."""
    return LMWorkerConfig(
        task="finetune", lm_model=LMModelConfig(base_model="scratch:tiny"), lm_data=LMDataConfig(max_length=32),
        train=LMTrainConfig(steps=STEPS, learning_rate=5e-3, warmup_steps=1, batch_size=4, patience=50),
        lm_runtime=LMRuntimeConfig(lm_device="cpu", eval_interval=2, checkpoint_interval=CHECKPOINT_EVERY,
                                   **runtime),
        lora=LoRAConfig(lora_rank=4, lora_dropout=0.0))


def prompt_completion_file(path: Path, rows: int = 40) -> Path:
    lines = [json.dumps({"prompt": f"def add_{i}(x):", "completion": f" return x + {i}  # adds {i}"})
             for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def volume(tmp_path_factory, tiny_lm_dir) -> LMWorkspace:
    """A volume as lm-fetch leaves it: splits of a small prompt/completion set and the tiny base model."""
    root = tmp_path_factory.mktemp("volume")
    data = LMDataConfig(finetune_dataset=str(prompt_completion_file(root / "set.jsonl")), max_length=32)
    fetch_to_workspace(root, tmp_path_factory.mktemp("artifact") / "lm_splits",
                       LMModelConfig(base_model=str(tiny_lm_dir)), data, LMRuntimeConfig())
    return LMWorkspace(root)


def args_for(workspace: LMWorkspace, config_file: Path, output: Path) -> list[str]:
    return ["--config", str(config_file), "--data", str(workspace.data), "--base", str(workspace.base),
            "--output", str(output)]


def torchrun(command: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Two CPU ranks on this machine, one intra-op thread each (the test machine's cores are shared)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node=2", *command], capture_output=True,
                          text=True, timeout=600, env=environment)


def losses(output: Path) -> list[float]:
    return [entry["loss"] for entry in load_lm_result(output)["history"]]


def adapter_weights(output: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(output / "adapter" / "adapter_model.safetensors"))


# --- the config the launcher writes --------------------------------------------------------------------------

def test_worker_config_round_trips(tmp_path):
    config = worker_config(parallelism="ddp")
    assert read_lm_worker_config(write_lm_worker_config(tmp_path / "c.json", config)) == config


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "not readable JSON"),
    ('{"task": "finetune", "optimizer": {}}', "must be an object with the keys"),
    ('{"task": "distill"}', "task must be one of finetune, pretrain"),
    ('{"task": "finetune", "train": {"steps": 0}}', "section train: steps"),
    ('{"task": "finetune", "lora": []}', "'lora' must be an object"),
])
def test_bad_worker_config_is_a_config_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "lm-train.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as error:
        read_lm_worker_config(path)
    assert str(path) in str(error.value)


def test_backend_follows_the_device():
    assert resolve_lm_backend("auto", LMRuntimeConfig(lm_device="cpu")) == "gloo"
    assert resolve_lm_backend("gloo", LMRuntimeConfig()) == "gloo"
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_lm_backend("mpi", LMRuntimeConfig())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'nccl' needs CUDA"):
            resolve_lm_backend("nccl", LMRuntimeConfig())


# --- bad input: exit 2 before any rank waits on the others ------------------------------------------------------

def test_missing_split_pickled_base_and_too_small_batch_exit_2(volume, tmp_path, copy_model, monkeypatch, capsys):
    config_file = write_lm_worker_config(tmp_path / "c.json", worker_config())
    empty = LMWorkspace(tmp_path / "empty")
    assert main(["--config", str(config_file), "--data", str(empty.data), "--base", str(volume.base),
                 "--output", str(tmp_path / "out")]) == 2
    assert "finetune/train.jsonl does not exist" in capsys.readouterr().err

    pickled = copy_model(volume.base, "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    assert main(["--config", str(config_file), "--data", str(volume.data), "--base", str(pickled),
                 "--output", str(tmp_path / "out")]) == 2
    assert "pytorch_model.bin holds pickled weights" in capsys.readouterr().err

    monkeypatch.setenv("WORLD_SIZE", "8")  # batch_size 4 cannot be shared by 8 ranks
    monkeypatch.setenv("RANK", "0")
    assert main(args_for(volume, config_file, tmp_path / "out")) == 2
    assert "batch_size 4 is smaller than the 8 ranks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- the volume: what lm-fetch leaves and what the step takes back ----------------------------------------------

def test_fetch_leaves_splits_and_only_safe_model_files_on_the_volume(volume, tiny_lm_dir, copy_model, tmp_path):
    assert {p.name for p in (volume.data / "finetune").iterdir()} == {"train.jsonl", "heldout.jsonl"}
    assert (volume.data / "stats.json").is_file()
    assert sorted(p.name for p in volume.base.iterdir()) == sorted(p.name for p in tiny_lm_dir.iterdir())
    volume.check_fetched("finetune")
    with pytest.raises(WorkspaceError, match="corpus/train.jsonl"):
        volume.check_fetched("pretrain")  # no corpus was fetched for a fine-tune of a given base

    # a local base with extra files: only safetensors/JSON/tokenizer files reach the volume, as from any remote
    messy = copy_model(tiny_lm_dir, "messy")
    (messy / "optimizer.pt").write_bytes(b"not for the volume")
    (messy / "notes.md").write_text("private")
    fresh = LMWorkspace(tmp_path / "fresh")
    fresh.root.mkdir()
    fetch_base_model(str(messy), fresh, model_config=LMModelConfig(), seed=0)
    assert {p.name for p in fresh.base.iterdir()} == {p.name for p in tiny_lm_dir.iterdir()}


def test_fetch_of_an_hf_model_leaves_real_files_not_cache_links(fake_hf_cache, tiny_lm_dir, tmp_path):
    fake_hf_cache.add("kubeforge-tests/tiny", tiny_lm_dir)
    workspace = LMWorkspace(tmp_path / "volume")
    workspace.root.mkdir()
    base = fetch_base_model("hf://kubeforge-tests/tiny", workspace, model_config=LMModelConfig(), seed=0)
    files = sorted(base.iterdir())
    assert files and not any(path.is_symlink() for path in files)
    assert (base / "model.safetensors").read_bytes() == (tiny_lm_dir / "model.safetensors").read_bytes()
    with pytest.raises(ModelError, match="kubeforge-tests/absent.*not in the local cache"):
        fetch_base_model("hf://kubeforge-tests/absent", workspace, model_config=LMModelConfig(), seed=0)
    assert (workspace.base / "config.json").is_file()  # a failed fetch leaves the previous base alone


def test_fetch_needs_the_volume_mounted(tmp_path, tiny_lm_dir):
    with pytest.raises(WorkspaceError, match="mount the run's volume"):
        fetch_base_model(str(tiny_lm_dir), LMWorkspace(tmp_path / "absent"), model_config=LMModelConfig(), seed=0)


@pytest.mark.slow
def test_fetch_of_a_scratch_base_builds_it_from_the_corpus(tmp_path):
    workspace = LMWorkspace(tmp_path / "volume")
    workspace.root.mkdir()
    data = LMDataConfig(finetune_dataset=str(prompt_completion_file(tmp_path / "set.jsonl")))
    fetched = fetch_to_workspace(workspace.root, tmp_path / "splits",
                                 LMModelConfig(base_model="scratch:tiny", tokenizer_vocab=TEST_VOCAB,
                                               context_length=TEST_CONTEXT), data, LMRuntimeConfig())
    assert fetched["base_dir"] == str(workspace.base)
    assert (workspace.data / "corpus" / "train.jsonl").is_file()  # the scratch tokenizer trained on it
    assert json.loads((workspace.base / "config.json").read_text())["vocab_size"] <= TEST_VOCAB


def test_collect_copies_the_model_and_leaves_the_checkpoint_on_the_volume(tmp_path):
    workspace = LMWorkspace(tmp_path / "volume")
    for part in ("merged/model.safetensors", "training/result.json", "training/checkpoint/state.safetensors"):
        (workspace.output / part).parent.mkdir(parents=True, exist_ok=True)
        (workspace.output / part).write_text(part)
    collected = collect_lm_model(workspace, tmp_path / "artifact")
    assert {p.relative_to(collected).as_posix() for p in collected.rglob("*") if p.is_file()} == \
        {"merged/model.safetensors", "training/result.json"}
    with pytest.raises(WorkspaceError, match="does not exist"):
        collect_lm_model(LMWorkspace(tmp_path / "other"), tmp_path / "artifact2")


def test_lm_job_runs_the_lm_worker_on_the_run_volume_offline():
    settings = DistributedConfig(nodes=2, procs_per_node=4, checkpoint_mount="/mnt/kubeforge")
    request = plan_lm_job("uri://run/model", settings, profile="gpu-a100", volume_claim="run-7-lm-workspace",
                          namespace="team-a", platform=load_platform())
    runtime, trainjob = render_job_objects(request)
    trainer = trainjob["spec"]["trainer"]
    assert trainer["command"] == ["torchrun", "--module", LM_WORKER_MODULE]
    assert trainer["args"] == LMWorkspace(Path("/mnt/kubeforge")).worker_args()
    assert {e["name"]: e["value"] for e in trainer["env"]}["HF_HUB_OFFLINE"] == "1"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "run-7-lm-workspace"}} in pod["volumes"]
    (job,) = render_job_objects(plan_lm_job("k", settings.model_copy(update={"job_kind": "pytorchjob"}),
                                            profile="gpu-a100", volume_claim="ws", namespace="team-a"))
    command = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--module", LM_WORKER_MODULE]
    with pytest.raises(JobSpecError, match="needs the run's volume"):
        plan_lm_job("k", settings, profile="cpu", namespace="team-a")
    with pytest.raises(JobSpecError, match="not a PersistentVolumeClaim name"):
        plan_lm_job("k", settings, profile="cpu", namespace="team-a", volume_claim="Bad_Claim")


def test_job_render_prints_the_lm_job_and_refuses_one_without_a_volume():
    import yaml
    from typer.testing import CliRunner

    from kubeforge.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["job", "render", "lm-ft", "-n", "team-a", "--kind", "lm", "--profile", "gpu-a100",
                               "-p", "nodes=2", "-p", "procs_per_node=8", "-p", "checkpoint_pvc=run-7-lm-workspace",
                               "-p", "job_kind=pytorchjob"])
    assert done.exit_code == 0, done.output
    (job,) = yaml.safe_load_all(done.output)
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["containers"][0]["command"][-2:] == ["--module", LM_WORKER_MODULE]
    assert master["volumes"][0]["persistentVolumeClaim"]["claimName"] == "run-7-lm-workspace"
    refused = runner.invoke(app, ["job", "render", "lm-ft", "-n", "team-a", "--kind", "lm"])
    assert refused.exit_code == 2 and "needs the run's volume" in refused.output
    assert runner.invoke(app, ["job", "render", "x", "-n", "team-a", "--kind", "llm"]).exit_code == 2


# --- training: one process, two FSDP ranks, a killed job resumed --------------------------------------------------

@pytest.fixture(scope="module")
def one_process_run(volume, tmp_path_factory) -> Path:
    """The worker without torchrun: one process, the reference the distributed runs must reproduce."""
    root = tmp_path_factory.mktemp("one-process")
    config_file = write_lm_worker_config(root / "c.json", worker_config())
    assert main(args_for(volume, config_file, root / "model")) == 0
    return root / "model"


@pytest.mark.slow
def test_one_process_run_writes_what_finetune_step_writes(volume, one_process_run):
    from kubeforge.lm.sources import load_adapter_model, load_causal_lm

    summary = load_lm_result(one_process_run)
    assert (summary["world_size"], summary["parallelism"], summary["steps_run"]) == (1, "none", STEPS)
    assert summary["finetune_method"] == "lora" and summary["outputs"]["adapter_bytes"] > 0
    assert (one_process_run / "training" / "checkpoint").is_dir()
    merged, tokenizer = load_causal_lm(one_process_run / "merged")
    base, _ = load_causal_lm(volume.base)
    adapted = load_adapter_model(one_process_run / "adapter", volume.base)
    ids = tokenizer("def add_3(x):", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tuned, plain, on_base = merged(ids).logits, base(ids).logits, adapted(ids).logits
    torch.testing.assert_close(tuned, on_base, rtol=1e-4, atol=1e-4)  # merged = the adapter on its base
    assert not torch.allclose(tuned, plain)  # and training moved it


@pytest.mark.slow
def test_two_fsdp_ranks_take_the_steps_of_one_process_and_rank_0_saves_the_model(volume, one_process_run, tmp_path):
    config_file = write_lm_worker_config(tmp_path / "c.json", worker_config(parallelism="fsdp"))
    done = torchrun(["-m", "kubeforge.lm.worker", *args_for(volume, config_file, tmp_path / "model")])
    assert done.returncode == 0, done.stderr[-4000:]
    summary = load_lm_result(tmp_path / "model")
    assert (summary["world_size"], summary["parallelism"]) == (2, "fsdp")
    assert losses(tmp_path / "model") == pytest.approx(losses(one_process_run), rel=1e-4)
    reference, distributed = adapter_weights(one_process_run), adapter_weights(tmp_path / "model")
    assert distributed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(distributed[name], tensor, rtol=1e-3, atol=1e-5, msg=name)
    # one summary line, printed by rank 0 only
    assert sum(line.startswith('{"world_size"') for line in done.stdout.splitlines()) == 1


@pytest.mark.slow
def test_a_killed_job_resumes_from_the_checkpoint_on_the_volume(volume, one_process_run, tmp_path):
    config_file = write_lm_worker_config(tmp_path / "c.json", worker_config(parallelism="fsdp"))
    arguments = args_for(volume, config_file, tmp_path / "model")
    killed = torchrun(["--no-python", sys.executable, "-c", KILLING_WORKER, *arguments],
                      env={"KILL_AT": str(KILL_AT)})
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr
    assert not (tmp_path / "model" / "training" / "result.json").exists()  # no model: the job did not finish
    resumed = torchrun(["-m", "kubeforge.lm.worker", *arguments])  # the restarted job, same volume
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    summary = load_lm_result(tmp_path / "model")
    assert summary["resumed_from_step"] == CHECKPOINT_EVERY  # at most one checkpoint interval was lost
    assert losses(tmp_path / "model") == pytest.approx(losses(one_process_run), rel=1e-4)
