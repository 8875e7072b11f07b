import json
import os
import subprocess
import sys
import textwrap
from http import HTTPStatus

import numpy as np
import pytest

from kubeforge.compression.artifact import load_predictor
from kubeforge.config import ServeConfig
from kubeforge.serving.runtime import ModelRuntime, RequestError


@pytest.fixture(scope="module")
def runtime(served_model_dir):
    runtime = ModelRuntime.load(served_model_dir, ServeConfig(max_instances=4))
    runtime.warm_up()
    return runtime


def test_predictions_match_the_offline_model(runtime, served_model_dir, digits):
    rows = digits.X_test[:3]
    predictions = runtime.predict(runtime.parse(rows.tolist()))
    offline = load_predictor(served_model_dir)(rows)
    assert [p["class_index"] for p in predictions] == offline.argmax(1).tolist()
    assert predictions[0]["class_name"] == digits.class_names[offline.argmax(1)[0]]
    assert np.allclose([p["probabilities"] for p in predictions], offline, atol=1e-6)


def test_named_features_are_mapped_by_name(runtime, digits):
    named = [dict(zip(digits.feature_names, digits.X_test[0].tolist()))]
    assert np.array_equal(runtime.parse(named), digits.X_test[:1])


@pytest.mark.parametrize("instances, status, message", [
    ("not a list", HTTPStatus.BAD_REQUEST, "'instances' must be a list"),
    ([], HTTPStatus.BAD_REQUEST, "'instances' is empty"),
    ([[0.0] * 63], HTTPStatus.BAD_REQUEST, "instance 0: expected 64 features, got 63"),
    ([[0.0] * 63 + ["x"]], HTTPStatus.BAD_REQUEST, "instance 0, feature 63: 'x' is not a number"),
    ([[0.0] * 63 + [True]], HTTPStatus.BAD_REQUEST, "feature 63: True is not a number"),
    ([[0.0] * 63 + [float("nan")]], HTTPStatus.BAD_REQUEST, "feature 63: nan is not finite"),
    ([[0.0] * 63 + [float("inf")]], HTTPStatus.BAD_REQUEST, "feature 63: inf is not finite"),
    ([[0.0] * 64] * 5, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too many instances: 5 > limit 4"),
    ([{"pixel_0_0": 1.0}], HTTPStatus.BAD_REQUEST, "instance 0: missing feature\\(s\\) pixel_0_1"),
    ([7], HTTPStatus.BAD_REQUEST, "instance 0: expected a list of 64 numbers"),
])
def test_bad_requests_name_the_problem(runtime, instances, status, message):
    with pytest.raises(RequestError, match=message) as error:
        runtime.parse(instances)
    assert error.value.status == status


def test_unknown_named_feature(runtime, digits):
    row = dict(zip(digits.feature_names, [0.0] * 64), extra=1.0)
    with pytest.raises(RequestError, match="unknown feature\\(s\\) extra"):
        runtime.parse([row])


def test_resolve_model_dir_prefers_the_compressed_model(tmp_path, served_model_dir):
    import shutil

    from kubeforge.config import ConfigError
    from kubeforge.serving.source import resolve_model_dir

    run = tmp_path / "run"
    shutil.copytree(served_model_dir, run / "train" / "trained_model")
    assert resolve_model_dir(run) == run / "train" / "trained_model"
    shutil.copytree(served_model_dir, run / "compress" / "compressed_model")
    assert resolve_model_dir(run) == run / "compress" / "compressed_model"
    assert resolve_model_dir(served_model_dir) == served_model_dir
    with pytest.raises(ConfigError, match="neither a model directory"):
        resolve_model_dir(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_dir(tmp_path / "missing")


@pytest.mark.parametrize("value, message", [
    ("1e39", "feature 'pixel_0_5': the value is outside the float32 range"),
    ("1" + "0" * 400, "instance 0: an integer is too large for a float"),
])
def test_values_a_float32_model_cannot_take_are_refused(runtime, value, message):
    instances = json.loads("[[" + "0," * 5 + value + ",0" * 58 + "]]")
    with pytest.raises(RequestError, match=message):
        runtime.parse(instances)


def test_onnx_model_serves_the_same_classes_without_torch(served_onnx_dir, served_model_dir, digits, tmp_path):
    rows = digits.X_test[:16]
    onnx = ModelRuntime.load(served_onnx_dir, ServeConfig(threads=1))
    assert onnx.describe()["precision"] == "int8"
    agreement = (onnx.predict_proba(rows).argmax(1) == load_predictor(served_model_dir)(rows).argmax(1)).mean()
    assert agreement >= 0.9  # int8 may flip a borderline row, not the model
    probe = textwrap.dedent(f"""
        import sys
        import numpy as np
        from kubeforge.serving.service import KubeforgeClassifier  # the whole service module, as a worker loads it
        from kubeforge.serving.runtime import ModelRuntime
        runtime = ModelRuntime.load({str(served_onnx_dir)!r})
        runtime.warm_up()
        runtime.predict(np.zeros((2, 64), dtype=np.float32))
        print("torch imported:", "torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch imported: False" in done.stdout
