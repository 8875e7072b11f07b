"""A compressed model in one of the two forms the serving side loads: a torch module or an ONNX graph."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from kubeforge.models import ModelSpec


class CompressionError(ValueError):
    """A compression request cannot be honoured; raised before work starts where possible."""


@dataclass
class Candidate:
    name: str
    spec: ModelSpec  # the architecture and precision actually stored
    module: nn.Module | None = None  # torch form (fp32/fp16/bf16/int8-dynamic)
    onnx: bytes | None = None  # ONNX form (input "features" raw float32; outputs "logits", "probabilities")
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.module is None) == (self.onnx is None):
            raise ValueError("a candidate is exactly one of a torch module or an ONNX graph")

    @property
    def kind(self) -> str:
        return "onnx" if self.onnx is not None else "torch"


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
