"""Architectures and their on-disk form.

A model directory is ``model.safetensors`` (weights, never a pickle) plus ``model.json`` (a ModelSpec: the
architecture config, class and feature names, and the train-split standardisation), so any step or server can rebuild
exactly the trained network. The standardisation is a layer of the model, so callers always pass raw features.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from kubeforge.errors import ModelError  # noqa: F401 (re-exported)
from kubeforge.config import ModelConfig

WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"




class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: ModelConfig
    input_dim: int
    num_classes: int
    feature_names: list[str]
    class_names: list[str]
    scaler_mean: list[float]
    scaler_scale: list[float]
    image_shape: tuple[int, int] | None = None
    precision: Literal["fp32", "fp16", "bf16", "int8-dynamic", "int8"] = "fp32"  # int8: ONNX Runtime int8
    format_version: int = 1


class Standardize(nn.Module):
    def __init__(self, mean: list[float], scale: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class Classifier(nn.Module):
    """Raw features in, logits out."""

    def __init__(self, standardize: Standardize, body: nn.Module):
        super().__init__()
        self.standardize = standardize
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(x))


def mlp(config: ModelConfig, input_dim: int, num_classes: int, image_shape: tuple[int, int] | None = None) -> nn.Module:
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in config.hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class ImageCNN(nn.Module):
    """Conv blocks over a single-channel square image given as a flat feature vector."""

    def __init__(self, config: ModelConfig, input_dim: int, num_classes: int,
                 image_shape: tuple[int, int] | None = None):
        super().__init__()
        if image_shape is None:
            side = math.isqrt(input_dim)
            if side * side != input_dim:
                raise ModelError(f"cnn needs square images: {input_dim} features is not a perfect square")
            image_shape = (side, side)
        if image_shape[0] * image_shape[1] != input_dim:
            raise ModelError(f"cnn: image shape {image_shape} does not match {input_dim} features")
        self.image_shape = tuple(image_shape)
        blocks: list[nn.Module] = []
        channels, height, width = 1, *image_shape
        for out_channels in config.channels:
            blocks += [nn.Conv2d(channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
            if min(height, width) >= 4:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout),
                                  nn.Linear(channels * height * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(x.shape[0], 1, *self.image_shape)))


Builder = Callable[[ModelConfig, int, int, "tuple[int, int] | None"], nn.Module]
ARCHITECTURES: dict[str, Builder] = {"mlp": mlp, "cnn": ImageCNN}


def _import_plugin(path: str) -> Builder:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model {path!r}: cannot import module {module_name!r} ({exc})") from None
    try:
        cls = getattr(module, attribute)
    except AttributeError:
        raise ModelError(f"model {path!r}: module {module_name!r} has no attribute {attribute!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"model {path!r}: {attribute!r} is not an nn.Module subclass")

    def build(config: ModelConfig, input_dim: int, num_classes: int, image_shape=None) -> nn.Module:
        return cls(input_dim=input_dim, num_classes=num_classes, config=config)

    return build


def build_model(spec: ModelSpec) -> Classifier:
    name = spec.config.model
    builder = ARCHITECTURES.get(name) or _import_plugin(name)
    body = builder(spec.config, spec.input_dim, spec.num_classes, spec.image_shape)
    return Classifier(Standardize(spec.scaler_mean, spec.scaler_scale), body)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: Classifier, spec: ModelSpec, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "architecture": spec.config.model})
    (directory / SPEC_FILE).write_text(spec.model_dump_json(indent=2))


def load_spec(directory: str | Path) -> ModelSpec:
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: no {SPEC_FILE}; not a kubeforge model directory")
    try:
        return ModelSpec.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelError(f"{path}: invalid model config ({str(exc).splitlines()[0]})") from None


def load_weights(model: nn.Module, weights: str | Path, map_location: str = "cpu") -> None:
    """Load safetensors weights, naming the file on a missing or mismatched tensor."""
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{weights}: unreadable weights ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: weights do not fit the architecture ({str(exc).splitlines()[0]})") from None


def load_model(directory: str | Path, map_location: str = "cpu") -> tuple[Classifier, ModelSpec]:
    spec = load_spec(directory)
    if spec.precision != "fp32":
        raise ModelError(f"{directory}: weights are stored as {spec.precision}; load them with "
                         "kubeforge.compression.artifact.load_predictor")
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{directory}: no {WEIGHTS_FILE}")
    model = build_model(spec)
    load_weights(model, weights, map_location)
    model.eval()
    return model, spec


@torch.no_grad()
def predict_proba(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(X), batch_size):
        batch = torch.as_tensor(np.ascontiguousarray(X[start:start + batch_size]), dtype=torch.float32, device=device)
        outputs.append(torch.softmax(model(batch).float(), dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)
