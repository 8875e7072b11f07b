import copy

import numpy as np
import pytest
import torch
from torch import nn

from kubeforge.compression import Candidate, CompressionError
from kubeforge.compression.artifact import candidate_predictor, load_predictor, save_candidate
from kubeforge.compression.bench import measure
from kubeforge.compression.cast import cast
from kubeforge.compression.distill import distill
from kubeforge.compression.onnx_int8 import check_onnx_int8, onnx_int8
from kubeforge.compression.prune import prune_structured, prune_unstructured, weight_sparsity
from kubeforge.compression.quantize import check_int8_dynamic, int8_dynamic
from kubeforge.models import Classifier, Standardize, count_parameters, load_model
from tests.kubeforge.conftest import spec_for


def accuracy(candidate, digits) -> float:
    return float(np.mean(candidate_predictor(candidate)(digits.X_test).argmax(1) == digits.y_test))


def measured(candidate, digits, baseline=None):
    return measure(candidate, digits.X_test, digits.y_test, threads=1, runs=100, baseline=baseline)


@pytest.fixture(scope="module")
def baseline(teacher, digits):
    return measured(teacher, digits)


@pytest.mark.parametrize("method", [int8_dynamic, onnx_int8])
def test_int8_is_at_least_3_5x_smaller_and_keeps_accuracy(method, teacher, digits, baseline):
    result = measured(method(copy.copy(teacher)), digits, baseline)
    assert result.size_ratio >= 3.5
    assert result.accuracy_drop <= 1.0


def test_structured_pruning_rebuilds_smaller_working_layers(teacher, digits, data):
    pruned = prune_structured(teacher, data, fraction=0.5, finetune_epochs=3)
    assert pruned.spec.config.hidden_sizes == [128, 128]
    assert count_parameters(pruned.module) < count_parameters(teacher.module) / 2
    assert accuracy(pruned, digits) >= 0.9


def test_structured_pruning_removes_cnn_filters(digits, data, tmp_path):
    from kubeforge.config import TrainConfig
    from kubeforge.models import build_model
    from kubeforge.training import set_seed, train_model

    spec = spec_for(digits, model="cnn", channels=[16, 32])
    set_seed(0)
    cnn = build_model(spec)
    train_model(cnn, *data, TrainConfig(epochs=4, device="cpu"), tmp_path / "train", progress=False)
    teacher = Candidate(name="cnn", spec=spec, module=cnn.eval())
    pruned = prune_structured(teacher, data, fraction=0.5, finetune_epochs=2)
    assert pruned.spec.config.channels == [8, 16]
    assert count_parameters(pruned.module) < count_parameters(cnn) / 2
    assert accuracy(pruned, digits) >= 0.85
    save_candidate(pruned, tmp_path / "saved")
    assert np.allclose(load_predictor(tmp_path / "saved")(digits.X_test), candidate_predictor(pruned)(digits.X_test),
                       atol=1e-6)


def test_unstructured_pruning_reaches_the_requested_sparsity(teacher, digits, data):
    pruned = prune_unstructured(teacher, data, sparsity=0.8, finetune_epochs=2)
    assert 0.79 <= weight_sparsity(pruned.module) <= 0.81
    assert not any(name.endswith("_mask") for name, _ in pruned.module.named_buffers())  # made permanent
    assert accuracy(pruned, digits) >= 0.9
    assert weight_sparsity(teacher.module) < 0.01  # the teacher is untouched


def test_distilled_student_is_smaller_and_accurate(teacher, digits, data):
    student = distill(teacher, data, hidden_sizes=[32], epochs=15, temperature=3.0, alpha=0.5)
    assert count_parameters(student.module) < count_parameters(teacher.module) / 10
    assert accuracy(student, digits) >= 0.9


@pytest.mark.parametrize("build", [
    lambda t, d: int8_dynamic(t),
    lambda t, d: onnx_int8(t),
    lambda t, d: prune_structured(t, d, fraction=0.5, finetune_epochs=1),
    lambda t, d: cast(t, "bf16"),
    lambda t, d: onnx_int8(distill(t, d, hidden_sizes=[32], epochs=3, temperature=3.0, alpha=0.5)),
], ids=["int8-dynamic", "onnx-int8", "prune-structured", "bf16", "distill+onnx-int8"])
def test_saved_candidate_predicts_exactly_what_the_in_memory_one_did(build, teacher, data, digits, tmp_path):
    candidate = build(teacher, data)
    expected = candidate_predictor(candidate)(digits.X_test)
    save_candidate(candidate, tmp_path)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    loaded = load_predictor(tmp_path)(digits.X_test)
    assert np.array_equal(loaded.argmax(1), expected.argmax(1))
    assert np.allclose(loaded, expected, atol=1e-5)


def test_fp32_model_dir_still_loads_with_load_model(teacher, tmp_path):
    save_candidate(teacher, tmp_path)
    model, spec = load_model(tmp_path)
    assert spec.precision == "fp32" and count_parameters(model) == count_parameters(teacher.module)


def conv_only(digits) -> Candidate:
    """A model with no Linear layer at all: conv to class maps, then flatten."""
    spec = spec_for(digits, model="cnn")
    body = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 10, kernel_size=8), nn.Flatten())
    return Candidate(name="conv", spec=spec, module=Classifier(Standardize(spec.scaler_mean, spec.scaler_scale),
                                                              body))


def test_methods_that_do_not_fit_the_model_are_refused(digits):
    with pytest.raises(CompressionError, match="int8-dynamic needs Linear layers; this model has none"):
        check_int8_dynamic(conv_only(digits).module)
    with pytest.raises(CompressionError, match="needs calibration data"):
        check_onnx_int8(conv_only(digits).module, None)


def test_conv_net_gets_static_int8_with_calibration(digits):
    candidate = conv_only(digits)
    quantized = onnx_int8(candidate, calibration=digits.X_train, calibration_batches=4)
    assert "static int8" in quantized.notes[-1]
    out = candidate_predictor(quantized)(digits.X_test[:5])
    assert out.shape == (5, 10) and np.allclose(out.sum(axis=1), 1, atol=1e-5)


def test_quantised_models_are_final(teacher):
    quantized = int8_dynamic(teacher)
    with pytest.raises(CompressionError, match="needs an fp32 torch model"):
        int8_dynamic(quantized)
    with torch.no_grad():
        assert quantized.module(torch.zeros(1, 64)).shape == (1, 10)
