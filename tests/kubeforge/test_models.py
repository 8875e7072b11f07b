import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kubeforge.config import ModelConfig
from kubeforge.models import (ImageCNN, ModelError, build_model, count_parameters, load_model, predict_proba,
                              save_model)
from tests.kubeforge.conftest import spec_for


def test_mlp_and_cnn_build_for_digits(digits):
    for name in ("mlp", "cnn"):
        model = build_model(spec_for(digits, model=name))
        logits = model(torch.from_numpy(digits.X_test[:5]))
        assert logits.shape == (5, 10), name
    assert isinstance(build_model(spec_for(digits, model="cnn")).body, ImageCNN)


def test_cnn_refuses_non_square_input():
    with pytest.raises(ModelError, match="30 features is not a perfect square"):
        ImageCNN(ModelConfig(model="cnn"), 30, 2)


def test_plugin_by_import_path(digits):
    model = build_model(spec_for(digits, model="tests.kubeforge.plugin_model:TinyNet"))
    assert model(torch.zeros(2, 64)).shape == (2, 10)


@pytest.mark.parametrize("path, message", [
    ("no_such_pkg.mod:Net", "cannot import module 'no_such_pkg.mod'"),
    ("tests.kubeforge.plugin_model:Missing", "has no attribute 'Missing'"),
    ("tests.kubeforge.plugin_model:NOT_A_MODULE", "is not an nn.Module subclass"),
])
def test_bad_plugin_paths_are_named(digits, path, message):
    with pytest.raises(ModelError, match=message):
        build_model(spec_for(digits, model=path))


def test_save_load_round_trip_is_exact_and_not_a_pickle(digits, digits_spec, tmp_path):
    model = build_model(digits_spec)
    save_model(model, digits_spec, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    assert "standardize.mean" in load_file(str(tmp_path / "model.safetensors"))
    assert json.loads((tmp_path / "model.json").read_text())["config"]["hidden_sizes"] == [64]
    loaded, spec = load_model(tmp_path)
    assert spec == digits_spec
    assert np.array_equal(predict_proba(loaded, digits.X_test), predict_proba(model, digits.X_test))
    assert count_parameters(loaded) == count_parameters(model) == 64 * 64 + 64 + 64 * 10 + 10


def test_standardisation_is_inside_the_model(digits, digits_spec):
    model = build_model(digits_spec)
    scaled = (torch.from_numpy(digits.X_test[:3]) - model.standardize.mean) / model.standardize.scale
    assert torch.allclose(model.standardize(torch.from_numpy(digits.X_test[:3])), scaled)


def test_load_errors_name_the_problem(digits_spec, tmp_path):
    with pytest.raises(ModelError, match="no model.json"):
        load_model(tmp_path)
    save_model(build_model(digits_spec), digits_spec, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="unreadable weights"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{")
    with pytest.raises(ModelError, match="invalid model config"):
        load_model(tmp_path)


def test_weights_that_do_not_fit_are_refused(digits, digits_spec, tmp_path):
    save_model(build_model(digits_spec), digits_spec, tmp_path)
    wider = spec_for(digits, hidden_sizes=[32])
    (tmp_path / "model.json").write_text(wider.model_dump_json())
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_model(tmp_path)
