import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubeforge.checkpoint import CheckpointError
from kubeforge.config import LMRuntimeConfig, LMTrainConfig, LoRAConfig
from kubeforge.lm.evaluation import evaluate_causal_lm
from kubeforge.lm.lora import prepare_for_finetuning
from kubeforge.lm.training import (CLIP_NORM, lr_factor, step_rows, train_causal_lm, trainable_parameters)
from tests.kubeforge.lm.rank_worker import counting_sequences, ragged_sequences, tiny_model

WORKER = Path(__file__).with_name("rank_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
CPU = LMRuntimeConfig(lm_device="cpu", eval_interval=10, checkpoint_interval=10)


def test_warmup_then_cosine_to_a_tenth():
    assert [lr_factor(step, 4, 20) for step in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert lr_factor(12, 4, 20) == pytest.approx(0.55)  # half-way through the decay: 0.1 + 0.9 * 0.5
    assert lr_factor(20, 4, 20) == pytest.approx(0.1)
    assert lr_factor(1, 0, 10) == pytest.approx(1.0 - 0.9 * (1 - math.cos(math.pi / 10)) / 2)
    decay = [lr_factor(step, 4, 20) for step in range(4, 21)]
    assert decay == sorted(decay, reverse=True)


def test_batch_order_depends_only_on_seed_and_step():
    assert torch.equal(step_rows(10, 3, 7, 4), step_rows(10, 3, 7, 4))
    assert not torch.equal(step_rows(10, 3, 1, 4), step_rows(10, 4, 1, 4))
    # five steps of 4 rows over 10 sequences: two full passes, each a permutation
    stream = torch.cat([step_rows(10, 3, step, 4) for step in range(1, 6)])
    assert sorted(stream[:10].tolist()) == list(range(10)) == sorted(stream[10:].tolist())


def test_loss_falls_on_a_learnable_sequence_and_the_best_weights_come_back(tmp_path):
    model = tiny_model()
    config = LMTrainConfig(steps=30, learning_rate=1e-2, warmup_steps=3, batch_size=8, patience=5)
    val = counting_sequences(16, seed=1)
    result = train_causal_lm(model, counting_sequences(64), val, config, CPU, tmp_path, progress=False)

    evals = [entry for entry in result.history if "val_loss" in entry]
    assert [entry["step"] for entry in evals] == [10, 20, 30]
    assert evals[-1]["val_loss"] < 0.5 * evals[0]["val_loss"]
    assert result.history[-1]["loss"] < 0.2 * result.history[0]["loss"]
    assert all(entry["val_perplexity"] == pytest.approx(math.exp(entry["val_loss"])) for entry in evals)
    assert [entry["lr"] for entry in result.history[:3]] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])
    assert result.history[-1]["lr"] == pytest.approx(1e-3)
    assert (result.steps_run, result.stopped_early, result.resumed_from_step) == (30, False, None)
    assert result.best_val_loss == min(entry["val_loss"] for entry in evals)
    assert evaluate_causal_lm(model, val)["loss"] == pytest.approx(result.best_val_loss, abs=1e-5)
    assert (result.trainable_parameters, result.total_parameters) == trainable_parameters(model)
    assert result.tokens_per_second > 0 and result.device == "cpu"
    assert json.loads((tmp_path / "history.json").read_text()) == result.history


def test_two_micro_batches_of_8_take_the_step_of_one_batch_of_16(tmp_path):
    """Ragged sequences with masked prompts: averaging per micro-batch would weigh tokens wrongly."""
    data = ragged_sequences(16)
    gradients = []
    for batch_size, grad_accum in ((16, 1), (8, 2)):
        model = tiny_model()
        config = LMTrainConfig(steps=1, warmup_steps=0, learning_rate=1e-3, batch_size=batch_size,
                               grad_accum=grad_accum)
        train_causal_lm(model, data, data, config, CPU, tmp_path / f"{batch_size}x{grad_accum}", progress=False)
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    # reference: Hugging Face's own mean-over-loss-tokens loss on the same 16 rows, clipped the same way
    reference = tiny_model()
    rows = step_rows(16, 0, 1, 16)
    reference(input_ids=data.input_ids[rows], attention_mask=data.attention_mask[rows],
              labels=data.labels[rows]).loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP_NORM)
    for name, parameter in reference.named_parameters():
        assert torch.allclose(gradients[0][name], gradients[1][name], atol=1e-5), name
        assert torch.allclose(gradients[0][name], parameter.grad, atol=1e-5), name


