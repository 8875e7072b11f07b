"""The language-model pipeline steps as plain functions over directories, like kubeforge.steps for classifiers.

A KFP component is one call to one of these; tests and benchmarks call them directly. Every model directory a step
writes is a plain Hugging Face directory (config.json, model.safetensors, tokenizer files) plus a ``training/``
record, so the next step, the service and `transformers` itself can all open it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kubeforge.config import LMDataConfig, LMModelConfig, LMRuntimeConfig, LMTrainConfig, LoRAConfig

TRAINING_RECORD = "training"
RESULT_FILE = "result.json"
SOURCE_DIR = ".source"  # where a fetched or scratch-built base model lands inside a step's output
CORPUS, FINETUNE = "corpus", "finetune"


def lm_data_step(config: LMDataConfig, data_dir: str | Path, *, need_corpus: bool = True) -> dict[str, Any]:
    from kubeforge.lm.corpus import prepare_lm_data

    return prepare_lm_data(config, Path(data_dir), need_corpus=need_corpus)


def data_metrics(stats: dict[str, Any]) -> dict[str, int]:
    """Counts for the KFP UI: documents/examples and characters of each split."""
    return {f"{part}_{split}_{key}": value for part in ("corpus", "finetune") if part in stats
            for split in ("train", "heldout") for key, value in stats[part][split].items() if isinstance(value, int)}


def _device(runtime: LMRuntimeConfig):
    """The step's device; on CPU also its intra-op thread count (oversubscribed cores cost far more than they add)."""
    import torch

    from kubeforge.training import select_device

    device = select_device(runtime.lm_device)
    if device.type == "cpu" and runtime.cpu_threads:
        torch.set_num_threads(runtime.cpu_threads)
    return device


def _load_base(source: str, workdir: Path, model_config: LMModelConfig, data_dir: Path, seed: int):
    """Resolve ``source`` (the one resolver: path, hf://, fsspec, pvc://, scratch:) and open it."""
    from kubeforge.lm.corpus import read_documents
    from kubeforge.lm.sources import load_causal_lm, resolve_model_source

    corpus_file = data_dir / CORPUS / "train.jsonl"
    corpus = ([d.text for d in read_documents(corpus_file)] if source.startswith("scratch:") and corpus_file.exists()
              else None)
    directory = resolve_model_source(source, workdir, corpus=corpus, model_config=model_config, seed=seed)
    return (*load_causal_lm(directory), directory)


def _save_result(record: Path, result: Any, **extra: Any) -> dict[str, Any]:
    summary = {**asdict(result), **extra}
    record.mkdir(parents=True, exist_ok=True)
    (record / RESULT_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def load_lm_result(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / TRAINING_RECORD / RESULT_FILE).read_text())


def pretrain_step(data_dir: str | Path, model_dir: str | Path, model_config: LMModelConfig, data: LMDataConfig,
                  train: LMTrainConfig, runtime: LMRuntimeConfig, *, progress: bool = True) -> dict[str, Any]:
    """Pre-train (or continue pre-training) on the packed corpus; resumes from the record's checkpoint."""
    from kubeforge.lm.corpus import read_documents
    from kubeforge.lm.sequences import check_max_length, pack_documents
    from kubeforge.lm.sources import model_context_length
    from kubeforge.lm.training import train_causal_lm
    from kubeforge.training import set_seed

    data_dir, model_dir = Path(data_dir), Path(model_dir)
    set_seed(runtime.lm_seed)
    model, tokenizer, _ = _load_base(model_config.base_model, model_dir / SOURCE_DIR, model_config, data_dir,
                                     runtime.lm_seed)
    check_max_length(data.max_length, model_context_length(model))
    train_batches = pack_documents(read_documents(data_dir / CORPUS / "train.jsonl"), tokenizer, data.max_length)
    val_batches = pack_documents(read_documents(data_dir / CORPUS / "heldout.jsonl"), tokenizer, data.max_length)
    model.to(_device(runtime))
    result = train_causal_lm(model, train_batches, val_batches, train, runtime, model_dir / TRAINING_RECORD,
                             progress=progress)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    shutil.rmtree(model_dir / SOURCE_DIR, ignore_errors=True)
    return _save_result(model_dir / TRAINING_RECORD, result, base_model=model_config.base_model,
                        train_data=train_batches.stats, heldout_data=val_batches.stats)


