"""The causal-LM training loop (pre-training and fine-tuning): AdamW, linear warm-up then cosine decay to 10 %,
gradient accumulation, bf16 autocast on CUDA, gradient clipping, validation with early stopping, exact resume.

Exactness: the rows of step s and the dropout seed of step s depend only on (lm_seed, s), and a checkpoint holds
every other input of the next step (trainable weights, AdamW moments, schedule, best weights, counters), so a run
killed at any point and resumed ends bit-identical (on the CPU) to one that never stopped.

Under ``torchrun`` (a process group is initialised) ``runtime.parallelism`` picks DistributedDataParallel or FSDP2
(``fully_shard`` on every decoder layer and the root; runs on CPU with gloo). The global batch stays
``batch_size x grad_accum`` rows whatever the world size: each rank takes a strided share of every micro-batch, and
the loss is divided by the step's loss tokens across all ranks, so one process and N ranks take the same step. Only
rank 0 writes; every rank reads the checkpoint on resume, so it must sit on storage every node sees. Under FSDP the
model comes back sharded: call ``full_trainable_state`` (on every rank) to get plain tensors on rank 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from tqdm.auto import tqdm

from kubeforge.checkpoint import CheckpointError
from kubeforge.config import ConfigError, LMRuntimeConfig, LMTrainConfig
from kubeforge.lm.evaluation import forward_logits, next_token_sums, perplexity, trim_padding
from kubeforge.lm.lm_checkpoint import (LMCheckpoint, capture_rng, has_lm_checkpoint, load_lm_checkpoint,
                                        restore_rng, save_lm_checkpoint)
from kubeforge.errors import ModelError
from kubeforge.training import process_group, select_device

CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.json"
CLIP_NORM = 1.0
FINAL_LR_SHARE = 0.1
VAL_BATCH = 16


@dataclass
class LMTrainResult:
    history: list[dict] = field(default_factory=list)
    steps_run: int = 0
    best_step: int = 0
    best_val_loss: float = float("inf")
    stopped_early: bool = False
    device: str = "cpu"
    tokens_per_second: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    resumed_from_step: int | None = None


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a sharded parameter counts at its full size."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Share of the peak learning rate used by optimiser step ``step`` (1-based): linear warm-up to 1, then a
    cosine down to FINAL_LR_SHARE at ``total_steps``."""
    if warmup_steps > 0 and step <= warmup_steps:
        return step / warmup_steps
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress))


def step_rows(n: int, seed: int, step: int, rows: int) -> torch.Tensor:
    """Rows of step ``step``: the next ``rows`` entries of a stream of per-epoch permutations of range(n)."""
    taken: list[torch.Tensor] = []
    position, end = (step - 1) * rows, step * rows
    while position < end:
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(end - position, n - offset)
        taken.append(order[offset:offset + take])
        position += take
    return torch.cat(taken)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1_009 + rank


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on biases and norm weights: shrinking a scale towards zero is not regularisation."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    return [group for group in ({"params": decay, "weight_decay": weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}) if group["params"]]


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in kinds]
    if not layers:
        raise ModelError(f"FSDP: cannot find the decoder layers of {type(base).__name__} (it names no "
                         "_no_split_modules); use parallelism=ddp")
    return layers


