"""onnx-int8: export to ONNX, then ONNX Runtime int8 — the fastest CPU path measured here.

Linear-heavy models use dynamic quantisation (weights int8, activations quantised at run time); conv nets use static
quantisation calibrated on training batches, because dynamic int8 convs are slow in ONNX Runtime.
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


def export_onnx(model: nn.Module, input_dim: int) -> bytes:
    """Export with a dynamic batch dimension; input ``features`` (raw float32), output ``logits``."""
    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.zeros(2, input_dim, dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["features"],
                                    output_names=["logits"],
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
        return None if batch is None else {"features": batch}

    def rewind(self):
        self._iter = iter(self._batches)


def check_onnx_int8(model: nn.Module, calibration: np.ndarray | None) -> None:
    if has_conv(model):
        if calibration is None or len(calibration) == 0:
            raise CompressionError("onnx-int8 on a conv net uses static quantisation and needs calibration data "
                                   "(the train split); none was given")
    elif not linear_layers(model):
        raise CompressionError("onnx-int8 needs Linear or Conv2d layers; this model has neither")


def onnx_int8(candidate: Candidate, calibration: np.ndarray | None = None, calibration_batches: int = 8) -> Candidate:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if candidate.kind != "torch" or candidate.spec.precision != "fp32":
        raise CompressionError(f"onnx-int8 needs an fp32 torch model, not {candidate.name}")
    check_onnx_int8(candidate.module, calibration)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(export_onnx(candidate.module, candidate.spec.input_dim))
        if has_conv(candidate.module):
            quantize_static(str(fp32), str(int8), _Calibration(calibration, calibration_batches),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
            how = f"ONNX Runtime static int8, calibrated on {calibration_batches} train batches"
        else:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            how = "ONNX Runtime dynamic int8 (MatMul weights int8)"
        data = int8.read_bytes()
    return Candidate(name=candidate.name, spec=candidate.spec.model_copy(update={"precision": "int8"}), onnx=data,
                     notes=candidate.notes + [how])


def onnx_fp32(candidate: Candidate) -> Candidate:
    return Candidate(name=candidate.name, spec=candidate.spec, onnx=export_onnx(candidate.module,
                                                                                candidate.spec.input_dim),
                     notes=candidate.notes + ["ONNX fp32"])
