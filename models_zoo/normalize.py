"""Input normalisation inside the model, so every trained zoo model takes images in [0, 1].

Attacks perturb and clip images in [0, 1] and query the target with them;
keeping the dataset's mean/std inside the model means no caller has to know
(or can forget) how a model was trained.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers, saved with the state dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.channels = len(mean)
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Broadcasting would turn 1-channel images into 3 normalised channels: a CIFAR network would then
        # score MNIST without complaint. One statistic for every channel is fine. (A trace records no check.)
        if not torch.jit.is_tracing() and self.channels != 1 and (x.dim() < 3 or x.shape[-3] != self.channels):
            raise ValueError(f"images of shape {list(x.shape)} given to a network normalised for {self.channels} channels")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def with_normalization(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """``net`` preceded by :class:`Normalize`: a ``Sequential`` whose parts are ``.normalize`` and ``.net``."""
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :func:`with_normalization` wrapper (``model`` itself otherwise)."""
    if isinstance(model, nn.Sequential) and isinstance(getattr(model, "normalize", None), Normalize):
        return model.net
    return model
