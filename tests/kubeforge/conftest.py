import numpy as np
import pytest

from kubeforge.config import DataConfig, ModelConfig
from kubeforge.data import load_table, split_table
from kubeforge.models import ModelSpec


@pytest.fixture(scope="session")
def digits():
    return split_table(load_table("digits"), DataConfig())


def spec_for(splits, **model) -> ModelSpec:
    return ModelSpec(config=ModelConfig(**model), input_dim=splits.num_features, num_classes=splits.num_classes,
                     feature_names=splits.feature_names, class_names=splits.class_names,
                     scaler_mean=splits.scaler.mean.tolist(), scaler_scale=splits.scaler.scale.tolist(),
                     image_shape=splits.image_shape)


@pytest.fixture
def digits_spec(digits):
    return spec_for(digits, hidden_sizes=[64], dropout=0.1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
