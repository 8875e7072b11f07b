"""prune-layers: drop whole decoder layers, the ones whose removal costs the least, then heal with a short fine-tune.

Structured: the model really has fewer layers (config.json says so), so every decode step does less work, unlike
masks. Importance is measured, not assumed: each layer is skipped in turn and the loss increase on calibration rows
of the training data (never the held-out set) is its importance; the least important go. The kept layers are
renumbered so their KV-cache slots stay contiguous.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from kubeforge.compression.candidate import CompressionError
from kubeforge.compression.lm_distill import train_student
from kubeforge.lm.evaluation import next_token_sums

CALIBRATION_ROWS = 32


def layers_to_drop(total: int, fraction: float) -> int:
    """round(fraction x layers), at least one; refuses a fraction that would leave no layer."""
    count = max(1, round(fraction * total))
    if count >= total:
        raise CompressionError(f"prune-layers: prune_layer_fraction {fraction} of {total} decoder layer(s) removes "
                               f"{count} and leaves none; use a fraction below {(total - 0.5) / total:.2f}")
    return count


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise CompressionError(f"prune-layers needs a decoder whose layers are model.model.layers; "
                               f"{type(model).__name__} has none")
    return layers


def pruned_config(config: Any, keep: list[int]) -> Any:
    config = copy.deepcopy(config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    return config


def _loss(model: Any, batches: Any) -> float:
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, len(batches), 8):
            ids = batches.input_ids[start:start + 8]
            mask = batches.attention_mask[start:start + 8]
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            sums += next_token_sums(logits, batches.labels[start:start + 8]).double()
    return float(sums[0] / sums[1].clamp(min=1))


def layer_importance(model: Any, calibration: Any) -> list[float]:
    """Loss increase on the calibration rows when each layer alone is skipped."""
    model.eval()
    layers = decoder_layers(model)
    baseline = _loss(model, calibration)
    original = list(layers)
    increases = []
    try:
        for skipped in range(len(original)):
            model.model.layers = torch.nn.ModuleList(layer for i, layer in enumerate(original) if i != skipped)
            increases.append(_loss(model, calibration) - baseline)
    finally:
        model.model.layers = torch.nn.ModuleList(original)
    return increases


def drop_layers(model: Any, keep: list[int]) -> Any:
    """A copy with only the ``keep`` layers, renumbered 0..k-1 (cache slots and saved names follow)."""
    pruned = copy.deepcopy(model)
    kept = [decoder_layers(pruned)[i] for i in keep]
    for index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    pruned.model.layers = torch.nn.ModuleList(kept)
    pruned.config = pruned_config(pruned.config, keep)
    pruned.model.config = pruned.config
    return pruned


def prune_lm(model: Any, calibration: Any, train: Any, *, fraction: float, heal_steps: int,
             seed: int) -> tuple[Any, list[str]]:
    total = len(decoder_layers(model))
    count = layers_to_drop(total, fraction)
    rows = calibration if len(calibration) <= CALIBRATION_ROWS else _first_rows(calibration, CALIBRATION_ROWS)
    importance = layer_importance(model, rows)
    dropped = sorted(sorted(range(total), key=lambda i: importance[i])[:count])
    keep = [i for i in range(total) if i not in dropped]
    pruned = drop_layers(model, keep)
    notes = [f"dropped layer(s) {dropped} of {total} (calibration loss increase when skipped: "
             + ", ".join(f"{i}: {value:+.3f}" for i, value in enumerate(importance)) + ")"]
    if heal_steps:
        losses = train_student(pruned, train, steps=heal_steps, seed=seed)
        notes.append(f"healed {heal_steps} steps on the training data (final loss {losses[-1]:.3f})")
    return pruned.eval(), notes


def _first_rows(batches: Any, count: int) -> Any:
    from kubeforge.lm.sequences import TokenBatches

    return TokenBatches(batches.input_ids[:count], batches.attention_mask[:count], batches.labels[:count])
