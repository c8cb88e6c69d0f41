"""Shared fixtures of the attack tests."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lazyapps.data import load_dataset


@pytest.fixture(scope="session")
def mnist_softmax(data_root):
    """Softmax regression trained for a second on 3,000 real MNIST digits, and the first 8 test digits it gets right."""
    ds = load_dataset("mnist", root=data_root)
    torch.manual_seed(0)
    x_train, y_train = ds.train.images[:3000].float().div(255), ds.train.labels[:3000]
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    x_test, y_test = ds.test.images[:200].float().div(255), ds.test.labels[:200]
    with torch.no_grad():
        right = model(x_test).argmax(1) == y_test
    assert right.float().mean() > 0.8
    return model.eval(), x_test[right][:8], y_test[right][:8]
