"""onnx-int8: export to ONNX, then ONNX Runtime int8 — the fastest CPU path measured here.

The exported graph is the whole serving computation: raw features in, ``logits`` and ``probabilities`` out, with the
softmax inside the graph (one ORT node costs less than a numpy softmax after ``session.run``). With calibration data
the model is quantised statically (QDQ, uint8 activations, int8 per-tensor weights), which ORT fuses into QGemm/QConv
kernels with the ReLUs absorbed and no run-time activation quantisation; the last layer keeps a float output so the
logits are not re-quantised. Without calibration data a Linear-only model falls back to dynamic quantisation; conv
nets always need calibration (dynamic int8 convs are slow in ONNX Runtime).
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kubeforge.compression.candidate import Candidate, CompressionError, has_conv, linear_layers
from kubeforge.models import Classifier
from kubeforge.onnx_inference import ONNX_INPUT as INPUT
from kubeforge.onnx_inference import ONNX_LOGITS as LOGITS
from kubeforge.onnx_inference import ONNX_PROBABILITIES as PROBABILITIES

# Left in float: the standardisation (one elementwise op, and its per-feature scale cannot live in a per-tensor int8
# activation) and the softmax (10 values; quantising it costs accuracy and time).
_FLOAT_OPS = frozenset({"Sub", "Div", "Mul", "Softmax"})


class _Servable(nn.Module):
    """Raw features in, (logits, probabilities) out.

    When the body starts with a Linear, the standardisation becomes a single multiply: the mean moves into that
    Linear's bias, which is exact. The 1/scale stays out of the weights: near-constant pixels have tiny scales, and
    stretched columns ruin a per-tensor int8 weight scale (accuracy fell from 97.8 % to 86 % when we tried).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        model = copy.deepcopy(model).float().cpu().eval()
        first = _first_linear(model)
        if first is None:
            self.model, self.inv_scale = model, None
            return
        inv_scale = 1.0 / model.standardize.scale
        with torch.no_grad():
            first.bias.sub_(first.weight @ (model.standardize.mean * inv_scale))
        self.model = model.body
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x) if self.inv_scale is None else self.model(x * self.inv_scale)
        return logits, torch.softmax(logits, dim=1)


def _first_linear(model: nn.Module) -> nn.Linear | None:
    if not isinstance(model, Classifier) or not isinstance(model.body, nn.Sequential) or not len(model.body):
        return None
    first = model.body[0]
    return first if isinstance(first, nn.Linear) and first.bias is not None else None


def export_onnx(model: nn.Module, input_dim: int) -> bytes:
    """Dynamic batch dimension; input ``features`` (raw float32), outputs ``logits`` and ``probabilities``."""
    example = torch.zeros(2, input_dim, dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Servable(model).eval(), (example,), dynamo=True, input_names=[INPUT],
                                    output_names=[LOGITS, PROBABILITIES],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},),
                                    verbose=False)
    program.save(buffer)
    data = buffer.getvalue()
    if not data:
        raise CompressionError("ONNX export produced no graph")
    return data


class _Calibration:
    """onnxruntime CalibrationDataReader over training batches."""

    def __init__(self, X: np.ndarray, batches: int, batch_size: int = 32):
        self._batches = [X[i:i + batch_size].astype(np.float32) for i in range(0, min(len(X), batches * batch_size),
                                                                                batch_size)]
        self._iter = iter(self._batches)

    def get_next(self):
        batch = next(self._iter, None)
        return None if batch is None else {INPUT: batch}

    def rewind(self):
        self._iter = iter(self._batches)


def float_logits(model_proto) -> None:
    """Drop the QuantizeLinear -> DequantizeLinear pair on the logits, in place.

    ORT then fuses the last layer into a QGemm with a float output instead of quantising the logits to uint8 and
    back: one node fewer per call, and the softmax sees unrounded logits.
    """
    graph = model_proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    dequantize = producer.get(LOGITS)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return
    quantize = producer.get(dequantize.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear":
        return
    source = producer.get(quantize.input[0])

    def readers(name: str) -> list:
        return [node for node in graph.node if name in node.input]

    if source is None or readers(quantize.input[0]) != [quantize] or readers(quantize.output[0]) != [dequantize]:
        return
    source.output[list(source.output).index(quantize.input[0])] = LOGITS
    used = set(quantize.input[1:]) | set(dequantize.input[1:])
    graph.node.remove(quantize)
    graph.node.remove(dequantize)
    still_used = {name for node in graph.node for name in node.input}
    for initializer in [i for i in graph.initializer if i.name in used and i.name not in still_used]:
        graph.initializer.remove(initializer)


def check_onnx_int8(model: nn.Module, calibration: np.ndarray | None) -> None:
    if has_conv(model):
        if calibration is None or len(calibration) == 0:
            raise CompressionError("onnx-int8 on a conv net uses static quantisation and needs calibration data "
                                   "(the train split); none was given")
    elif not linear_layers(model):
        raise CompressionError("onnx-int8 needs Linear or Conv2d layers; this model has neither")


def onnx_int8(candidate: Candidate, calibration: np.ndarray | None = None, calibration_batches: int = 8) -> Candidate:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if candidate.kind != "torch" or candidate.spec.precision != "fp32":
        raise CompressionError(f"onnx-int8 needs an fp32 torch model, not {candidate.name}")
    check_onnx_int8(candidate.module, calibration)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(export_onnx(candidate.module, candidate.spec.input_dim))
        if calibration is not None and len(calibration):
            keep_float = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in _FLOAT_OPS]
            quantize_static(str(fp32), str(int8), _Calibration(calibration, calibration_batches),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=False, nodes_to_exclude=keep_float,
                            calibrate_method=CalibrationMethod.MinMax)
            quantized = onnx.load(str(int8))
            float_logits(quantized)
            data = quantized.SerializeToString()
            how = (f"ONNX Runtime static int8 (QDQ, u8 activations, s8 weights), calibrated on {calibration_batches} "
                   "train batches")
        else:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            data = int8.read_bytes()
            how = "ONNX Runtime dynamic int8 (MatMul weights int8; no calibration data given)"
    return Candidate(name=candidate.name, spec=candidate.spec.model_copy(update={"precision": "int8"}), onnx=data,
                     notes=candidate.notes + [how])


def onnx_fp32(candidate: Candidate) -> Candidate:
    return Candidate(name=candidate.name, spec=candidate.spec, onnx=export_onnx(candidate.module,
                                                                                candidate.spec.input_dim),
                     notes=candidate.notes + ["ONNX fp32"])
