import json

import numpy as np
import pytest
import torch

from kubeforge.config import TrainConfig
from kubeforge.models import ModelError, build_model, predict_proba, save_model
from kubeforge.training import select_device, set_seed, train_model

FAST = dict(epochs=6, batch_size=64, learning_rate=3e-3, patience=50, device="cpu")


class Interrupted(Exception):
    pass


def fresh(spec, seed=0):
    set_seed(seed)
    return build_model(spec)


def run(spec, digits, workdir, *, seed=0, **kwargs):
    model = fresh(spec, seed)
    config = TrainConfig(**{**FAST, "seed": seed, **kwargs.pop("config", {})})
    result = train_model(model, digits.X_train, digits.y_train, digits.X_val, digits.y_val, config, workdir,
                         progress=False, **kwargs)
    return model, result


def weights_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_trains_digits_to_high_accuracy_and_records_history(digits, digits_spec, tmp_path):
    model, result = run(digits_spec, digits, tmp_path)
    accuracy = np.mean(predict_proba(model, digits.X_val).argmax(1) == digits.y_val)
    assert accuracy >= 0.9
    assert result.epochs_run == 6 and result.device == "cpu" and result.samples_per_second > 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["learning_rate"] < history[0]["learning_rate"]  # cosine decay
    assert {"train_loss", "val_loss", "val_accuracy", "seconds"} <= set(history[0])
    assert (tmp_path / "checkpoint" / "state.safetensors").is_file()


def test_seeded_runs_are_identical_and_seeds_matter(digits, digits_spec, tmp_path):
    a, _ = run(digits_spec, digits, tmp_path / "a", config={"epochs": 2})
    b, _ = run(digits_spec, digits, tmp_path / "b", config={"epochs": 2})
    c, _ = run(digits_spec, digits, tmp_path / "c", seed=1, config={"epochs": 2})
    assert weights_equal(a, b) and not weights_equal(a, c)


def test_resume_after_a_kill_gives_the_same_weights(digits, digits_spec, tmp_path):
    uninterrupted, expected = run(digits_spec, digits, tmp_path / "full")

    def kill_after_epoch_2(epoch, record):
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(digits_spec, digits, tmp_path / "resumed", on_epoch_end=kill_after_epoch_2)
    resumed, result = run(digits_spec, digits, tmp_path / "resumed", seed=0, resume=True)
    assert weights_equal(uninterrupted, resumed)
    assert [h["val_loss"] for h in result.history] == [h["val_loss"] for h in expected.history]


def test_early_stopping_keeps_the_best_epoch(digits, digits_spec, tmp_path):
    _, result = run(digits_spec, digits, tmp_path, config={"epochs": 60, "patience": 1, "learning_rate": 0.05})
    assert result.stopped_early and result.epochs_run < 60
    assert result.best_epoch == min(result.history, key=lambda h: h["val_loss"])["epoch"]


def test_warm_start_continues_from_earlier_weights(digits, digits_spec, tmp_path):
    earlier, _ = run(digits_spec, digits, tmp_path / "first")
    save_model(earlier, digits_spec, tmp_path / "model")
    _, cold = run(digits_spec, digits, tmp_path / "cold", config={"epochs": 1})
    _, warm = run(digits_spec, digits, tmp_path / "warm", warm_start=tmp_path / "model", config={"epochs": 1})
    assert warm.history[0]["val_loss"] < cold.history[0]["val_loss"] / 2


def test_warm_start_from_a_missing_model_is_refused(digits, digits_spec, tmp_path):
    with pytest.raises(ModelError, match="warm_start .* no model.safetensors"):
        run(digits_spec, digits, tmp_path, warm_start=tmp_path / "nothing")


def test_cuda_request_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")
    assert select_device("auto").type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast runs on CUDA only; this machine has no GPU")
def test_bf16_autocast_on_cuda(digits, digits_spec, tmp_path):
    model, result = run(digits_spec, digits, tmp_path, config={"device": "cuda", "mixed_precision": True})
    assert result.device.startswith("cuda")
    assert np.mean(predict_proba(model, digits.X_val).argmax(1) == digits.y_val) >= 0.9
