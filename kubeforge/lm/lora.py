"""Fine-tuning methods: LoRA adapters (peft), QLoRA (4-bit base, CUDA only) or every weight; and what they write.

A LoRA run writes ``adapter/`` (small, served on top of the base) and, when asked, ``merged/``: the base with the
adapter folded in, a plain Hugging Face model directory that needs neither peft nor the base to load. Full
fine-tuning writes ``merged/`` only, so a caller always opens ``merged/`` when it exists.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from kubeforge.config import ConfigError, LoRAConfig
from kubeforge.errors import ModelError

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
QLORA_NEEDS_CUDA = ("QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); use finetune_method=lora on CPU")


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """Distinct leaf names of the model's Linear layers: what lora_target_modules may name."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def _check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """peft matches a target by name suffix; one that matches nothing would silently train nothing there."""
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    missing = [target for target in targets
               if not any(name == target or name.endswith("." + target) for name in linear)]
    if missing:
        raise ConfigError(f"lora_target_modules {missing} match no Linear layer of {type(model).__name__}; "
                          f"its Linear layers are named: {', '.join(linear_layer_names(model))}")


def _lora_config(lora: LoRAConfig) -> Any:
    from peft import LoraConfig

    alpha = int(lora.lora_alpha) if float(lora.lora_alpha).is_integer() else lora.lora_alpha
    return LoraConfig(task_type="CAUSAL_LM", r=lora.lora_rank, lora_alpha=alpha, lora_dropout=lora.lora_dropout,
                      target_modules=list(lora.lora_target_modules))


def _quantised_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The same weights reloaded as a 4-bit NF4 model (bitsandbytes quantises at load time, not in place)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError("QLoRA needs the bitsandbytes package, which is not installed here; install it "
                         "(pip install bitsandbytes) or use finetune_method=lora") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory(prefix="kubeforge-qlora-") as staging:
        model.save_pretrained(staging)
        quantised = AutoModelForCausalLM.from_pretrained(staging, quantization_config=quantization,
                                                         device_map={"": device.index or 0})
    return prepare_model_for_kbit_training(quantised, use_gradient_checkpointing=False)


def prepare_for_finetuning(model: torch.nn.Module, lora: LoRAConfig, device: torch.device | str) -> torch.nn.Module:
    """The model to train: wrapped with adapters (lora/qlora, only they are trainable) or fully trainable."""
    device = torch.device(device)
    method = lora.finetune_method
    if method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model.to(device)
    _check_targets(model, list(lora.lora_target_modules))
    if method == "qlora":
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ModelError(QLORA_NEEDS_CUDA)
        model = _quantised_copy(model, device)
    elif method != "lora":
        raise ConfigError(f"unknown finetune_method {method!r}; use lora, qlora or full")
    from peft import get_peft_model

    wrapped = get_peft_model(model, _lora_config(lora))
    return wrapped if method == "qlora" else wrapped.to(device)


def _is_adapter_model(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_finetuned(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path,
                   lora: LoRAConfig) -> dict[str, str | int]:
    """Write adapter/ and/or merged/ (safetensors + config + tokenizer); the caller's model keeps its adapter.

    Returns {"adapter": path, "merged": path, "adapter_bytes": size of the adapter weights} for what was written.
    """
    out_dir = Path(out_dir)
    written: dict[str, str | int] = {}
    adapter = _is_adapter_model(model)
    if lora.finetune_method in ("lora", "qlora") and not adapter:
        raise ModelError(f"finetune_method={lora.finetune_method} but the model has no adapter; prepare it with "
                         "prepare_for_finetuning first")
    if adapter:
        adapter_dir = out_dir / ADAPTER_DIR
        model.save_pretrained(adapter_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(adapter_dir)
        written["adapter"] = str(adapter_dir)
        written["adapter_bytes"] = (adapter_dir / ADAPTER_WEIGHTS).stat().st_size
    if adapter and not lora.merge_adapter:
        return written
    merged_dir = out_dir / MERGED_DIR
    # a copy, so the adapter model the caller holds (to evaluate or keep training) is not unwrapped under it
    plain = copy.deepcopy(model).merge_and_unload() if adapter else model
    plain.save_pretrained(merged_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(merged_dir)
    written["merged"] = str(merged_dir)
    return written
