"""Trains the tiny test Llama in its own process; the tests launch it plainly or under torchrun.

    python tests/kubeforge/lm/rank_worker.py OUT [--parallelism fsdp|ddp] [--method full|lora] [--steps N]
        [--checkpoint-interval K] [--kill-at-step S] [--lr LR] [--val-stride -1]

Each rank trains with its own record directory ``OUT/training-rank<r>`` (only rank 0's may appear). Rank 0 writes
``OUT/result.json`` (the history) and ``OUT/weights.safetensors`` (the final trainable weights, gathered under FSDP);
every rank writes ``OUT/reports/rank<r>.json`` with the losses it saw. ``--kill-at-step`` sends this process SIGKILL
right after that step, the way an evicted pod dies. The functions above ``main`` are the tests' shared builders.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

TOY_VOCAB = 300
TOY_PERIOD = 20


def tiny_config():
    import transformers

    return transformers.LlamaConfig(vocab_size=TOY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def tiny_model(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(tiny_config())


def token_batches(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
    from kubeforge.lm.sequences import TokenBatches

    return TokenBatches(input_ids=input_ids, attention_mask=attention_mask, labels=labels, stats={})


def counting_sequences(n: int, length: int = 16, *, seed: int = 0, stride: int = 1):
    """Learnable toy text: every sequence counts upwards (stride 1) or downwards (stride -1) modulo TOY_PERIOD."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, TOY_PERIOD, (n, 1), generator=generator)
    ids = (start + stride * torch.arange(length)) % TOY_PERIOD + 3
    return token_batches(ids, torch.ones_like(ids), ids.clone())


def ragged_sequences(n: int, length: int = 16, *, seed: int = 0):
    """Right-padded sequences of different lengths whose first tokens carry no loss (like a prompt)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TOY_VOCAB, (n, length), generator=generator)
    lengths = torch.randint(4, length + 1, (n,), generator=generator)
    prompt = torch.randint(0, 3, (n,), generator=generator)
    positions = torch.arange(length)
    mask = (positions < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    labels = torch.where(mask.bool() & (positions >= prompt[:, None]), ids, torch.full_like(ids, -100))
    return token_batches(ids, mask, labels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--parallelism", default="fsdp", choices=("fsdp", "ddp"))
    parser.add_argument("--method", default="full", choices=("full", "lora"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--checkpoint-interval", type=int, default=100)
    parser.add_argument("--kill-at-step", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--val-stride", type=int, default=1, help="-1: validation counts down, training up")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    from kubeforge.config import LMRuntimeConfig, LMTrainConfig, LoRAConfig
    from kubeforge.distributed.worker import Rendezvous, join_process_group, leave_process_group
    from kubeforge.lm.lora import prepare_for_finetuning
    from kubeforge.lm.training import full_trainable_state, train_causal_lm

    args = parse_args(argv)
    rendezvous = Rendezvous.from_env()
    join_process_group(rendezvous, "gloo")
    model = tiny_model()
    if args.method == "lora":
        model = prepare_for_finetuning(model, LoRAConfig(lora_rank=4, lora_dropout=0.1, lora_target_modules=["q_proj", "v_proj"]), "cpu")
    config = LMTrainConfig(steps=args.steps, learning_rate=args.lr, warmup_steps=2, batch_size=8, grad_accum=2,
                           patience=50)
    runtime = LMRuntimeConfig(lm_device="cpu", eval_interval=3, checkpoint_interval=args.checkpoint_interval,
                              parallelism=args.parallelism)
    record = args.out / f"training-rank{rendezvous.rank}"  # per rank, so the test sees that only rank 0 writes

    def on_step(entry: dict) -> None:
        if entry["step"] == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    val = counting_sequences(12, seed=1, stride=args.val_stride)
    result = train_causal_lm(model, counting_sequences(48), val, config, runtime, record, progress=on_step)
    weights = full_trainable_state(model)
    reports = args.out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"rank{rendezvous.rank}.json").write_text(json.dumps({"losses": [e["loss"] for e in result.history]}))
    if rendezvous.primary:
        save_file({name: tensor.contiguous() for name, tensor in weights.items()},
                  str(args.out / "weights.safetensors"))
        (args.out / "result.json").write_text(json.dumps({
            "history": result.history, "resumed_from_step": result.resumed_from_step, "steps_run": result.steps_run,
            "best_step": result.best_step, "best_val_loss": result.best_val_loss}))
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
