"""Writing and loading compressed model directories (the contract shared with serving).

A directory holds ``model.json`` (ModelSpec, including ``precision``) and either ``model.safetensors`` or
``model.onnx``. int8-dynamic weights are stored as int8 tensors plus per-tensor scale and zero point, so the file is
really ~4x smaller; they are re-packed into quantized Linear layers on load. Never a pickle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kubeforge.compression.candidate import Candidate
from kubeforge.compression.quantize import dynamic_int8_linear_type, quantize_dynamic_int8
from kubeforge.models import SPEC_FILE, WEIGHTS_FILE, ModelError, build_model, load_spec, load_weights
from kubeforge.onnx_inference import ONNX_FILE, Predictor, onnx_predictor, onnx_session

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _int8_state(model: nn.Module) -> dict[str, torch.Tensor]:
    quantized = dynamic_int8_linear_type()
    state: dict[str, torch.Tensor] = {}
    packed_prefixes = []
    for name, module in model.named_modules():
        if isinstance(module, quantized):
            weight = module.weight()
            state[f"{name}.weight_int8"] = weight.int_repr().contiguous()
            state[f"{name}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
            state[f"{name}.weight_zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
            if module.bias() is not None:
                state[f"{name}.bias"] = module.bias().detach().contiguous()
            packed_prefixes.append(f"{name}.")
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not any(key.startswith(p) for p in packed_prefixes):
            state[key] = value.detach().contiguous()
    return state


def _load_int8(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    quantized = dynamic_int8_linear_type()
    used = set()
    for name, module in model.named_modules():
        if isinstance(module, quantized):
            weight = torch._make_per_tensor_quantized_tensor(
                state[f"{name}.weight_int8"], float(state[f"{name}.weight_scale"][0]),
                int(state[f"{name}.weight_zero_point"][0]))
            module.set_weight_bias(weight, state.get(f"{name}.bias"))
            used |= {f"{name}.weight_int8", f"{name}.weight_scale", f"{name}.weight_zero_point", f"{name}.bias"}
    for key, value in state.items():  # float tensors outside the packed Linears (standardisation, convs)
        if key in used:
            continue
        parent, _, attribute = key.rpartition(".")
        target = getattr(model.get_submodule(parent) if parent else model, attribute)
        with torch.no_grad():
            target.copy_(value)


def save_candidate(candidate: Candidate, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (ONNX_FILE, WEIGHTS_FILE):
        (directory / stale).unlink(missing_ok=True)
    if candidate.onnx is not None:
        path = directory / ONNX_FILE
        path.write_bytes(candidate.onnx)
    else:
        path = directory / WEIGHTS_FILE
        if candidate.spec.precision == "int8-dynamic":
            state = _int8_state(candidate.module)
        else:
            state = {k: v.detach().cpu().contiguous() for k, v in candidate.module.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt", "precision": candidate.spec.precision})
    (directory / SPEC_FILE).write_text(candidate.spec.model_dump_json(indent=2))
    return path


def load_torch(directory: str | Path) -> nn.Module:
    """The torch module of a directory of any precision, in eval mode."""
    spec = load_spec(directory)
    weights = Path(directory) / WEIGHTS_FILE
    model = build_model(spec.model_copy(update={"precision": "fp32"})).eval()
    if spec.precision == "int8":
        raise ModelError(f"{directory}: int8 models are stored as {ONNX_FILE}, which is missing")
    if spec.precision == "fp32":
        load_weights(model, weights)
    elif spec.precision == "int8-dynamic":
        model = quantize_dynamic_int8(model)
        _load_int8(model, load_file(str(weights)))
    else:
        model = model.to(_DTYPES[spec.precision])
        load_weights(model, weights)
    return model.eval()


def torch_predictor(model: nn.Module, precision: str = "fp32") -> Predictor:
    dtype = _DTYPES.get(precision, torch.float32)

    @torch.inference_mode()
    def predict(X: np.ndarray) -> np.ndarray:
        logits = model(torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32).to(dtype))
        return torch.softmax(logits.float(), dim=1).numpy()

    return predict


def candidate_predictor(candidate: Candidate, threads: int = 1) -> Predictor:
    if candidate.onnx is not None:
        return onnx_predictor(onnx_session(candidate.onnx, threads))
    return torch_predictor(candidate.module.eval(), candidate.spec.precision)


def load_predictor(directory: str | Path, threads: int = 1) -> Predictor:
    """Probabilities from raw float32 features, for any model directory kubeforge writes."""
    directory = Path(directory)
    spec = load_spec(directory)
    if (directory / ONNX_FILE).is_file():
        return onnx_predictor(onnx_session(directory / ONNX_FILE, threads))
    if not (directory / WEIGHTS_FILE).is_file():
        raise ModelError(f"{directory}: neither {ONNX_FILE} nor {WEIGHTS_FILE}")
    return torch_predictor(load_torch(directory), spec.precision)
