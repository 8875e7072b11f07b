"""Causal-LM training: kubeforge's loop vs a bare hand-written transformers loop, and LoRA's footprint.

Both loops train the same scratch Llama (same initial weights, batch, sequence length, AdamW with warm-up + cosine,
gradient clipping, fp32 on CPU) on the same packed pydoc corpus, and both run a validation pass at the same
interval; kubeforge's loop additionally writes resumable checkpoints, keeps the best weights and tracks early
stopping — that overhead is what the ratio measures. Runs are interleaved (A, B, A, B, ...) and medians reported.

    python -m bench.lm_training [--steps 40] [--repeats 3]
Targets: kubeforge tokens/s >= 0.95 x the bare loop; LoRA r=8 on q_proj/v_proj trains <= 1 % of the parameters.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bench._harness import interleaved, median, write
from kubeforge.config import LMModelConfig, LMRuntimeConfig, LMTrainConfig, LoRAConfig
from kubeforge.lm.corpus import pydoc_topics
from kubeforge.lm.sequences import pack_documents
from kubeforge.lm.sources import build_scratch_model, load_causal_lm
from kubeforge.lm.training import lr_factor, train_causal_lm, trainable_parameters

BATCH, LENGTH, EVAL_INTERVAL = 16, 128, 10


def bare_loop(model, train, val, config: LMTrainConfig) -> None:
    """What an engineer writes by hand around transformers: the model's own loss, no checkpoints, no history."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda done: lr_factor(done + 1, config.warmup_steps, config.steps))
    generator = torch.Generator().manual_seed(0)
    for step in range(1, config.steps + 1):
        model.train()
        rows = torch.randint(len(train.input_ids), (config.batch_size,), generator=generator)
        loss = model(input_ids=train.input_ids[rows], attention_mask=train.attention_mask[rows],
                     labels=train.labels[rows]).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % EVAL_INTERVAL == 0 or step == config.steps:
            model.eval()
            with torch.inference_mode():
                for start in range(0, len(val.input_ids), config.batch_size):
                    model(input_ids=val.input_ids[start:start + config.batch_size],
                          attention_mask=val.attention_mask[start:start + config.batch_size],
                          labels=val.labels[start:start + config.batch_size])


def lora_footprint(preset: str, texts: list[str], workdir: Path) -> dict:
    from kubeforge.lm.lora import prepare_for_finetuning, save_finetuned

    source = build_scratch_model(preset, workdir / preset, texts, LMModelConfig(base_model=f"scratch:{preset}"))
    model, tokenizer = load_causal_lm(source)
    lora = LoRAConfig(lora_rank=8, lora_target_modules=["q_proj", "v_proj"], merge_adapter=False)
    tuned = prepare_for_finetuning(model, lora, "cpu")
    trainable, total = trainable_parameters(tuned)
    written = save_finetuned(tuned, tokenizer, workdir / f"{preset}-tuned", lora)
    adapter = Path(written["adapter"]) / "adapter_model.safetensors"
    return {"preset": preset, "parameters": total, "trainable": trainable,
            "trainable_percent": round(100 * trainable / total, 3), "adapter_bytes": adapter.stat().st_size,
            "model_bytes": (source / "model.safetensors").stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    texts = [d.text for d in pydoc_topics()]
    config = LMTrainConfig(steps=args.steps, learning_rate=3e-3, warmup_steps=4, batch_size=BATCH, patience=1000)
    runtime = LMRuntimeConfig(lm_device="cpu", eval_interval=EVAL_INTERVAL, checkpoint_interval=EVAL_INTERVAL)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source = build_scratch_model(args.preset, workdir / "source", texts,
                                     LMModelConfig(base_model=f"scratch:{args.preset}", context_length=LENGTH))
        _, tokenizer = load_causal_lm(source)
        documents = pydoc_topics()
        train, val = pack_documents(documents[8:], tokenizer, LENGTH), pack_documents(documents[:8], tokenizer, LENGTH)
        runs = iter(range(1_000_000))

        def kubeforge_loop() -> float:
            model, _ = load_causal_lm(source)
            started = time.perf_counter()
            train_causal_lm(model, train, val, config, runtime, workdir / f"record-{next(runs)}", progress=False)
            return time.perf_counter() - started

        def bare() -> float:
            model, _ = load_causal_lm(source)
            started = time.perf_counter()
            bare_loop(model, train, val, config)
            return time.perf_counter() - started

        kubeforge_loop(), bare()  # warm-up: first-call allocations and kernel selection
        timings = interleaved({"kubeforge": kubeforge_loop, "bare": bare}, args.repeats)
        tokens = args.steps * BATCH * LENGTH
        rates = {name: tokens / median(seconds) for name, seconds in timings.items()}
        footprints = [lora_footprint(preset, texts, workdir) for preset in ("tiny", "small", "base")]
    write("lm_training", {
        "model": {"preset": args.preset, "batch": BATCH, "sequence_length": LENGTH, "steps": args.steps,
                  "threads": torch.get_num_threads()},
        "tokens_per_second": {name: round(rate, 1) for name, rate in rates.items()},
        "seconds": timings, "ratio": round(rates["kubeforge"] / rates["bare"], 3), "target_ratio": 0.95,
        "load_average": os.getloadavg(), "lora_r8_q_v": footprints},
        command=f"python -m bench.lm_training --steps {args.steps} --repeats {args.repeats} --preset {args.preset}")


if __name__ == "__main__":
    main()
