"""Checks of a language-model run's model settings that need no training, done before kfp starts a single step.

A fine-tune that fails after minutes of pre-training on a typo in ``lora_target_modules`` wastes the user's time and
leaves half a run behind; each check here is cheap (parse a reference, read config.json, build the model on the meta
device) and raises the same error the step itself would raise. The data is checked by kubeforge.preflight; remote
models (hf:// online, s3://, gs://) are left to the steps: fetching them twice would cost more than it saves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubeforge.config import ConfigError, LMDataConfig, LMModelConfig, LoRAConfig, RunConfig
from kubeforge.errors import ModelError

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


# Linear layer names of the decoder families whose blocks are Llama's; others are found by building the model on
# the meta device (which costs a transformers import, seconds, instead of a JSON read)
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def _linear_names(architecture: dict[str, Any], directory: Path | None) -> list[str]:
    if architecture.get("model_type") in LLAMA_LIKE:
        return list(LLAMA_LINEAR)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kubeforge.lm.lora import linear_layer_names

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory, local_files_only=True))
    return linear_layer_names(model)


def _architecture(model: LMModelConfig) -> tuple[dict[str, Any], Path | None] | None:
    """(config.json contents, directory) of the base model, or None when it can only be seen by the step."""
    from kubeforge.lm.sources import check_checkpoint_files

    if model.base_model.startswith("scratch:"):
        return {"model_type": "llama", "max_position_embeddings": model.context_length}, None
    directory = _local_model_dir(model)
    if directory is None:
        return None
    check_checkpoint_files(directory)
    config_file = directory / "config.json"
    if not config_file.exists():  # an adapter directory: its base is checked when it is loaded
        return None
    try:
        return json.loads(config_file.read_text()), directory
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config_file} is not valid JSON: {exc}") from None


def check_model(model: LMModelConfig, data: LMDataConfig, lora: LoRAConfig | None) -> None:
    from kubeforge.lm.sequences import check_max_length

    found = _architecture(model)
    if found is None:
        return
    architecture, directory = found
    if "max_position_embeddings" in architecture:
        check_max_length(data.max_length, int(architecture["max_position_embeddings"]))
    if lora is not None and lora.finetune_method in ("lora", "qlora"):
        names = _linear_names(architecture, directory)
        missing = [target for target in lora.lora_target_modules if target not in names]
        if missing:
            raise ConfigError(f"lora_target_modules {missing} match no Linear layer of the base model; its Linear "
                              f"layers are named: {', '.join(sorted(names))}")
    if lora is not None and lora.finetune_method == "qlora":
        import torch

        from kubeforge.lm.lora import QLORA_NEEDS_CUDA

        if not torch.cuda.is_available():
            raise ModelError(QLORA_NEEDS_CUDA)


def check_lm_params(params: dict[str, Any]) -> None:
    """The model checks for a run's resolved flat parameters (those of the LM sections it has)."""
    sections = [name for name in ("lm_model", "lm_data", "lora") if name in RunConfig.sections()]
    fields = RunConfig.flat_fields(sections)
    config = RunConfig.from_flat({name: value for name, value in params.items() if name in fields}, sections)
    has_lora = any(name in params for name in LoRAConfig.model_fields)
    check_model(config.lm_model, config.lm_data, config.lora if has_lora else None)
