"""int8-weight / int4-weight: torchao weight-only quantisation of a causal LM, and its directory format.

Kernels on this CPU (torchao 0.18): ``Int8WeightOnlyConfig`` (per-row int8) and ``IntxWeightOnlyConfig`` with
``weight_dtype=torch.int4`` and ``PerGroup(g)`` run. ``Int4WeightOnlyConfig`` is refused: its packed formats need
CUDA kernels (tinygemm / mslk) and it fails here, so int4 on CPU is IntxWeightOnlyConfig, which needs the group size
to divide every quantised layer's input width. torchao keeps int4 values in int8 containers; the directory packs two
per byte, so int4 is really smaller on disk than int8.

Tied embeddings: the lm_head weight is quantised and the embedding table is stored as those int8/int4 values only
(one copy on disk); in memory the embedding holds their dequantised float values, because torchao's embedding
dequantises the whole table on every lookup. Lookups therefore see exactly the quantised numbers, at fp32 speed.

A directory is the Hugging Face layout (config.json, tokenizer files) with ``model.safetensors`` holding plain
tensors and torchao's flattened tensor data (its safetensors support: JSON metadata, never a pickle), and
``torchao.json`` saying which config was applied to which weights, so the loader rebuilds the same tensors.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubeforge.compression.candidate import CompressionError
from kubeforge.lm.inference import TORCHAO_FILE

WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
TENSOR_TYPES = {"int8-weight": "Int8Tensor", "int4-weight": "IntxUnpackedToInt8Tensor"}
INT4_REFUSED = ("Int4WeightOnlyConfig is refused on CPU: its packed int4 formats need CUDA kernels (tinygemm / "
                "mslk); int4 here is IntxWeightOnlyConfig(int4, PerGroup)")


def quantised_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear of the model (lm_head included); the embedding follows the lm_head when tied."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def check_int4_groups(model: nn.Module, group_size: int) -> None:
    """Before any work: IntxWeightOnlyConfig's groups must tile every input width."""
    widths = {name: module.in_features for name, module in quantised_linears(model).items()}
    bad = {name: width for name, width in widths.items() if width % group_size}
    if bad:
        name, width = next(iter(bad.items()))
        fitting = sorted({g for g in (8, 16, 32, 64, 128, 256) if all(w % g == 0 for w in widths.values())})
        hint = f"; group sizes that fit this model: {', '.join(map(str, fitting))}" if fitting else ""
        raise CompressionError(f"int4-weight: int4_group_size {group_size} does not divide the input width {width} "
                               f"of {name} ({len(bad)} layer(s) in all). {INT4_REFUSED}, whose groups must tile every "
                               f"width{hint}")


def torchao_config(method: str, group_size: int) -> Any:
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup

    if method == "int8-weight":
        return Int8WeightOnlyConfig()
    if method == "int4-weight":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    raise CompressionError(f"{method} is not a torchao method")


def _config_record(method: str, group_size: int) -> dict[str, Any]:
    if method == "int8-weight":
        return {"class": "Int8WeightOnlyConfig", "granularity": "PerRow"}
    return {"class": "IntxWeightOnlyConfig", "weight_dtype": "int4", "granularity": f"PerGroup({group_size})",
            "group_size": group_size}


def _tied(model: nn.Module) -> bool:
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    return head is not None and embeddings is not None and head.weight is embeddings.weight


def _embedding_name(model: nn.Module) -> str:
    embeddings = model.get_input_embeddings()
    return next(name for name, module in model.named_modules() if module is embeddings) + ".weight"


def _head_name(model: nn.Module) -> str:
    head = model.get_output_embeddings()
    return next(name for name, module in model.named_modules() if module is head) + ".weight"


def _follow_head(model: nn.Module) -> None:
    """The embedding table becomes the dequantised lm_head weight (the numbers the stored integers mean)."""
    model.get_input_embeddings().weight = nn.Parameter(model.get_output_embeddings().weight.dequantize(),
                                                       requires_grad=False)


def quantize_lm(model: nn.Module, method: str, group_size: int) -> tuple[nn.Module, list[str]]:
    """A quantised copy (weights only; activations stay float) and notes saying what was done."""
    from torchao.quantization import quantize_

    if method == "int4-weight":
        check_int4_groups(model, group_size)
    quantized = copy.deepcopy(model).float().cpu().eval()
    tied = _tied(quantized)
    quantize_(quantized, torchao_config(method, group_size))
    notes = [f"torchao {_config_record(method, group_size)['class']}"
             + (f" int4 PerGroup({group_size})" if method == "int4-weight" else " per-row int8")
             + " on every Linear; activations stay fp32 (weight-only)"]
    if tied:
        _follow_head(quantized)
        notes.append("tied embedding stored once, as the lm_head's quantised values")
    if method == "int4-weight":
        notes.append(INT4_REFUSED)
    return quantized, notes


