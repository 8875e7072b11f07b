"""The lm-compress step: check every requested chain, build each candidate into its own directory, measure them all
beside the uncompressed model through the inference module, gate on perplexity and greedy agreement, choose by the
objective, and write the chosen directory (the one that was measured, byte for byte) with ``compression.json``.

The report has the classifier's shape (``baseline``, ``candidates``, ``chosen``, ``gate``, ``objective``,
``environment``, ``config``), so runs, tables and promotion read both alike.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kubeforge.compression.candidate import CompressionError
from kubeforge.compression.lm_bench import (AGREEMENT_TOKENS, DECODE_STEPS, TTFT_TOKENS, LMMeasurement, Workload,
                                            environment, measure_all, weight_files)
from kubeforge.compression.lm_candidates import (LMCandidate, LMContext, build_chain, chain_slug, save_lm_candidate,
                                                 validate_chains)
from kubeforge.config import LMCompressConfig, LMDataConfig, LMRuntimeConfig
from kubeforge.models import ModelError

REPORT_FILE = "compression.json"
BASELINE = "baseline (fp32)"
MIN_PROMPTS = 8
OBJECTIVES = {"size": lambda m: (m.size_bytes, -m.decode_tokens_s_b1),
              "latency": lambda m: (-m.decode_tokens_s_b1, m.size_bytes),
              "throughput": lambda m: (-m.decode_tokens_s_b8, m.size_bytes)}


def model_to_compress(model_dir: str | Path, workdir: Path, base_dir: str | Path | None = None) -> tuple[Path, str]:
    """The plain model directory to compress: a fine-tune's merged/, a plain directory, or a LoRA adapter merged
    into its base here (compression works on whole weights)."""
    from kubeforge.lm.sources import load_causal_lm

    model_dir = Path(model_dir)
    if (model_dir / "merged" / "config.json").is_file():
        return model_dir / "merged", "the fine-tune's merged model"
    if (model_dir / "config.json").is_file():
        return model_dir, "the model directory as given"
    adapter = model_dir / "adapter" if (model_dir / "adapter" / "adapter_config.json").is_file() else model_dir
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{model_dir}: neither a model (config.json), a fine-tune (merged/ or adapter/) nor an "
                         "adapter (adapter_config.json)")
    model, tokenizer = load_causal_lm(adapter, base_dir=Path(base_dir) if base_dir else None)
    merged = workdir / "merged-adapter"
    model.merge_and_unload().save_pretrained(merged, safe_serialization=True)
    tokenizer.save_pretrained(merged)
    return merged, "the LoRA adapter merged into its base"


def _workload(data_dir: Path, tokenizer: Any, data: LMDataConfig, context: int) -> tuple[Workload, Any, Any]:
    """(what every candidate is measured on, training rows, calibration rows) from the lm-data splits."""
    import torch

    from kubeforge.lm.corpus import read_documents, read_examples
    from kubeforge.lm.sequences import (IGNORE_INDEX, TokenBatches, check_max_length, encode_examples,
                                        pack_documents, prompts_for_evaluation)

    check_max_length(data.max_length, context)
    examples = read_examples(data_dir / "finetune" / "heldout.jsonl")
    heldout = encode_examples(examples, tokenizer, data.max_length)
    pairs = prompts_for_evaluation(examples, max(data.eval_prompts, MIN_PROMPTS), tokenizer)
    room = context - AGREEMENT_TOKENS
    encoded = [tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"] for prompt, _ in pairs]
    prompts = [(ids or [tokenizer.bos_token_id])[-room:] for ids in encoded]
    stream = heldout.input_ids[heldout.attention_mask.bool()].tolist()
    length = min(TTFT_TOKENS, context - 1)
    ttft_prompt = (stream * (length // max(1, len(stream)) + 1))[:length]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    parts = [encode_examples(read_examples(data_dir / "finetune" / "train.jsonl"), tokenizer, data.max_length)]
    corpus = data_dir / "corpus" / "train.jsonl"
    if corpus.is_file():
        parts.append(pack_documents(read_documents(corpus), tokenizer, data.max_length))
    width = max(part.input_ids.shape[1] for part in parts)

    def padded(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

    train = TokenBatches(torch.cat([padded(p.input_ids, pad) for p in parts]),
                         torch.cat([padded(p.attention_mask, 0) for p in parts]),
                         torch.cat([padded(p.labels, IGNORE_INDEX) for p in parts]))
    calibration = parts[0]
    workload = Workload(heldout=heldout, prompts=prompts, ttft_prompt=ttft_prompt, pad_id=int(pad),
                        eos_id=tokenizer.eos_token_id)
    return workload, train, calibration


def _gate(measurement: LMMeasurement, settings: LMCompressConfig) -> bool:
    return (measurement.perplexity_increase_pct <= settings.max_perplexity_increase
            and measurement.greedy_agreement >= settings.min_greedy_agreement)


def candidate_table(measurements: list[LMMeasurement]) -> str:
    lines = [f"{'candidate':<30} {'perplexity':>10} {'change %':>9} {'agree':>6} {'size x':>7} {'tok/s b1':>9} "
             f"{'tok/s b8':>9} {'TTFT ms':>8}"]
    lines += [f"{m.name:<30} {m.perplexity:>10.3f} {m.perplexity_increase_pct:>9.2f} {m.greedy_agreement:>6.3f} "
              f"{m.size_ratio:>7.2f} {m.decode_tokens_s_b1:>9.1f} {m.decode_tokens_s_b8:>9.1f} {m.ttft_ms:>8.2f}"
              for m in measurements]
    return "\n".join(lines)


def select(measurements: list[LMMeasurement], settings: LMCompressConfig) -> LMMeasurement:
    """The best candidate that passes both gates, by the objective; none passing names every candidate's figures."""
    for measurement in measurements:
        measurement.passed = _gate(measurement, settings)
    passing = [m for m in measurements if m.passed]
    if not passing:
        raise CompressionError(
            f"no candidate passed the LM gate (perplexity increase <= {settings.max_perplexity_increase} %, greedy "
            f"agreement >= {settings.min_greedy_agreement}):\n" + candidate_table(measurements))
    return min(passing, key=OBJECTIVES[settings.lm_objective])


