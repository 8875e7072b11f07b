"""A user-supplied architecture, loaded by import path in the model tests."""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, config):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


NOT_A_MODULE = 42
