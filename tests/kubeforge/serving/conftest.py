import pytest

from kubeforge.config import TrainConfig
from kubeforge.models import build_model, save_model
from kubeforge.training import set_seed, train_model
from tests.kubeforge.conftest import spec_for


@pytest.fixture(scope="session")
def served_model_dir(digits, tmp_path_factory):
    """A small trained digits MLP saved as a kubeforge model directory (safetensors + model.json)."""
    spec = spec_for(digits, hidden_sizes=[64])
    set_seed(0)
    model = build_model(spec)
    root = tmp_path_factory.mktemp("served")
    train_model(model, digits.X_train, digits.y_train, digits.X_val, digits.y_val,
                TrainConfig(epochs=8, device="cpu"), root / "training", progress=False)
    save_model(model, spec, root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def served_onnx_dir(served_model_dir, tmp_path_factory):
    """The same model as ONNX Runtime int8 (what the compress step usually picks), saved as a model directory."""
    from kubeforge.compression import Candidate
    from kubeforge.compression.artifact import save_candidate
    from kubeforge.compression.onnx_int8 import onnx_int8
    from kubeforge.models import load_model

    model, spec = load_model(served_model_dir)
    directory = tmp_path_factory.mktemp("served-onnx") / "model"
    save_candidate(onnx_int8(Candidate(name="onnx-int8", spec=spec, module=model.eval())), directory)
    return directory
