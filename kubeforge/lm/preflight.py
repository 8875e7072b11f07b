"""Checks of a language-model run that need no training, done before kfp starts a single step.

A fine-tune that fails after minutes of pre-training on a typo in ``lora_target_modules`` or a JSONL row without a
``completion`` wastes the user's time and leaves half a run behind; each check here is cheap (parse a reference,
read config.json, build the model on the meta device, read the local data files) and raises the same error the
step itself would raise. Remote sources (hf:// online, s3://, gs://) are left to the steps: fetching them twice
would cost more than it saves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubeforge.config import ConfigError, LMDataConfig, LMModelConfig, LoRAConfig, RunConfig
from kubeforge.models import ModelError

LOCAL_DATA = ("pydoc:",)


def _is_local(source: str) -> bool:
    return source.startswith(LOCAL_DATA) or "://" not in source or source.startswith("file://")


def check_data(data: LMDataConfig, *, need_corpus: bool) -> None:
    from kubeforge.lm.corpus import load_documents, load_examples

    if need_corpus and _is_local(data.corpus):
        load_documents(data.corpus)
    if _is_local(data.finetune_dataset):
        load_examples(data.finetune_dataset)


def _local_model_dir(model: LMModelConfig) -> Path | None:
    from kubeforge.lm.sources import fetch_hf_snapshot, hf_offline, parse_model_source, pvc_path

    source = parse_model_source(model.base_model)
    if source.scheme == "local":
        return Path(source.location)
    if source.scheme == "pvc":
        path = pvc_path(source.location)
        return path if path.exists() else None  # the claim is mounted in the pod, not here
    if source.scheme == "hf" and hf_offline():
        return fetch_hf_snapshot(source.location, revision=source.revision)
    return None


def _meta_model(config: Any) -> Any:
    """The architecture without weights: module names and sizes for free."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_model(model: LMModelConfig, data: LMDataConfig, lora: LoRAConfig | None) -> None:
    from transformers import AutoConfig, LlamaConfig

    from kubeforge.lm.sequences import check_max_length
    from kubeforge.lm.sources import SCRATCH_PRESETS, check_checkpoint_files

    if model.base_model.startswith("scratch:"):
        preset = model.base_model.removeprefix("scratch:")
        architecture = LlamaConfig(**SCRATCH_PRESETS[preset], vocab_size=model.tokenizer_vocab,
                                   max_position_embeddings=model.context_length)
    else:
        directory = _local_model_dir(model)
        if directory is None:
            return
        check_checkpoint_files(directory)
        config_file = directory / "config.json"
        if not config_file.exists():  # an adapter directory: its base is checked when it is loaded
            return
        try:
            architecture = AutoConfig.from_pretrained(directory, local_files_only=True)
        except (ValueError, OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{config_file}: not a transformers model config ({str(exc).splitlines()[0]})") from None
    check_max_length(data.max_length, int(architecture.max_position_embeddings))
    if lora is not None and lora.finetune_method in ("lora", "qlora"):
        from kubeforge.lm.lora import _check_targets

        _check_targets(_meta_model(architecture), list(lora.lora_target_modules))
    if lora is not None and lora.finetune_method == "qlora":
        import torch

        from kubeforge.lm.lora import QLORA_NEEDS_CUDA

        if not torch.cuda.is_available():
            raise ModelError(QLORA_NEEDS_CUDA)


def check_lm_run(config: RunConfig, sections: tuple[str, ...]) -> None:
    """Raise the first ConfigError/DataError/ModelError a local run of a pipeline with ``sections`` would hit."""
    if "lm_data" not in sections or "lm_model" not in sections:
        raise ConfigError("not a language-model pipeline")
    check_data(config.lm_data, need_corpus="pretrain" in sections)
    check_model(config.lm_model, config.lm_data, config.lora if "lora" in sections else None)
