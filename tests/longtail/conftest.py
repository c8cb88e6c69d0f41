"""Small models and data shared by the long-tail tests."""
from __future__ import annotations

import pytest
import torch
from torch import nn


def tiny_bn_net(num_classes: int = 10, channels: int = 3) -> nn.Module:
    """A conv-BN-ReLU net small enough for float64 finite differences and fast training tests."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, num_classes))


@pytest.fixture
def tiny_net():
    return tiny_bn_net