def test_early_stopping_fires_when_validation_stops_improving(tmp_path):
    """Training counts upwards, validation counts downwards: the better one gets, the worse the other."""
    model = tiny_model()
    config = LMTrainConfig(steps=40, learning_rate=1e-2, warmup_steps=1, batch_size=8, patience=2)
    runtime = CPU.model_copy(update={"eval_interval": 2})
    val = counting_sequences(16, seed=1, stride=-1)
    result = train_causal_lm(model, counting_sequences(64), val, config, runtime, tmp_path, progress=False)

    evals = [entry["val_loss"] for entry in result.history if "val_loss" in entry]
    assert result.stopped_early and result.steps_run < 40
    assert len(evals) >= 3 and min(evals[-2:]) >= result.best_val_loss
    assert evaluate_causal_lm(model, val)["loss"] == pytest.approx(result.best_val_loss, abs=1e-5)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == result.steps_run and state["extra"]["stopped_early"]
    again = train_causal_lm(tiny_model(), counting_sequences(64), val, config, runtime, tmp_path, progress=False)
    assert again.stopped_early and again.resumed_from_step == result.steps_run and again.history == result.history


def test_progress_goes_to_a_callback_or_to_tqdm_on_stderr(tmp_path, capsys):
    config = LMTrainConfig(steps=2, warmup_steps=0, batch_size=4)
    seen: list[dict] = []
    train_causal_lm(tiny_model(), counting_sequences(8), counting_sequences(4), config, CPU, tmp_path / "a",
                    progress=seen.append)
    assert [entry["step"] for entry in seen] == [1, 2] and {"loss", "lr", "tokens_per_second"} <= set(seen[0])
    train_causal_lm(tiny_model(), counting_sequences(8), counting_sequences(4), config, CPU, tmp_path / "b")
    assert "2/2" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_of_other_trainable_parameters(tmp_path):
    config = LMTrainConfig(steps=2, warmup_steps=0, batch_size=4)
    runtime = CPU.model_copy(update={"checkpoint_interval": 1})
    train_causal_lm(tiny_model(), counting_sequences(8), counting_sequences(4), config, runtime, tmp_path,
                    progress=False)
    adapted = prepare_for_finetuning(tiny_model(), LoRAConfig(), "cpu")
    with pytest.raises(CheckpointError, match="does not fit the model's trainable parameters"):
        train_causal_lm(adapted, counting_sequences(8), counting_sequences(4), config, runtime, tmp_path,
                        progress=False)


def test_a_finished_run_returns_as_it_was_and_a_longer_rerun_continues(tmp_path):
    model = tiny_model()
    short = LMTrainConfig(steps=3, warmup_steps=1, batch_size=4)
    first = train_causal_lm(model, counting_sequences(8), counting_sequences(4), short, CPU, tmp_path, progress=False)
    again = train_causal_lm(tiny_model(), counting_sequences(8), counting_sequences(4), short, CPU, tmp_path,
                            progress=False)
    assert again.resumed_from_step == 3 and again.history == first.history
    longer = train_causal_lm(tiny_model(), counting_sequences(8), counting_sequences(4),
                             short.model_copy(update={"steps": 5}), CPU, tmp_path, progress=False)
    assert [entry["step"] for entry in longer.history] == [1, 2, 3, 4, 5] and longer.history[:3] == first.history


