import random

import numpy as np
import pytest
import torch

from kubeforge.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint


def setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    return model, optimizer, scheduler


def step(model, optimizer, scheduler):
    loss = model(torch.randn(16, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_round_trip_restores_everything(tmp_path):
    model, optimizer, scheduler = setup()
    for _ in range(3):
        step(model, optimizer, scheduler)
    save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer, scheduler=scheduler, epoch=3,
                    extra={"best": 0.5})
    expected_draws = (torch.rand(3), np.random.rand(), random.random())
    restored = setup(seed=99)
    info = load_checkpoint(tmp_path / "ckpt", model=restored[0], optimizer=restored[1], scheduler=restored[2])
    assert info == {"epoch": 3, "extra": {"best": 0.5}}
    for a, b in zip(model.state_dict().values(), restored[0].state_dict().values()):
        assert torch.equal(a, b)
    assert restored[2].get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(torch.rand(3), expected_draws[0])
    assert np.random.rand() == expected_draws[1] and random.random() == expected_draws[2]
    for modules in ((model, optimizer, scheduler), restored):  # same batch; the restored AdamW moments must agree
        torch.manual_seed(7)
        step(*modules)
    for a, b in zip(model.state_dict().values(), restored[0].state_dict().values()):
        assert torch.equal(a, b)


def test_files_are_safetensors_and_json_and_rewrite_is_atomic(tmp_path):
    model, optimizer, scheduler = setup()
    for epoch in (1, 2):
        save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                        extra={})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["state.json", "state.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_or_mismatched_checkpoint(tmp_path):
    model, optimizer, scheduler = setup()
    assert not has_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler)
    save_checkpoint(tmp_path / "c", model=model, optimizer=optimizer, scheduler=scheduler, epoch=1, extra={})
    other = torch.nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(tmp_path / "c", model=other, optimizer=torch.optim.AdamW(other.parameters()),
                        scheduler=scheduler)
