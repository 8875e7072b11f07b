"""The process ``torchrun`` starts on every node of a language-model job: ``python -m kubeforge.lm.worker``.

    torchrun --nproc-per-node 2 -m kubeforge.lm.worker --config W/lm-train.json --data W/data --base W/base \\
        --output W/model

Everything comes from the shared volume the pipeline made: the splits and the base model that ``lm-fetch`` resolved
there (``--data``, ``--base``: a Hugging Face directory, so the pods need neither network nor token) and the JSON
config of the LM sections the launcher wrote (``--config``). Every rank trains its share under FSDP2 or DDP
(``lm_runtime.parallelism``, see kubeforge.lm.training); rank 0 alone writes ``--output``: for fine-tuning the
directory ``kubeforge.lm.steps.finetune_step`` writes (adapter/ and/or merged/ plus training/), for pre-training a
plain model. The checkpoint lives in ``--output``/training/checkpoint, so a restarted job resumes there. Without
torchrun (no WORLD_SIZE) it trains in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from kubeforge.config import (ConfigError, LMDataConfig, LMModelConfig, LMRuntimeConfig, LMTrainConfig, LoRAConfig,
                              describe_validation_error)
from kubeforge.data import DataError
from kubeforge.models import ModelError

Task = Literal["finetune", "pretrain"]
TASKS: tuple[str, ...] = ("finetune", "pretrain")
DATA_PART = {"finetune": "finetune", "pretrain": "corpus"}  # the lm-data split each task trains on
SPLIT_FILES = ("train.jsonl", "heldout.jsonl")
_SECTIONS = {"lm_model": LMModelConfig, "lm_data": LMDataConfig, "train": LMTrainConfig,
             "lm_runtime": LMRuntimeConfig, "lora": LoRAConfig}


@dataclass(frozen=True)
class LMWorkerConfig:
    """What the launcher hands every rank: the task and the LM sections (``train`` is pretrain's or finetune's)."""

    task: Task
    lm_model: LMModelConfig
    lm_data: LMDataConfig
    train: LMTrainConfig
    lm_runtime: LMRuntimeConfig
    lora: LoRAConfig


def write_lm_worker_config(path: str | Path, config: LMWorkerConfig) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"task": config.task, **{name: getattr(config, name).model_dump() for name in _SECTIONS}}
    path.write_text(json.dumps(body, indent=2))
    return path


def read_lm_worker_config(path: str | Path) -> LMWorkerConfig:
    """Every problem is a ConfigError that names the file (and the setting)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"worker config {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"worker config {path} is not readable JSON: {exc}") from None
    allowed = {"task", *_SECTIONS}
    if not isinstance(raw, dict) or set(raw) - allowed:
        raise ConfigError(f"worker config {path} must be an object with the keys {', '.join(sorted(allowed))} only")
    if raw.get("task") not in TASKS:
        raise ConfigError(f"worker config {path}: task must be one of {', '.join(TASKS)}, not {raw.get('task')!r}")
    sections: dict[str, Any] = {}
    for name, model in _SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"worker config {path}: {name!r} must be an object")
        try:
            sections[name] = model(**values)
        except ValidationError as exc:
            raise ConfigError(f"worker config {path}, section {name}: {describe_validation_error(exc)}") from None
    return LMWorkerConfig(task=raw["task"], **sections)


def split_files(data_dir: str | Path, task: Task) -> tuple[Path, Path]:
    part = Path(data_dir) / DATA_PART[task]
    train, heldout = (part / name for name in SPLIT_FILES)
    return train, heldout


def check_inputs(config: LMWorkerConfig, data_dir: str | Path, base_dir: str | Path, world_size: int) -> Path:
    """Fail on this rank, before any rank waits on the others: splits present, base loadable, batch divisible."""
    from kubeforge.lm.sources import resolve_model_source

    for file in split_files(data_dir, config.task):
        if not file.is_file():
            raise DataError(f"{file} does not exist: the {config.task} split is missing from the volume (lm-fetch "
                            "writes it there before the job starts)")
    base = resolve_model_source(str(base_dir), Path(base_dir))  # a local directory: checked, used in place
    if config.train.batch_size < world_size:
        raise ConfigError(f"batch_size {config.train.batch_size} is smaller than the {world_size} ranks: every "
                          "rank needs at least one sequence of each micro-batch")
    return base


def resolve_lm_backend(backend: str, runtime: LMRuntimeConfig) -> str:
    import torch

    if backend not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"unknown backend {backend!r}; use auto, gloo or nccl")
    if backend == "auto":
        return "nccl" if runtime.lm_device != "cpu" and torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend 'nccl' needs CUDA, which this node does not have; use gloo")
    return backend


def _token_batches(config: LMWorkerConfig, data_dir: Path, tokenizer: Any) -> tuple[Any, Any]:
    from kubeforge.lm.corpus import read_documents, read_examples
    from kubeforge.lm.sequences import encode_examples, pack_documents

    train_file, heldout_file = split_files(data_dir, config.task)
    length = config.lm_data.max_length
    if config.task == "pretrain":
        return (pack_documents(read_documents(train_file), tokenizer, length),
                pack_documents(read_documents(heldout_file), tokenizer, length))
    return (encode_examples(read_examples(train_file), tokenizer, length),
            encode_examples(read_examples(heldout_file), tokenizer, length))


def _saving_lora(lora: LoRAConfig) -> LoRAConfig:
    """QLoRA trains on a 4-bit base; its adapter is saved (and merged) on the full-precision base."""
    return lora.model_copy(update={"finetune_method": "lora"}) if lora.finetune_method == "qlora" else lora


