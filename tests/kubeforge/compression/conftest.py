import pytest

from kubeforge.compression import Candidate
from kubeforge.config import TrainConfig
from kubeforge.models import build_model
from kubeforge.training import set_seed, train_model
from tests.kubeforge.conftest import spec_for


@pytest.fixture(scope="session")
def teacher(digits, tmp_path_factory):
    """One trained digits MLP for the whole session; methods copy it, never change it."""
    spec = spec_for(digits, hidden_sizes=[256, 256], dropout=0.1)
    set_seed(0)
    model = build_model(spec)
    train_model(model, digits.X_train, digits.y_train, digits.X_val, digits.y_val,
                TrainConfig(epochs=10, patience=20, device="cpu"), tmp_path_factory.mktemp("teacher"), progress=False)
    return Candidate(name="baseline", spec=spec, module=model.eval())


@pytest.fixture(scope="session")
def data(digits):
    return digits.X_train, digits.y_train, digits.X_val, digits.y_val
