"""The LM compression methods, their chains ('+'), the checks made before any work, and the candidate directories.

A chain runs left to right: methods that reshape the fp32 model (distill, prune-layers) first, then at most one that
gives the final form (int8-weight, int4-weight, onnx, onnx-int8). Every check runs on the shape each step would
produce (a meta-device model built from the config), so 'prune-layers+int4-weight' is checked against the pruned
widths and a bad request fails before any training or export starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeforge.compression.candidate import CompressionError
from kubeforge.config import LM_COMPRESSION_METHODS, LMCompressConfig
from kubeforge.lm.inference import CONFIG_FILE, ONNX_MODEL_FILE

RESHAPING = ("distill", "prune-layers")
FINAL = ("int8-weight", "int4-weight", "onnx", "onnx-int8")
PRECISION = {"int8-weight": "int8", "int4-weight": "int4", "onnx": "fp32", "onnx-int8": "int8"}
assert set(RESHAPING + FINAL) == set(LM_COMPRESSION_METHODS), "config.LM_COMPRESSION_METHODS and the methods agree"


@dataclass
class LMCandidate:
    name: str
    config: Any  # the transformers config of the architecture this candidate has
    model: Any = None  # torch causal LM (fp32, or torchao-quantised when ``quantised`` names the method)
    onnx: bytes | None = None
    precision: str = "fp32"
    quantised: str | None = None  # the torchao method applied, if any
    group_size: int = 0  # int4 group size, when int4
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "onnx" if self.onnx is not None else "torch"

    @property
    def final(self) -> bool:
        return self.onnx is not None or self.quantised is not None


@dataclass(frozen=True)
class LMContext:
    """What the methods need besides the model: the settings and the training rows (never the held-out set)."""

    settings: LMCompressConfig
    train: Any  # TokenBatches for distillation and healing
    calibration: Any  # TokenBatches for layer importance
    seed: int = 0


def _meta_model(config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _check_step(method: str, config: Any, settings: LMCompressConfig) -> Any:
    """Raise CompressionError if ``method`` cannot run on a model of ``config``; return the config after it."""
    from kubeforge.compression.lm_distill import student_config
    from kubeforge.compression.lm_prune import decoder_layers, layers_to_drop, pruned_config

    if method == "distill":
        return student_config(config, settings.student_layers, settings.student_hidden_size)
    if method == "prune-layers":
        total = len(decoder_layers(_meta_model(config)))
        keep = list(range(total - layers_to_drop(total, settings.prune_layer_fraction)))
        return pruned_config(config, keep)
    if method == "int4-weight":
        from kubeforge.compression.lm_quantize import check_int4_groups

        check_int4_groups(_meta_model(config), settings.int4_group_size)
    elif method in ("onnx", "onnx-int8"):
        from kubeforge.compression.lm_onnx import check_onnx_export

        check_onnx_export(_meta_model(config))
    return config


def validate_chains(chains: list[str], config: Any, settings: LMCompressConfig) -> None:
    """Every problem of every requested chain, found before any work starts."""
    if not chains:
        raise CompressionError("no compression candidates requested")
    for chain in chains:
        steps = chain.split("+")
        probe, final_step = config, None
        for method in steps:
            if method not in LM_COMPRESSION_METHODS:
                raise CompressionError(f"unknown LM compression method {method!r} in {chain!r}; known: "
                                       f"{', '.join(LM_COMPRESSION_METHODS)}")
            if final_step is not None:
                raise CompressionError(f"in {chain!r}, {method} cannot follow {final_step} (quantised and ONNX models "
                                       "are final: put distill and prune-layers first)")
            probe = _check_step(method, probe, settings)
            if method in FINAL:
                final_step = method
    if len(set(chains)) != len(chains):
        raise CompressionError(f"a candidate is requested twice: {chains}")


def _apply(method: str, candidate: LMCandidate, context: LMContext) -> LMCandidate:
    settings = context.settings
    if method == "distill":
        from kubeforge.compression.lm_distill import distill_lm

        model, notes = distill_lm(candidate.model, context.train, layers=settings.student_layers,
                                  hidden_size=settings.student_hidden_size, steps=settings.lm_distill_steps,
                                  temperature=settings.lm_distill_temperature, alpha=settings.lm_distill_alpha,
                                  seed=context.seed)
        return LMCandidate(candidate.name, model.config, model=model, notes=candidate.notes + notes)
    if method == "prune-layers":
        from kubeforge.compression.lm_prune import prune_lm

        model, notes = prune_lm(candidate.model, context.calibration, context.train,
                                fraction=settings.prune_layer_fraction, heal_steps=settings.heal_steps,
                                seed=context.seed)
        return LMCandidate(candidate.name, model.config, model=model, notes=candidate.notes + notes)
    if method in ("int8-weight", "int4-weight"):
        from kubeforge.compression.lm_quantize import quantize_lm

        model, notes = quantize_lm(candidate.model, method, settings.int4_group_size)
        return LMCandidate(candidate.name, candidate.config, model=model, precision=PRECISION[method],
                           quantised=method, group_size=settings.int4_group_size if method == "int4-weight" else 0,
                           notes=candidate.notes + notes)
    from kubeforge.compression.lm_onnx import export_lm_onnx, quantize_lm_onnx

    graph = export_lm_onnx(candidate.model)
    notes = ["ONNX fp32 with the KV cache in and out (torch.onnx.export dynamo=True)"]
    if method == "onnx-int8":
        graph, how = quantize_lm_onnx(graph)
        notes.append(how)
    return LMCandidate(candidate.name, candidate.config, onnx=graph, precision=PRECISION[method],
                       notes=candidate.notes + notes)


def build_chain(baseline: LMCandidate, chain: str, context: LMContext) -> tuple[LMCandidate, float]:
    """The candidate of one chain and the seconds it took to build."""
    started = time.perf_counter()
    candidate = LMCandidate(chain, baseline.config, model=baseline.model)
    for method in chain.split("+"):
        candidate = _apply(method, candidate, context)
    candidate.name = chain
    return candidate, time.perf_counter() - started


def save_lm_candidate(candidate: LMCandidate, tokenizer: Any, directory: str | Path) -> Path:
    """The directory the harness measures and the service loads; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if candidate.onnx is not None:
        (directory / ONNX_MODEL_FILE).write_bytes(candidate.onnx)
        candidate.config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    elif candidate.quantised is not None:
        from kubeforge.compression.lm_quantize import save_torchao_dir

        save_torchao_dir(candidate.model, tokenizer, directory, candidate.quantised, candidate.group_size)
    else:
        candidate.model.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise CompressionError(f"{directory}: no {CONFIG_FILE} was written")
    return directory


def chain_slug(index: int, chain: str) -> str:
    return f"{index:02d}-" + chain.replace("+", "_")