def _unsharded_copy(config: LMWorkerConfig, base: Path, weights: dict[str, Any]) -> Any:
    """The base rebuilt plainly on the CPU with the gathered trainable weights: what rank 0 saves after FSDP."""
    from kubeforge.lm.lora import prepare_for_finetuning
    from kubeforge.lm.sources import load_causal_lm

    model, _ = load_causal_lm(base)
    if config.task == "finetune":
        model = prepare_for_finetuning(model, _saving_lora(config.lora), "cpu")
    _, unexpected = model.load_state_dict(weights, strict=False)
    absent = sorted({name for name, p in model.named_parameters() if p.requires_grad} - set(weights))
    if unexpected or absent:
        raise ModelError(f"the gathered weights do not fit {base}: unknown {sorted(unexpected)[:3]}, missing "
                         f"{absent[:3]}")
    return model


def _save(config: LMWorkerConfig, model: Any, tokenizer: Any, output: Path) -> dict[str, Any]:
    if config.task == "pretrain":
        model.save_pretrained(output, safe_serialization=True)
        tokenizer.save_pretrained(output)
        return {}
    from kubeforge.lm.lora import save_finetuned

    return {"finetune_method": config.lora.finetune_method,
            "outputs": save_finetuned(model, tokenizer, output, _saving_lora(config.lora))}


def train_lm_distributed(config: LMWorkerConfig, data_dir: str | Path, base_dir: str | Path, output_dir: str | Path,
                         *, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train this rank's share; rank 0 writes the model directory and returns its summary ({} on other ranks)."""
    from kubeforge.lm.lora import prepare_for_finetuning
    from kubeforge.lm.sequences import check_max_length
    from kubeforge.lm.sources import load_causal_lm, model_context_length
    from kubeforge.lm.steps import RESULT_FILE, TRAINING_RECORD
    import torch

    from kubeforge.lm.training import full_trainable_state, train_causal_lm
    from kubeforge.training import process_group, select_device, set_seed

    rank, world = process_group()
    data_dir, base, output = Path(data_dir), Path(base_dir), Path(output_dir)
    set_seed(config.lm_runtime.lm_seed)  # the same seed on every rank: identical adapters before sharding
    model, tokenizer = load_causal_lm(base)
    check_max_length(config.lm_data.max_length, model_context_length(model))
    train, heldout = _token_batches(config, data_dir, tokenizer)
    device = select_device(config.lm_runtime.lm_device)
    if device.type == "cpu" and config.lm_runtime.cpu_threads:
        torch.set_num_threads(config.lm_runtime.cpu_threads)
    if config.task == "finetune":
        model = prepare_for_finetuning(model.to(device), config.lora, device)
    else:
        model.requires_grad_(True)
    result = train_causal_lm(model, train, heldout, config.train, config.lm_runtime, output / TRAINING_RECORD,
                             progress=progress or (lambda record: None))
    sharded = any(hasattr(parameter, "full_tensor") for parameter in model.parameters())
    weights = full_trainable_state(model) if sharded else {}  # a collective: every rank takes part
    if rank != 0:
        return {}
    plain = _unsharded_copy(config, base, weights) if sharded else model
    saved = _save(config, plain, tokenizer, output)
    summary = {**asdict(result), "base_model": config.lm_model.base_model, **saved, "world_size": world,
               "parallelism": config.lm_runtime.parallelism if world > 1 else "none",
               "train_data": train.stats, "heldout_data": heldout.stats}
    (output / TRAINING_RECORD / RESULT_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubeforge.lm.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="JSON file written by the launcher: task + LM sections")
    parser.add_argument("--data", required=True, help="lm-data splits on the shared volume")
    parser.add_argument("--base", required=True, help="base model directory on the shared volume")
    parser.add_argument("--output", required=True, help="model directory; its training/ holds the checkpoint")
    parser.add_argument("--backend", default="auto", help="auto (nccl on CUDA, else gloo), gloo or nccl")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, on_step: Callable[[dict], None] | None = None) -> int:
    """Exit 2 on bad input, before joining the group (so torchrun fails fast) or, when every rank finds the same
    problem later (max_length beyond the model's context), after leaving it; 0 on success."""
    from kubeforge.distributed.worker import (Rendezvous, abandon_process_group, join_process_group,
                                              leave_process_group)

    args = parse_args(argv)
    try:
        rendezvous = Rendezvous.from_env()
        config = read_lm_worker_config(args.config)
        check_inputs(config, args.data, args.base, rendezvous.world_size)
        backend = resolve_lm_backend(args.backend, config.lm_runtime)
    except (ConfigError, DataError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    join_process_group(rendezvous, backend)

    def log_step(record: dict) -> None:  # one JSON line per optimiser step: what a pod's log shows while it runs
        if rendezvous.primary:
            print(json.dumps({"step_end": record}), flush=True)
        if on_step is not None:
            on_step(record)

    try:
        summary = train_lm_distributed(config, args.data, args.base, args.output, progress=log_step)
    except (ConfigError, DataError, ModelError) as exc:
        abandon_process_group()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        abandon_process_group()  # no barrier: the other ranks may never reach it
        raise
    leave_process_group()
    if rendezvous.primary:
        print(json.dumps({"world_size": summary["world_size"], "parallelism": summary["parallelism"],
                          "steps_run": summary["steps_run"], "best_step": summary["best_step"],
                          "best_val_loss": summary["best_val_loss"],
                          "resumed_from_step": summary["resumed_from_step"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
