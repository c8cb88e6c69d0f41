"""Tiny networks the engine tests share."""
from __future__ import annotations

import torch
from torch import nn


class WithUnused(nn.Module):
    """A linear layer plus a parameter ``unused`` its forward never reads (autograd gives it no gradient)."""

    def __init__(self, features: int = 3, classes: int = 2, unused: int = 4) -> None:
        super().__init__()
        self.lin, self.unused = nn.Linear(features, classes), nn.Parameter(torch.ones(unused))

    def forward(self, x):
        return self.lin(x)


class TwoInputs(nn.Module):
    """A model of two inputs, a(u) + b(v)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 3), nn.Linear(2, 3)

    def forward(self, u, v):
        return self.a(u) + self.b(v)
