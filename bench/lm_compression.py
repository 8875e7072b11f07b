"""LM compression on the demo's fine-tuned model and on one about 5x larger, both built and trained here.

Each model is built and trained as lm-pretrain-finetune does it (lm-data -> lm-pretrain of scratch:tiny or
scratch:small with the run's defaults -> LoRA lm-finetune, merged), then the lm-compress step itself runs every
candidate through its one harness (each opened from its saved directory through kubeforge.lm.inference; fixed
threads; interleaved, re-warmed rounds). The gate is opened wide so every candidate's figures are reported; the
checks below are computed from the step's own compression.json.

    python -m bench.lm_compression [--sizes tiny,small] [--rounds 5] [--workdir DIR]
Targets (each model): an int8 path >= 3.5x smaller than fp32 with <= 5 % perplexity increase; the best CPU path
>= 2x the decode tokens/s of torch fp32 with KV cache at batch 1 with greedy agreement >= 0.9; a student with <= 50 %
of the parameters within 15 % of the teacher's perplexity; dropping 25 % of the layers decodes >= 1.25x faster
(its perplexity change reported).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench._harness import write
from kubeforge.compression.lm_step import lm_compress_step
from kubeforge.config import LMCompressConfig, RunConfig
from kubeforge.lm import steps

LOSSLESS_PATHS = ("int8-weight", "int4-weight", "onnx", "onnx-int8")  # same weights, other kernels or precision
# The student must hold <= 50 % of the teacher's parameters; the tied 2048-entry embedding is a large share of these
# small models, so the student is narrower as well as shallower.
STUDENTS = {"tiny": {"student_layers": 2, "student_hidden_size": 80}, "small": {"student_layers": 2,
                                                                              "student_hidden_size": 192}}
METHODS = ["int8-weight", "int4-weight", "onnx", "onnx-int8", "distill", "prune-layers", "prune-layers+onnx-int8"]


def build_model(size: str, root: Path, config: RunConfig) -> Path:
    """lm-data -> lm-pretrain -> lm-finetune (LoRA, merged), reused when ``root`` already has it."""
    finetuned = root / f"{size}-finetuned"
    if (finetuned / "merged" / "config.json").is_file():
        return finetuned
    data = root / "data"
    if not (data / "stats.json").is_file():
        steps.lm_data_step(config.lm_data, data)
    sized = config.model_copy(update={"lm_model": config.lm_model.model_copy(update={"base_model": f"scratch:{size}"})})
    started = time.perf_counter()
    steps.pretrain_step(data, root / f"{size}-pretrained", sized.lm_model, sized.lm_data, sized.pretrain,
                        sized.lm_runtime, progress=False)
    steps.finetune_step(data, finetuned, sized.lm_model, sized.lm_data, sized.finetune, sized.lm_runtime, sized.lora,
                        base_dir=root / f"{size}-pretrained", progress=False)
    print(f"{size}: pre-trained and fine-tuned in {time.perf_counter() - started:.0f} s", flush=True)
    return finetuned


def checks(report: dict) -> dict:
    base = report["baseline"]
    rows = {m["name"]: m for m in report["candidates"]}
    int8 = [m for m in rows.values() if m["name"] in ("int8-weight", "onnx-int8")]
    best_int8 = max(int8, key=lambda m: (m["perplexity_increase_pct"] <= 5, m["size_ratio"]))
    fast = [m for m in rows.values() if m["name"] in LOSSLESS_PATHS and m["greedy_agreement"] >= 0.9]
    best = max(fast, key=lambda m: m["decode_tokens_s_b1"]) if fast else None
    student, pruned = rows["distill"], rows["prune-layers"]
    student_ratio = student["perplexity"] / base["perplexity"]
    figures = {
        "best_int8_path": best_int8["name"],
        "int8_size_ratio (>= 3.5)": best_int8["size_ratio"],
        "int8_perplexity_increase_pct (<= 5)": best_int8["perplexity_increase_pct"],
        "best_cpu_path": best["name"] if best else None,
        "best_cpu_decode_speedup_b1 (>= 2)": round(best["decode_tokens_s_b1"] / base["decode_tokens_s_b1"], 3)
        if best else None,
        "best_cpu_greedy_agreement (>= 0.9)": best["greedy_agreement"] if best else None,
        "student_parameter_share (<= 0.5)": student["parameter_share"],
        "student_perplexity_ratio (<= 1.15)": round(student_ratio, 4),
        "pruned_decode_speedup_b1 (>= 1.25)": round(pruned["decode_tokens_s_b1"] / base["decode_tokens_s_b1"], 3),
        "pruned_perplexity_increase_pct (reported)": pruned["perplexity_increase_pct"],
        "pruned_layer_notes": pruned["notes"][0],
    }
    figures["meets_targets"] = {
        "int8": best_int8["size_ratio"] >= 3.5 and best_int8["perplexity_increase_pct"] <= 5,
        "best_cpu_path": bool(best) and best["decode_tokens_s_b1"] / base["decode_tokens_s_b1"] >= 2,
        "student": student["parameter_share"] <= 0.5 and student_ratio <= 1.15,
        "pruning": pruned["decode_tokens_s_b1"] / base["decode_tokens_s_b1"] >= 1.25}
    return figures


def summary(report: dict) -> list[dict]:
    keys = ("name", "kind", "precision", "size_bytes", "size_ratio", "parameters", "parameter_share", "perplexity",
            "perplexity_increase_pct", "greedy_agreement", "decode_tokens_s_b1", "decode_tokens_s_b8",
            "ms_per_token_b1", "ttft_ms", "build_seconds", "notes")
    return [{key: m[key] for key in keys} for m in [report["baseline"], *report["candidates"]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for training and measuring")
    parser.add_argument("--distill-steps", type=int, default=400)
    parser.add_argument("--heal-steps", type=int, default=40)
    parser.add_argument("--workdir", default="", help="keep the trained models here (reused on the next run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lm-compression-"))
    root.mkdir(parents=True, exist_ok=True)
    config = RunConfig()
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    try:
        for size in args.sizes.split(","):
            finetuned = build_model(size, root, config)
            settings = LMCompressConfig(
                lm_compress_methods=METHODS, max_perplexity_increase=1000.0, min_greedy_agreement=0.0,
                lm_objective="latency", lm_distill_steps=args.distill_steps, heal_steps=args.heal_steps,
                prune_layer_fraction=0.25, lm_bench_rounds=args.rounds, lm_bench_threads=args.threads,
                int4_group_size=16 if size == "small" else 32, **STUDENTS[size])
            started = time.perf_counter()
            report = lm_compress_step(root / "data", finetuned, root / f"{size}-compressed", settings,
                                      config.lm_data, config.lm_runtime)
            print(f"{size}: compress step {time.perf_counter() - started:.0f} s", flush=True)
            results[size] = {"model": f"scratch:{size} pre-trained {config.pretrain.steps} steps, LoRA fine-tuned "
                                      f"{config.finetune.steps} steps (merged), as lm-pretrain-finetune",
                             "checks": checks(report), "candidates": summary(report),
                             "workload": report["workload"], "environment": report["environment"],
                             "settings": settings.model_dump(), "compress_step_seconds": round(
                                 time.perf_counter() - started, 1)}
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    sizes = list(results)
    if len(sizes) > 1:
        first, second = (results[s]["candidates"][0]["parameters"] for s in sizes[:2])
        results["size_ratio_of_the_models"] = round(second / first, 2)
    command = "python -m bench.lm_compression " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in ("", None))
    write("lm_compression", {"results": results, "load_average_1_5_15": {"before": load_before,
                                                                          "after": os.getloadavg()},
                             "shared_machine": "2 cores shared with other engineers' jobs while this ran"},
          command=command)


if __name__ == "__main__":
    main()