def finetune_step(data_dir: str | Path, out_dir: str | Path, model_config: LMModelConfig, data: LMDataConfig,
                  finetune: LMTrainConfig, runtime: LMRuntimeConfig, lora: LoRAConfig, *,
                  base_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``base_dir`` (an earlier step's model) or the resolved ``base_model`` on the fine-tuning set.

    Writes ``adapter/`` (LoRA) and/or ``merged/`` (a plain model), and the training record.
    """
    from kubeforge.lm.corpus import read_examples
    from kubeforge.lm.lora import prepare_for_finetuning, save_finetuned
    from kubeforge.lm.sequences import check_max_length, encode_examples
    from kubeforge.lm.sources import load_causal_lm, model_context_length
    from kubeforge.lm.training import train_causal_lm
    from kubeforge.training import set_seed

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    set_seed(runtime.lm_seed)
    if base_dir is not None:
        model, tokenizer = load_causal_lm(base_dir)
    else:
        model, tokenizer, _ = _load_base(model_config.base_model, out_dir / SOURCE_DIR, model_config, data_dir,
                                         runtime.lm_seed)
    check_max_length(data.max_length, model_context_length(model))
    train_batches = encode_examples(read_examples(data_dir / FINETUNE / "train.jsonl"), tokenizer, data.max_length)
    val_batches = encode_examples(read_examples(data_dir / FINETUNE / "heldout.jsonl"), tokenizer, data.max_length)
    device = _device(runtime)
    model = prepare_for_finetuning(model.to(device), lora, device)
    result = train_causal_lm(model, train_batches, val_batches, finetune, runtime, out_dir / TRAINING_RECORD,
                             progress=progress)
    written = save_finetuned(model, tokenizer, out_dir, lora)
    shutil.rmtree(out_dir / SOURCE_DIR, ignore_errors=True)
    return _save_result(out_dir / TRAINING_RECORD, result, base_model=model_config.base_model,
                        finetune_method=lora.finetune_method, outputs=written,
                        train_data=train_batches.stats, heldout_data=val_batches.stats)


def finetuned_model_dir(out_dir: str | Path) -> Path:
    """The directory a served or evaluated fine-tune is opened from: the merged model."""
    return Path(out_dir) / "merged"


def _open_finetuned(out_dir: Path, base_dir: Path):
    from kubeforge.lm.sources import load_adapter_model, load_causal_lm

    merged = finetuned_model_dir(out_dir)
    if (merged / "config.json").exists():
        return load_causal_lm(merged)
    _, tokenizer = load_causal_lm(base_dir)
    return load_adapter_model(out_dir / "adapter", base_dir), tokenizer


def evaluate_lm_step(data_dir: str | Path, finetuned_dir: str | Path, evaluation_file: str | Path,
                     model_config: LMModelConfig, data: LMDataConfig, runtime: LMRuntimeConfig, *,
                     base_dir: str | Path | None = None, workdir: str | Path | None = None) -> dict[str, Any]:
    """Base and fine-tuned model side by side on the held-out fine-tuning set (and corpus, when there is one):
    loss, perplexity, next-token accuracy, tokens/s, and greedy completions of fixed held-out prompts."""
    from kubeforge.lm.corpus import read_documents, read_examples
    from kubeforge.lm.evaluation import evaluate_causal_lm, greedy_completions
    from kubeforge.lm.sequences import encode_examples, pack_documents, prompts_for_evaluation

    data_dir, finetuned_dir = Path(data_dir), Path(finetuned_dir)
    scratch = Path(workdir or Path(evaluation_file).parent / ".evaluate-source")
    if base_dir is None:
        base, tokenizer, base_dir = _load_base(model_config.base_model, scratch, model_config, data_dir,
                                               runtime.lm_seed)
    else:
        from kubeforge.lm.sources import load_causal_lm

        base, tokenizer = load_causal_lm(base_dir)
    tuned, _ = _open_finetuned(finetuned_dir, Path(base_dir))
    device = _device(runtime)
    examples = read_examples(data_dir / FINETUNE / "heldout.jsonl")
    heldout = encode_examples(examples, tokenizer, data.max_length)
    corpus_file = data_dir / CORPUS / "heldout.jsonl"
    corpus = pack_documents(read_documents(corpus_file), tokenizer, data.max_length) if corpus_file.exists() else None
    prompts = prompts_for_evaluation(examples, data.eval_prompts, tokenizer)
    result: dict[str, Any] = {"max_new_tokens": data.max_new_tokens, "heldout_examples": len(examples)}
    completions: dict[str, list[str]] = {}
    for name, model in (("base", base), ("finetuned", tuned)):
        model.to(device).eval()
        result[name] = evaluate_causal_lm(model, heldout)
        if corpus is not None:
            result[name]["corpus_perplexity"] = evaluate_causal_lm(model, corpus)["perplexity"]
        completions[name] = greedy_completions(model, tokenizer, [p for p, _ in prompts], data.max_new_tokens)
    result["completions"] = [{"prompt": prompt, "reference": reference, "base": completions["base"][i],
                              "finetuned": completions["finetuned"][i]} for i, (prompt, reference) in enumerate(prompts)]
    result["perplexity_ratio"] = result["finetuned"]["perplexity"] / result["base"]["perplexity"]
    result["beats_base"] = result["perplexity_ratio"] < 1.0
    Path(evaluation_file).parent.mkdir(parents=True, exist_ok=True)
    Path(evaluation_file).write_text(json.dumps(result, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def lm_report_step(data_dir: str | Path, finetuned_dir: str | Path, evaluation_file: str | Path,
                   report_file: str | Path, *, pretrained_dir: str | Path | None = None,
                   compressed_dir: str | Path | None = None, title: str = "kubeforge language-model run") -> None:
    from kubeforge.lm.report import lm_sections
    from kubeforge.report import render_report

    stats = json.loads((Path(data_dir) / "stats.json").read_text())
    pretrained = load_lm_result(pretrained_dir) if pretrained_dir is not None else None
    compression = (json.loads((Path(compressed_dir) / "compression.json").read_text())
                   if compressed_dir is not None else None)
    sections = lm_sections(stats, pretrained, load_lm_result(finetuned_dir),
                           json.loads(Path(evaluation_file).read_text()), compression)
    Path(report_file).write_text(render_report(title, sections))


def summarise_lm_run(run_dir: str | Path) -> dict[str, Any]:
    """The headline of a language-model run for summary.json, `kubeforge run`'s table and `kubeforge runs`."""
    run_dir = Path(run_dir)
    finetuned = sorted(run_dir.glob("lm-finetune*/finetuned_model"))
    pretrained = sorted(run_dir.glob("lm-pretrain*/pretrained_model"))
    evaluation = sorted(run_dir.glob("lm-evaluate*/lm_evaluation"))
    training: dict[str, Any] = {}
    for label, found in (("pretrain", pretrained), ("finetune", finetuned)):
        if found:
            record = load_lm_result(found[0])
            training.update({f"{label}_steps": record["steps_run"], f"{label}_best_val_loss": record["best_val_loss"],
                             f"{label}_tokens_per_second": record["tokens_per_second"]})
            training[f"{label}_trainable_parameters"] = record["trainable_parameters"]
            training["parameters"] = record["total_parameters"]
            training["device"] = record["device"]
    test: dict[str, Any] = {}
    if evaluation:
        scores = json.loads(evaluation[0].read_text())
        test = {"perplexity": scores["finetuned"]["perplexity"], "base_perplexity": scores["base"]["perplexity"],
                "perplexity_ratio": scores["perplexity_ratio"],
                "next_token_accuracy": scores["finetuned"]["next_token_accuracy"],
                "base_next_token_accuracy": scores["base"]["next_token_accuracy"]}
    return {"training": training, "test": test, "compression": _compression_summary(run_dir)}


def _compression_summary(run_dir: Path) -> dict[str, Any] | None:
    reports = sorted(run_dir.glob("lm-compress*/compressed_model/compression.json"))
    if not reports:
        return None
    report = json.loads(reports[0].read_text())
    chosen = next((c for c in report.get("candidates", []) if c.get("name") == report.get("chosen")), None)
    summary = {"chosen": report.get("chosen"), "gate": report.get("gate"), "objective": report.get("objective")}
    if chosen:
        summary.update({key: chosen[key] for key in ("perplexity", "perplexity_increase_pct", "greedy_agreement",
                                                      "size_ratio", "decode_tokens_s_b1") if key in chosen})
    return summary


def training_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The scalars the Kubeflow UI shows for a training step."""
    return {"steps_run": result["steps_run"], "best_step": result["best_step"],
            "best_val_loss": round(result["best_val_loss"], 5), "tokens_per_second": round(result["tokens_per_second"], 1),
            "trainable_parameters": result["trainable_parameters"], "total_parameters": result["total_parameters"]}


def evaluation_metrics(result: dict[str, Any]) -> dict[str, float]:
    metrics = {f"{name}_{metric}": round(float(result[name][metric]), 5)
               for name in ("base", "finetuned") for metric in ("perplexity", "next_token_accuracy", "loss")}
    metrics["perplexity_ratio"] = round(result["perplexity_ratio"], 5)
    return metrics


def evaluation_markdown(result: dict[str, Any]) -> str:
    lines = ["# Language-model evaluation", "",
             f"Held-out fine-tuning examples: {result['heldout_examples']}; fine-tuned / base perplexity "
             f"**{result['perplexity_ratio']:.3f}** ({'beats' if result['beats_base'] else 'does not beat'} the base).",
             "", "| metric | base | fine-tuned |", "| --- | --- | --- |"]
    for metric in ("perplexity", "loss", "next_token_accuracy", "tokens_per_second", "corpus_perplexity"):
        if metric in result["base"]:
            lines.append(f"| {metric} | {result['base'][metric]:.4g} | {result['finetuned'][metric]:.4g} |")
    if result["completions"]:
        lines += ["", "| prompt | fine-tuned completion |", "| --- | --- |"]
        for sample in result["completions"]:
            cells = [sample[key].replace("|", "\\|").replace("\n", "⏎ ") for key in ("prompt", "finetuned")]
            lines.append(f"| `{cells[0]}` | {cells[1]} |")
    return "\n".join(lines) + "\n"