def _worker(out: Path, *args: str, torchrun: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every run: bit-identical CPU kernels
    command = [*(TORCHRUN if torchrun else [sys.executable]), str(WORKER), str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).parents[3])


@pytest.mark.slow
def test_a_sigkilled_run_resumes_bit_identically(tmp_path):
    """LoRA with dropout: the dropout draws must repeat after the restart too."""
    args = ("--method", "lora", "--steps", "8", "--checkpoint-interval", "3")
    whole = _worker(tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _worker(tmp_path / "killed", *args, "--kill-at-step", "5")
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "killed" / "training-rank0" / "checkpoint" / "state.json").read_text())["step"] == 3
    resumed = _worker(tmp_path / "killed", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("whole", "killed"))
    assert got["resumed_from_step"] == 3 and expected["resumed_from_step"] is None
    for field in ("step", "loss", "lr", "grad_norm", "val_loss"):
        assert [entry.get(field) for entry in got["history"]] == [entry.get(field) for entry in expected["history"]]
    assert got["best_step"] == expected["best_step"] and got["best_val_loss"] == expected["best_val_loss"]
    final, uninterrupted = (load_file(str(tmp_path / name / "weights.safetensors")) for name in ("killed", "whole"))
    assert len(final) == 8 and sorted(final) == sorted(uninterrupted)  # 2 layers x (q, v) x (A, B)
    for name, tensor in final.items():
        assert torch.equal(tensor, uninterrupted[name]), name


@pytest.mark.slow
def test_fsdp_and_ddp_on_two_ranks_take_the_steps_of_one_process(tmp_path):
    """Validation that gets worse after step 6, so the final weights are the restored best ones."""
    args = ("--steps", "12", "--lr", "4e-2", "--val-stride", "-1")
    single = _worker(tmp_path / "single", *args)
    assert single.returncode == 0, single.stderr[-3000:]
    result = json.loads((tmp_path / "single" / "result.json").read_text())
    reference = result["history"]
    assert result["best_step"] < result["steps_run"] == 12
    weights = load_file(str(tmp_path / "single" / "weights.safetensors"))
    for parallelism in ("fsdp", "ddp"):
        out = tmp_path / parallelism
        done = _worker(out, *args, "--parallelism", parallelism, torchrun=True)
        assert done.returncode == 0, done.stderr[-3000:]
        distributed = json.loads((out / "result.json").read_text())
        assert distributed["best_step"] == result["best_step"], parallelism
        history = distributed["history"]
        for mine, theirs in zip(history, reference, strict=True):
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=0.01), parallelism
            assert mine.get("val_loss", 0) == pytest.approx(theirs.get("val_loss", 0), rel=0.01), parallelism
        ranks = [json.loads((out / "reports" / f"rank{rank}.json").read_text())["losses"] for rank in (0, 1)]
        assert ranks[0] == ranks[1]  # the losses are reduced: every rank reports the same
        assert (out / "training-rank0" / "checkpoint" / "state.safetensors").is_file()
        assert not (out / "training-rank1").exists()  # only rank 0 writes
        gathered = load_file(str(out / "weights.safetensors"))
        assert sorted(gathered) == sorted(weights)  # FSDP's shards come back as full tensors
        for name, tensor in gathered.items():
            assert torch.allclose(tensor, weights[name], atol=1e-4), (parallelism, name)


def test_gradient_checkpointing_recomputes_the_same_steps(tmp_path):
    config = LMTrainConfig(steps=3, warmup_steps=1, learning_rate=1e-2, batch_size=4)
    losses = []
    for checkpointing in (False, True):
        runtime = CPU.model_copy(update={"gradient_checkpointing": checkpointing})
        result = train_causal_lm(tiny_model(), counting_sequences(8), counting_sequences(4), config, runtime,
                                 tmp_path / str(checkpointing), progress=False)
        losses.append([entry["loss"] for entry in result.history])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
