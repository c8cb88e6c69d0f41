"""Tiny networks and problems the tests share."""
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


def linear_problem(seed: int, features: int, classes: int, n: int, n_val: int):
    """A float64 linear classifier with seeded random weights, a training batch (x, y) and a validation batch (vx, vy)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(features, classes).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x, y = torch.randn(n, features, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)
    vx, vy = torch.randn(n_val, features, generator=g, dtype=torch.float64), torch.randint(0, classes, (n_val,), generator=g)
    return model, x, y, vx, vy
