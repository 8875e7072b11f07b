"""int8-dynamic: torch-native dynamic int8 quantisation of Linear layers.

``torch.ao.quantization`` is deprecated upstream (torchao targets GPUs first), so every use sits behind the two
functions below; when torch removes the API, only this module changes and the method reports itself unavailable.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from kubeforge.compression.candidate import Candidate, CompressionError, linear_layers


def _dynamic_api():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
            from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # removed in a future torch
        raise CompressionError(f"int8-dynamic is unavailable with torch {torch.__version__}: {exc}") from None
    return quantize_dynamic, DynamicLinear


def dynamic_int8_linear_type() -> type:
    return _dynamic_api()[1]


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy with every Linear replaced by an int8-weight, dynamically-quantised-activation Linear."""
    quantize_dynamic, _ = _dynamic_api()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def check_int8_dynamic(model: nn.Module) -> None:
    if not linear_layers(model):
        raise CompressionError("int8-dynamic needs Linear layers; this model has none")
    _dynamic_api()


def int8_dynamic(candidate: Candidate) -> Candidate:
    if candidate.kind != "torch" or candidate.spec.precision != "fp32":
        raise CompressionError(f"int8-dynamic needs an fp32 torch model, not {candidate.name}")
    check_int8_dynamic(candidate.module)
    quantized = quantize_dynamic_int8(candidate.module)
    notes = candidate.notes + ["torch dynamic int8 (Linear weights int8, activations quantised per batch)"]
    if any(isinstance(m, nn.Conv2d) for m in candidate.module.modules()):
        notes.append("conv layers stay fp32 (dynamic quantisation covers Linear only)")
    return Candidate(name=candidate.name, spec=candidate.spec.model_copy(update={"precision": "int8-dynamic"}),
                     module=quantized, notes=notes)