def _pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int8 tensor of values in [-8, 7] -> uint8, two values per byte (low nibble first)."""
    flat = (values.reshape(-1).to(torch.int16) & 0xF).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] | (flat[1::2] << 4)).contiguous()


def _unpack_int4(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    low, high = (packed & 0xF).to(torch.int16), (packed >> 4).to(torch.int16)
    flat = torch.stack([low, high], dim=1).reshape(-1)[:int(torch.tensor(shape).prod())]
    return torch.where(flat > 7, flat - 16, flat).to(torch.int8).reshape(shape)


def save_torchao_dir(model: nn.Module, tokenizer: Any, directory: str | Path, method: str, group_size: int) -> Path:
    import torchao
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tied = _tied_in_memory(model)
    state = {name: tensor for name, tensor in model.state_dict().items() if not (tied and name == tied)}
    quantized = sorted(name for name, tensor in state.items() if type(tensor).__name__ in TENSOR_TYPES.values())
    tensors, metadata = flatten_tensor_state_dict(state)
    packed = []
    if method == "int4-weight":
        for name in quantized:
            key = f"{name.rsplit('.', 1)[0]}._{name.rsplit('.', 1)[1]}_qdata"
            shape = list(tensors[key].shape)
            tensors[key] = _pack_int4(tensors[key])
            packed.append({"tensor": key, "shape": shape})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS_FILE), metadata=metadata)
    model.config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    record = {"format": FORMAT_VERSION, "library": "torchao", "torchao_version": torchao.__version__,
              "method": method, "config": _config_record(method, group_size), "quantized_weights": quantized,
              "tensor_type": TENSOR_TYPES[method], "embedding_follows": tied and _head_name(model),
              "embedding": tied, "int4_packed": packed}
    (directory / TORCHAO_FILE).write_text(json.dumps(record, indent=2))
    return directory / WEIGHTS_FILE


def _tied_in_memory(model: nn.Module) -> str | None:
    """The embedding's name when it holds the lm_head's dequantised values (see ``quantize_lm``)."""
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    if head is None or type(head.weight).__name__ not in TENSOR_TYPES.values():
        return None
    if embeddings.weight.shape == head.weight.shape and torch.equal(embeddings.weight, head.weight.dequantize()):
        return _embedding_name(model)
    return None


def load_torchao_model(directory: str | Path, *, device: str = "cpu") -> nn.Module:
    """Rebuild a quantised model from its directory: the architecture from config.json, the torchao tensors that
    torchao.json names from their stored integers and scales, the tied embedding from the lm_head."""
    from safetensors import safe_open
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from kubeforge.models import ModelError

    directory = Path(directory)
    try:
        record = json.loads((directory / TORCHAO_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory / TORCHAO_FILE}: unreadable ({exc})") from None
    if record.get("format") != FORMAT_VERSION or record.get("method") not in TENSOR_TYPES:
        raise ModelError(f"{directory / TORCHAO_FILE}: format {record.get('format')!r}, method "
                         f"{record.get('method')!r} is not one this kubeforge writes")
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config).eval()
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    for entry in record["int4_packed"]:
        tensors[entry["tensor"]] = _unpack_int4(tensors[entry["tensor"]], entry["shape"])
    rebuilt, _ = unflatten_tensor_state_dict(tensors, metadata)
    quantized = {name: tensor for name, tensor in rebuilt.items() if type(tensor) is not torch.Tensor}
    plain = {name: tensor for name, tensor in rebuilt.items() if type(tensor) is torch.Tensor}
    expected = set(record["quantized_weights"])
    wrong = [name for name, tensor in quantized.items() if type(tensor).__name__ != record["tensor_type"]]
    if set(quantized) != expected or wrong:
        raise ModelError(f"{directory}: the stored torchao tensors do not match {TORCHAO_FILE} "
                         f"(expected {len(expected)} {record['tensor_type']}, found {len(quantized)})")
    for name, tensor in quantized.items():
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, nn.Parameter(tensor, requires_grad=False))
    missing, unexpected = model.load_state_dict(plain, strict=False)
    if record["embedding"]:
        _follow_head(model)
    left = set(missing) - expected - ({record["embedding"]} if record["embedding"] else set())
    if left or unexpected:
        raise ModelError(f"{directory}: weights missing {sorted(left)[:3]} or unexpected {sorted(unexpected)[:3]}")
    return model.to(device).eval()


def torch_parameters(model: nn.Module) -> int:
    """Distinct weights (a tied table counts once, a quantised weight by its logical shape)."""
    seen, total = set(), 0
    tied = _tied_in_memory(model)
    for name, parameter in model.named_parameters(remove_duplicate=True):
        if id(parameter) in seen or name == tied:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return int(total)