def _parallelise(model: torch.nn.Module, parallelism: str, device: torch.device, world: int) -> torch.nn.Module:
    if parallelism == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class _State:
    """Moves trainable weights and AdamW state between the (maybe sharded) model and plain CPU tensors."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool):
        self.model, self.optimizer, self.sharded = model, optimizer, sharded
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]

    def _options(self, **extra: bool) -> StateDictOptions:
        return StateDictOptions(full_state_dict=self.sharded, cpu_offload=True, **extra)

    def weights(self, *, copy: bool) -> dict[str, torch.Tensor]:
        """Full trainable tensors on rank 0 (a collective under FSDP; other ranks get {})."""
        if self.sharded:
            # a frozen weight tied to a trainable-module's attribute (lm_head to the embedding under LoRA) is kept
            # by get_model_state_dict even with ignore_frozen_params; only trainable names belong in a checkpoint
            full = get_model_state_dict(self.model, options=self._options(ignore_frozen_params=True))
            trainable = set(self.names)
            return {name: value for name, value in full.items() if name in trainable}
        parameters = dict(self.model.named_parameters())
        return {name: parameters[name].detach().cpu().clone() if copy else parameters[name].detach().cpu()
                for name in self.names}

    def optimizer_state(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer, options=self._options())

    def check_fits(self, weights: dict[str, torch.Tensor], where: Path) -> None:
        if sorted(weights) != sorted(self.names):
            missing, unknown = sorted(set(self.names) - set(weights)), sorted(set(weights) - set(self.names))
            raise CheckpointError(f"{where}: checkpoint does not fit the model's trainable parameters "
                                  f"(missing {missing[:3]}, unknown {unknown[:3]}); start without resume or "
                                  "use the same model and fine-tuning method")

    def load_weights(self, weights: dict[str, torch.Tensor], *, from_rank0: bool = False) -> None:
        """Every rank passes full tensors, or (from_rank0, FSDP only) rank 0 does and the others pass {}."""
        if self.sharded:
            set_model_state_dict(self.model, weights, options=StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=from_rank0, strict=False))
            return
        parameters = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                parameters[name].copy_(value)

    def load_optimizer(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state,
                                 options=StateDictOptions(full_state_dict=self.sharded))


def _validate(model: torch.nn.Module, val: Any, autocast: bool, rank: int, world: int) -> float:
    """Mean loss over every loss token of the validation set; ranks score strided shares of equal length (a short
    share is padded with a row without loss tokens: FSDP needs the same number of forwards on every rank)."""
    device = next(model.parameters()).device
    n = len(val.input_ids)
    share = torch.arange(rank, n, world)
    padding = -(-n // world) - len(share)
    rows = torch.cat([share, torch.zeros(padding, dtype=torch.long)])
    sums = torch.zeros(3, device=device)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), VAL_BATCH):
            batch = rows[start:start + VAL_BATCH]
            labels = val.labels[batch].clone()
            labels[start + torch.arange(len(batch)) >= len(share)] = -100
            mask, ids, labels = trim_padding(val.attention_mask[batch], val.input_ids[batch], labels)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = forward_logits(model, ids.to(device), mask.to(device))
            sums += next_token_sums(logits, labels.to(device))
    if world > 1:
        dist.all_reduce(sums)
    return float(sums[0]) / max(1.0, float(sums[1]))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _agree_on_start(start_step: int, device: torch.device, checkpoint: Path) -> None:
    bounds = torch.tensor([start_step, -start_step], dtype=torch.long, device=device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    if int(bounds[0]) != -int(bounds[1]):
        raise CheckpointError(f"{checkpoint}: ranks disagree on where to resume (steps {-int(bounds[1])} to "
                              f"{int(bounds[0])}); the checkpoint directory must be on storage every node sees "
                              "(a ReadWriteMany PVC)")


def _check_inputs(train: Any, val: Any, config: LMTrainConfig, world: int) -> None:
    for name, batches in (("train", train), ("val", val)):
        if len(batches.input_ids) == 0:
            raise ValueError(f"the {name} token batches are empty")
        if not batches.input_ids.shape == batches.attention_mask.shape == batches.labels.shape:
            raise ValueError(f"the {name} token batches disagree in shape: input_ids {tuple(batches.input_ids.shape)}"
                             f", attention_mask {tuple(batches.attention_mask.shape)}, labels "
                             f"{tuple(batches.labels.shape)}")
    if config.batch_size < world:
        raise ConfigError(f"batch_size {config.batch_size} is smaller than the {world} ranks: every rank needs at "
                          "least one sequence of each micro-batch")


def train_causal_lm(model: torch.nn.Module, train: Any, val: Any, config: LMTrainConfig, runtime: LMRuntimeConfig,
                    record_dir: Path, *, resume: bool = True,
                    progress: bool | Callable[[dict], None] = True) -> LMTrainResult:
    """Train the model's trainable parameters in place on ``train`` (a TokenBatches); at the end it holds the
    weights of the best validation loss. A callable ``progress`` gets every step's record (on every rank)."""
    rank, world = process_group()
    primary = rank == 0
    _check_inputs(train, val, config, world)
    record_dir = Path(record_dir)
    device = select_device(runtime.lm_device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    autocast = runtime.lm_mixed_precision and device.type == "cuda"
    model.to(device)
    if runtime.gradient_checkpointing:
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise ModelError(f"gradient_checkpointing: {type(model).__name__} does not support it (not a "
                             "transformers model); turn it off")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = trainable_parameters(model)
    if trainable == 0:
        raise ModelError("the model has no trainable parameters (prepare it with prepare_for_finetuning)")
    sharded = world > 1 and runtime.parallelism == "fsdp"
    network = _parallelise(model, runtime.parallelism, device, world) if world > 1 else model
    optimizer = torch.optim.AdamW(_param_groups(model, runtime.lm_weight_decay), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: lr_factor(done + 1, config.warmup_steps, config.steps))
    state = _State(model, optimizer, sharded)
    ids, mask, labels = (t.to(device) for t in (train.input_ids, train.attention_mask, train.labels))

    result = LMTrainResult(device=str(device), trainable_parameters=trainable, total_parameters=total)
    best: dict[str, torch.Tensor] = {}
    bad_evals, start_step, seconds, tokens_seen = 0, 1, 0.0, 0
    checkpoint_dir = record_dir / CHECKPOINT_DIR
    if resume and has_lm_checkpoint(checkpoint_dir):
        saved = load_lm_checkpoint(checkpoint_dir)
        state.check_fits(saved.weights, checkpoint_dir)
        state.load_weights(saved.weights)
        state.load_optimizer(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        restore_rng(saved.rng)
        extra = saved.extra
        best = saved.best_weights if primary or not sharded else {}
        start_step, result.resumed_from_step = saved.step + 1, saved.step
        result.history, result.best_step = extra["history"], extra["best_step"]
        result.best_val_loss = float("inf") if extra["best_val_loss"] is None else extra["best_val_loss"]
        bad_evals, seconds, tokens_seen = extra["bad_evals"], extra["train_seconds"], extra["train_tokens"]
        result.stopped_early = extra["stopped_early"]
        del saved
    if world > 1:
        _agree_on_start(start_step, device, checkpoint_dir)

    def write_checkpoint(step: int, done: bool) -> None:
        weights, moments = state.weights(copy=False), state.optimizer_state()  # collectives under FSDP
        if primary:
            save_lm_checkpoint(checkpoint_dir, LMCheckpoint(
                step=step, weights=weights, best_weights=best, optimizer=moments,
                scheduler=scheduler.state_dict(), rng=capture_rng(),
                extra={"history": result.history, "best_step": result.best_step,
                       "best_val_loss": _finite_or_none(result.best_val_loss), "bad_evals": bad_evals,
                       "train_seconds": seconds, "train_tokens": tokens_seen,
                       "stopped_early": result.stopped_early, "finished": done}))
            (record_dir / HISTORY_FILE).write_text(json.dumps(result.history, indent=2))

    rows_per_step = config.batch_size * config.grad_accum
    parameters = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=config.steps, initial=start_step - 1, desc="train", unit="step", file=sys.stderr,
               disable=not (progress is True and primary))
    last_step = start_step - 1 if result.stopped_early else config.steps  # a longer rerun continues, a stopped one not
    for step in range(start_step, last_step + 1):
        started = time.perf_counter()
        torch.manual_seed(_step_seed(runtime.lm_seed, step, rank))
        model.train()
        rows = step_rows(len(ids), runtime.lm_seed, step, rows_per_step).to(device)
        step_tokens = max(1, int((labels[rows][:, 1:] != -100).sum()))
        loss_sum = torch.zeros((), device=device)
        optimizer.zero_grad(set_to_none=True)
        for micro in range(config.grad_accum):
            share = rows[micro * config.batch_size:(micro + 1) * config.batch_size][rank::world]
            last = micro == config.grad_accum - 1
            with network.no_sync() if world > 1 and not sharded and not last else contextlib.nullcontext():
                micro_mask, micro_ids, micro_labels = trim_padding(mask[share], ids[share], labels[share])
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = forward_logits(network, micro_ids, micro_mask)
                summed = next_token_sums(logits, micro_labels)[0]
                # DDP and FSDP average gradients over ranks; scaling by world makes it the sum over the step's tokens
                (summed * (world / step_tokens)).backward()
            loss_sum += summed.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, CLIP_NORM)
        optimizer.step()
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        if world > 1:
            dist.all_reduce(loss_sum)
        step_seconds = time.perf_counter() - started
        real_tokens = int(mask[rows].sum())
        seconds, tokens_seen = seconds + step_seconds, tokens_seen + real_tokens
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        record = {"step": step, "loss": float(loss_sum) / step_tokens, "lr": learning_rate,
                  "grad_norm": float(norm), "tokens_per_second": real_tokens / step_seconds}
        if step % runtime.eval_interval == 0 or step == config.steps:
            val_loss = _validate(model, val, autocast, rank, world)
            record.update(val_loss=val_loss, val_perplexity=perplexity(val_loss))
            if val_loss < result.best_val_loss - 1e-7:
                result.best_val_loss, result.best_step, bad_evals = val_loss, step, 0
                best = state.weights(copy=True)
            else:
                bad_evals += 1
            result.stopped_early = bad_evals >= config.patience
        result.history.append(record)
        done = result.stopped_early or step == config.steps
        if step % runtime.checkpoint_interval == 0 or done:
            write_checkpoint(step, done)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_second']:.0f}")
        if callable(progress):
            progress(record)
        if result.stopped_early:
            break
    bar.close()

    result.steps_run = result.history[-1]["step"] if result.history else 0
    if best or sharded:
        state.load_weights(best, from_rank0=sharded)
    result.tokens_per_second = tokens_seen / seconds if seconds else 0.0
    return result


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plain CPU tensors of the trainable parameters on rank 0 ({} elsewhere); call it on every rank under FSDP."""
    sharded = any(hasattr(p, "full_tensor") for p in model.parameters())
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=sharded, cpu_offload=True,
                                                                ignore_frozen_params=True))
