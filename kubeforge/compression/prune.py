"""Pruning. Structured pruning removes whole hidden units and rebuilds smaller dense layers, which is what makes
dense kernels faster; unstructured pruning only zeroes weights, so it shrinks the compressed (gzip) file but gives no
latency gain on dense kernels — the report says so instead of implying otherwise."""

from __future__ import annotations

import copy
import tempfile

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from kubeforge.compression.candidate import Candidate, CompressionError, has_conv, linear_layers
from kubeforge.config import TrainConfig
from kubeforge.training import train_model


def check_structured(candidate_model: nn.Module, architecture: str) -> None:
    if architecture not in ("mlp", "cnn"):
        raise CompressionError(f"prune-structured rebuilds mlp and cnn layers; model {architecture!r} is not "
                               "supported")


def _keep(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    keep = max(1, int(round(len(scores) * (1 - fraction))))
    return torch.sort(torch.topk(scores, keep).indices).values


def _prune_mlp(model: nn.Module, fraction: float) -> dict:
    layers = [m for m in model.body if isinstance(m, nn.Linear)]
    new_sizes = []
    keep_inputs = None
    for index, layer in enumerate(layers):
        weight, bias = layer.weight.data, layer.bias.data
        if keep_inputs is not None:
            weight = weight[:, keep_inputs]
        if index < len(layers) - 1:
            kept = _keep(weight.norm(dim=1) * layers[index + 1].weight.data.norm(dim=0), fraction)  # in and out
            weight, bias = weight[kept], bias[kept]
            keep_inputs = kept
            new_sizes.append(len(kept))
        position = [i for i, m in enumerate(model.body) if m is layer][0]
        model.body[position] = _linear(weight, bias)
    return {"hidden_sizes": new_sizes}


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    rebuilt = nn.Linear(weight.shape[1], weight.shape[0])
    rebuilt.weight.data.copy_(weight)
    rebuilt.bias.data.copy_(bias)
    return rebuilt


def _prune_cnn(model: nn.Module, fraction: float) -> dict:
    """Drop the weakest filters of every conv; the next conv and the head lose the matching inputs."""
    features = model.body.features
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    keep_inputs = None
    channels = []
    for position in convs:
        conv = features[position]
        weight, bias = conv.weight.data, conv.bias.data
        if keep_inputs is not None:
            weight = weight[:, keep_inputs]
        kept = _keep(weight.flatten(1).norm(dim=1), fraction)
        rebuilt = nn.Conv2d(weight.shape[1], len(kept), kernel_size=conv.kernel_size, padding=conv.padding)
        rebuilt.weight.data.copy_(weight[kept])
        rebuilt.bias.data.copy_(bias[kept])
        features[position] = rebuilt
        keep_inputs = kept
        channels.append(len(kept))
    head = model.body.head[-1]
    per_channel = head.in_features // conv.out_channels
    columns = (keep_inputs[:, None] * per_channel + torch.arange(per_channel)[None, :]).flatten()
    model.body.head[-1] = _linear(head.weight.data[:, columns], head.bias.data)
    return {"channels": channels}


def _finetune(model: nn.Module, data, epochs: int, seed: int) -> None:
    if epochs <= 0:
        return
    X_train, y_train, X_val, y_val = data
    config = TrainConfig(epochs=epochs, learning_rate=1e-3, patience=epochs + 1, seed=seed, device="cpu")
    with tempfile.TemporaryDirectory() as workdir:
        train_model(model, X_train, y_train, X_val, y_val, config, workdir, progress=False)


def prune_structured(candidate: Candidate, data, fraction: float, finetune_epochs: int, seed: int = 0) -> Candidate:
    """Drop ``fraction`` of every hidden layer's units (mlp) or filters (cnn) with the smallest norm, then fine-tune."""
    if candidate.kind != "torch" or candidate.spec.precision != "fp32":
        raise CompressionError(f"prune-structured needs an fp32 torch model, not {candidate.name}")
    check_structured(candidate.module, candidate.spec.config.model)
    model = copy.deepcopy(candidate.module).cpu().eval()
    architecture = candidate.spec.config.model
    changed = _prune_mlp(model, fraction) if architecture == "mlp" else _prune_cnn(model, fraction)
    spec = candidate.spec.model_copy(update={"config": candidate.spec.config.model_copy(update=changed)})
    _finetune(model, data, finetune_epochs, seed)
    return Candidate(name=candidate.name, spec=spec, module=model.eval(),
                     notes=candidate.notes + [f"structured: {name} {getattr(candidate.spec.config, name)} -> {value}, "
                                              f"fine-tuned {finetune_epochs} epochs"
                                              for name, value in changed.items()])


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def prune_unstructured(candidate: Candidate, data, sparsity: float, finetune_epochs: int,
                       seed: int = 0) -> Candidate:
    """Global magnitude pruning across all weight matrices, fine-tuned with the mask, then made permanent."""
    if candidate.kind != "torch" or candidate.spec.precision != "fp32":
        raise CompressionError(f"prune-unstructured needs an fp32 torch model, not {candidate.name}")
    if not linear_layers(candidate.module) and not has_conv(candidate.module):
        raise CompressionError("prune-unstructured needs Linear or Conv2d weights")
    model = copy.deepcopy(candidate.module).cpu()
    targets = _prunable(model)
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    _finetune(model, data, finetune_epochs, seed)
    for module, name in targets:
        torch_prune.remove(module, name)
    return Candidate(name=candidate.name, spec=candidate.spec, module=model.eval(),
                     notes=candidate.notes + [f"unstructured: {sparsity:.0%} of weights zeroed; smaller only when "
                                              "compressed (gzip); no latency gain on dense kernels"])


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
               and isinstance(getattr(m, "weight", None), torch.Tensor)]
    total = sum(w.numel() for w in weights)
    return float(sum((w == 0).sum().item() for w in weights) / total) if total else 0.0


def onnx_sparsity(onnx_bytes: bytes) -> float:
    import onnx
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(t) for t in onnx.load_from_string(onnx_bytes).graph.initializer]
    weights = [a for a in arrays if a.ndim >= 2]
    total = sum(a.size for a in weights)
    return float(sum(np.count_nonzero(a == 0) for a in weights) / total) if total else 0.0
