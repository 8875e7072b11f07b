import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kubeforge.compression import Candidate
from kubeforge.compression.artifact import candidate_predictor, load_predictor, save_candidate
from kubeforge.onnx_inference import ONNX_LOGITS, ONNX_PROBABILITIES, onnx_predictor, onnx_session
from kubeforge.compression.onnx_int8 import float_logits, onnx_fp32, onnx_int8
from kubeforge.models import build_model
from kubeforge.training import set_seed
from tests.kubeforge.conftest import spec_for


@pytest.fixture(scope="module")
def static_int8(teacher, digits):
    return onnx_int8(teacher, calibration=digits.X_train, calibration_batches=8)


def optimised_ops(onnx_bytes: bytes, tmp_path) -> list[str]:
    """The node types ONNX Runtime actually runs after its graph optimisations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def accuracy(predict, digits) -> float:
    return float(np.mean(predict(digits.X_test).argmax(1) == digits.y_test))


def test_static_int8_runs_fused_int8_kernels_with_float_logits(static_int8, teacher, digits, tmp_path):
    ops = optimised_ops(static_int8.onnx, tmp_path)
    assert ops.count("QGemm") == 3  # every Linear, ReLUs absorbed
    assert "DynamicQuantizeMatMul" not in ops and "Relu" not in ops
    assert "DequantizeLinear" not in ops  # the last layer emits float logits straight into the softmax
    assert ops[-1] == "Softmax" and "Sub" not in ops and "Div" not in ops  # standardisation is one Mul
    assert "static int8" in static_int8.notes[-1]
    assert accuracy(candidate_predictor(static_int8), digits) >= accuracy(candidate_predictor(teacher), digits) - 0.01


def test_without_calibration_a_linear_model_gets_dynamic_int8(teacher, tmp_path):
    dynamic = onnx_int8(teacher)
    assert "dynamic int8" in dynamic.notes[-1]
    assert "DynamicQuantizeMatMul" in optimised_ops(dynamic.onnx, tmp_path)


def test_exported_graph_computes_what_the_torch_model_does(teacher, digits):
    """Folding the mean into the first bias and the softmax into the graph changes no prediction."""
    exported = onnx_fp32(teacher)
    session = onnx_session(exported.onnx)
    logits, probabilities = session.run([ONNX_LOGITS, ONNX_PROBABILITIES], {"features": digits.X_test})
    with torch.no_grad():
        expected = teacher.module(torch.as_tensor(digits.X_test)).numpy()
    assert np.allclose(logits, expected, atol=1e-4)
    assert np.allclose(probabilities, torch.softmax(torch.as_tensor(expected), dim=1).numpy(), atol=1e-5)
    assert np.allclose(candidate_predictor(exported)(digits.X_test), candidate_predictor(teacher)(digits.X_test),
                       atol=1e-5)


def test_saved_static_int8_predicts_exactly_what_the_in_memory_one_did(static_int8, digits, tmp_path):
    expected = candidate_predictor(static_int8)(digits.X_test)
    save_candidate(static_int8, tmp_path)
    loaded = load_predictor(tmp_path)(digits.X_test)
    assert np.array_equal(loaded, expected)
    assert np.allclose(loaded.sum(axis=1), 1.0, atol=1e-5)


def test_logits_only_graphs_written_before_the_softmax_moved_inside_still_load(teacher, digits):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(teacher.module, (torch.zeros(2, 64),), dynamo=True, input_names=["features"],
                                    output_names=[ONNX_LOGITS],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    program.save(buffer)
    predict = onnx_predictor(onnx_session(buffer.getvalue()))
    assert np.allclose(predict(digits.X_test), candidate_predictor(teacher)(digits.X_test), atol=1e-5)


def test_static_int8_conv_net_keeps_float_logits_and_loads_back_exactly(digits, tmp_path):
    set_seed(0)
    spec = spec_for(digits, model="cnn", channels=[8])
    cnn = Candidate(name="cnn", spec=spec, module=build_model(spec).eval())
    quantized = onnx_int8(cnn, calibration=digits.X_train, calibration_batches=4)
    ops = optimised_ops(quantized.onnx, tmp_path)
    assert "QLinearConv" in ops and ops[-2:] == ["QGemm", "Softmax"]
    expected = candidate_predictor(quantized)(digits.X_test)
    save_candidate(quantized, tmp_path / "saved")
    assert np.array_equal(load_predictor(tmp_path / "saved")(digits.X_test), expected)


def test_float_logits_leaves_graphs_without_quantised_logits_alone(teacher):
    model = onnx.load_from_string(onnx_int8(teacher).onnx)  # dynamic: logits come from a float Add
    before = model.SerializeToString()
    float_logits(model)
    assert model.SerializeToString() == before