def _copy_artifact(source: Path, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file():
            shutil.copy2(path, out_dir / path.name)
            copied.append(path.name)
    return copied


def lm_compress_step(data_dir: str | Path, model_dir: str | Path, out_dir: str | Path, settings: LMCompressConfig,
                     data: LMDataConfig, runtime: LMRuntimeConfig, *, base_dir: str | Path | None = None,
                     workdir: str | Path | None = None) -> dict[str, Any]:
    """Compress the fine-tuned (or given) model; ``out_dir`` receives the chosen directory and compression.json."""
    from kubeforge.lm.sources import load_causal_lm, model_context_length
    from kubeforge.training import set_seed

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    work = Path(workdir) if workdir is not None else out_dir.parent / f".{out_dir.name}-candidates"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        source, how = model_to_compress(model_dir, work, base_dir)
        model, tokenizer = load_causal_lm(source)
        model.eval()
        validate_chains(list(settings.lm_compress_methods), model.config, settings)
        set_seed(runtime.lm_seed)
        workload, train, calibration = _workload(data_dir, tokenizer, data, model_context_length(model))
        baseline = LMCandidate(BASELINE, model.config, model=model)
        context = LMContext(settings=settings, train=train, calibration=calibration, seed=runtime.lm_seed)
        directories: list[tuple[str, Path]] = [(BASELINE, source)]
        built: dict[str, tuple[LMCandidate, float]] = {}
        for index, chain in enumerate(settings.lm_compress_methods):
            candidate, seconds = build_chain(baseline, chain, context)
            directories.append((chain, save_lm_candidate(candidate, tokenizer, work / chain_slug(index, chain))))
            built[chain] = (candidate, seconds)
            candidate.model = candidate.onnx = None  # the directory is what gets measured; free the memory
        base, *measurements = measure_all(directories, workload, threads=settings.lm_bench_threads,
                                          rounds=settings.lm_bench_rounds)
        for measurement in measurements:
            candidate, seconds = built[measurement.name]
            measurement.notes = candidate.notes + [f"built in {seconds:.1f} s"]
            measurement.build_seconds = round(seconds, 2)
        report: dict[str, Any] = {
            "baseline": base.to_dict(), "candidates": [], "source": how,
            "max_perplexity_increase": settings.max_perplexity_increase,
            "min_greedy_agreement": settings.min_greedy_agreement, "objective": settings.lm_objective,
            "environment": environment(), "config": settings.model_dump(), "chosen": None, "gate": "failed",
            "workload": {"heldout_examples": len(workload.heldout), "heldout_loss_tokens": int(
                (workload.heldout.labels[:, 1:] != -100).sum()), "prompts": len(workload.prompts),
                "agreement_tokens": AGREEMENT_TOKENS, "decode_steps": DECODE_STEPS,
                "ttft_prompt_tokens": len(workload.ttft_prompt), "threads": settings.lm_bench_threads,
                "rounds": settings.lm_bench_rounds}, "artifact": None}
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            chosen = select(measurements, settings)
        except CompressionError:
            report["candidates"] = [m.to_dict() for m in measurements]
            (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
            raise
        chosen_dir = dict(directories)[chosen.name]
        files = _copy_artifact(chosen_dir, out_dir)
        report.update(candidates=[m.to_dict() for m in measurements], chosen=chosen.name, gate="passed",
                      artifact={"format": chosen.kind, "precision": chosen.precision, "files": files,
                                "weights": [p.name for p in weight_files(out_dir)], "sha256": chosen.sha256})
        (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_lm_compression(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / REPORT_FILE).read_text())
