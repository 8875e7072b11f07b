"""FSDP2 on two ranks vs DDP on two ranks: the same Llama, data, steps and global batch through kubeforge's LM loop
(kubeforge.lm.training under torchrun, gloo on CPU), full fine-tuning so every weight has a gradient and AdamW state.

Memory is counted from the tensors each rank holds after every optimiser step (when parameters, gradients and both
AdamW moments all exist): for FSDP a DTensor's local shard, for DDP the whole tensor; the per-rank figure is the
largest over steps. DDP's gradient buckets (another copy of the gradients) are not counted, which flatters DDP.
FSDP also all-gathers one unit (a decoder layer, or the root's embeddings) at a time during forward and backward;
``fsdp_transient_bytes`` bounds that (the largest unit's full parameters and gradients) and the conservative ratio
adds it. The optimiser is the loop's own AdamW, seen by subclassing it in this process.

    python -m bench.lm_fsdp [--preset base] [--steps 6]
Targets: FSDP bytes per rank <= 0.6 x DDP's; loss curves within 1 % step by step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._harness import versions, write

TARGET_RATIO, TARGET_LOSS_DIFF = 0.6, 0.01


def _local_bytes(tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def _held_bytes(model, optimizer) -> dict[str, int]:
    parameters = list(model.parameters())
    state = [value for entry in optimizer.state.values() for value in entry.values()
             if hasattr(value, "numel") and value.ndim > 0]
    return {"parameters": sum(_local_bytes(p) for p in parameters),
            "gradients": sum(_local_bytes(p.grad) for p in parameters if p.grad is not None),
            "optimizer_state": sum(_local_bytes(t) for t in state)}


def _largest_unit_bytes(model) -> int:
    """Full size of the biggest FSDP unit's own parameters (+ their gradients): what is all-gathered at once. The
    loop shards every module the model names in ``_no_split_modules`` (its decoder layers), then the root."""
    kinds = set(model._no_split_modules)
    layers = [module for module in model.modules() if type(module).__name__ in kinds]
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    root = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in in_layers)
    biggest = max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
    return 2 * max(root, biggest)


def rank_main(model_dir: Path, out: Path, steps: int, batch_size: int, max_length: int) -> None:
    """One rank of one run: trains and writes OUT/rank<r>.json (bytes held, losses)."""
    import torch

    from kubeforge.config import LMRuntimeConfig, LMTrainConfig
    from kubeforge.distributed.worker import Rendezvous, join_process_group, leave_process_group
    from kubeforge.lm.corpus import pydoc_topics
    from kubeforge.lm.sequences import pack_documents
    from kubeforge.lm.sources import load_causal_lm
    from kubeforge.lm.training import train_causal_lm
    from kubeforge.training import set_seed

    parallelism = out.name
    rendezvous = Rendezvous.from_env()
    join_process_group(rendezvous, "gloo")
    captured: list[torch.optim.Optimizer] = []

    class SeenAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured.append(self)

    torch.optim.AdamW = SeenAdamW  # the loop looks the class up when it builds its optimiser
    set_seed(0)
    model, tokenizer = load_causal_lm(model_dir)
    largest_unit = _largest_unit_bytes(model)
    documents = pydoc_topics()
    train = pack_documents(documents[:60], tokenizer, max_length)
    heldout = pack_documents(documents[60:64], tokenizer, max_length)
    config = LMTrainConfig(steps=steps, learning_rate=1e-3, warmup_steps=1, batch_size=batch_size, patience=100)
    runtime = LMRuntimeConfig(lm_device="cpu", eval_interval=steps, checkpoint_interval=10 * steps,
                              parallelism=parallelism)
    peak: dict[str, int] = {}

    def measure(record: dict) -> None:
        held = _held_bytes(model, captured[-1])
        if sum(held.values()) > sum(peak.values()):
            peak.update(held)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as record:
        result = train_causal_lm(model, train, heldout, config, runtime, Path(record), resume=False,
                                 progress=measure)
    report = {"rank": rendezvous.rank, "bytes": peak, "total_bytes": sum(peak.values()),
              "losses": [entry["loss"] for entry in result.history], "seconds": time.perf_counter() - started,
              "parameters": result.total_parameters, "train_sequences": len(train), "largest_unit_bytes": largest_unit}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rendezvous.rank}.json").write_text(json.dumps(report))
    leave_process_group()


def run(parallelism: str, model_dir: Path, root: Path, args: argparse.Namespace) -> list[dict]:
    out = root / parallelism
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node=2", "--no-python",
               sys.executable, "-m", "bench.lm_fsdp", "--rank", str(model_dir), str(out), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{parallelism} run failed:\n{done.stderr[-4000:]}")
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base", help="scratch preset (kubeforge.lm.sources.SCRATCH_PRESETS)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rank", nargs=2, type=Path, metavar=("MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank:
        rank_main(*args.rank, args.steps, args.batch_size, args.max_length)
        return 0

    from kubeforge.config import LMModelConfig
    from kubeforge.lm.corpus import pydoc_topics
    from kubeforge.lm.sources import build_scratch_model

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubeforge-fsdp-bench-") as scratch:
        root = Path(scratch)
        model_dir = build_scratch_model(args.preset, root / "model", [d.text for d in pydoc_topics()],
                                        LMModelConfig(tokenizer_vocab=2048, context_length=args.max_length), seed=0)
        reports = {name: run(name, model_dir, root, args) for name in ("ddp", "fsdp")}
    ddp_bytes = max(r["total_bytes"] for r in reports["ddp"])
    fsdp_bytes = max(r["total_bytes"] for r in reports["fsdp"])
    transient = reports["fsdp"][0]["largest_unit_bytes"]
    ddp_losses, fsdp_losses = reports["ddp"][0]["losses"], reports["fsdp"][0]["losses"]
    loss_diff = max(abs(f - d) / abs(d) for d, f in zip(ddp_losses, fsdp_losses))
    ratio = fsdp_bytes / ddp_bytes
    write("lm_fsdp", {
        "workload": (f"scratch:{args.preset} Llama, {reports['ddp'][0]['parameters']:,} parameters, full fine-tuning, "
                     f"2 ranks (torchrun, gloo, CPU), {args.steps} steps of {args.batch_size} x {args.max_length} "
                     f"tokens (global batch), AdamW fp32, pydoc topics"),
        "per_rank_bytes": {name: [r["bytes"] | {"total": r["total_bytes"]} for r in ranks]
                           for name, ranks in reports.items()},
        "ddp_bytes_per_rank": ddp_bytes, "fsdp_bytes_per_rank": fsdp_bytes,
        "fsdp_transient_bytes": transient,
        "memory_ratio_fsdp_over_ddp": round(ratio, 4),
        "memory_ratio_with_transient": round((fsdp_bytes + transient) / ddp_bytes, 4),
        "losses": {"ddp": ddp_losses, "fsdp": fsdp_losses},
        "max_relative_loss_difference": loss_diff,
        "seconds": {name: max(r["seconds"] for r in ranks) for name, ranks in reports.items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "targets": {"memory_ratio<=0.6": ratio <= TARGET_RATIO, "loss_within_1%": loss_diff <= TARGET_LOSS_DIFF},
        "lm_versions": versions("transformers", "peft"),
    }, "python -m bench.lm_fsdp " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0 if ratio <= TARGET_RATIO and loss_diff <= TARGET_LOSS_DIFF else 1


if __name__ == "__main__":
    sys.exit(main())
