"""The standard few-shot learners' networks.

Both come from MAML (Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for
Fast Adaptation of Deep Networks", ICML 2017), following Vinyals et al.'s
(2016) embedding network, and are used unchanged by Reptile, iMAML, Meta-SGD,
the lazy teacher and TURTLE.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


DOWNSAMPLING = ("pool", "stride")


class Conv4(nn.Module):
    """Four blocks of [3×3 conv (padding 1), BatchNorm, ReLU, 2×2 max-pool] and a linear head.

    ``hidden`` filters per block: 64 for Omniglot, 32 for miniImageNet in MAML.
    ``track_running_stats=False`` (the default) makes BatchNorm always use the
    current batch's statistics, as MAML does (it never keeps running
    averages); it also has no buffers to update, so the net runs under
    ``torch.func.functional_call`` + ``vmap`` over tasks. Pool uses
    ``ceil_mode=False`` as in MAML: 28×28 ends at 1×1, 84×84 at 5×5.

    ``downsample="stride"`` is the variant MAML's released code builds by default and uses for Omniglot
    (max-pooling is its miniImageNet option): each block's convolution has stride 2 and no pool follows, and
    the last block's feature map is averaged over space (28×28 → 14, 7, 4, 2 → mean), so the head sees
    ``hidden`` features at any image size. The same parameters; on one CPU thread a forward and backward
    pass is 4–6× faster (it computes a quarter of the outputs and skips the pools).
    """

    def __init__(self, *, num_classes: int = 5, in_channels: int = 1, image_size: int = 28, hidden: int = 64,
                 track_running_stats: bool = False, downsample: str = "pool"):
        super().__init__()
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample must be one of {DOWNSAMPLING}, got {downsample!r}")
        strided = downsample == "stride"
        blocks: list[nn.Module] = []
        channels, side = in_channels, image_size
        for _ in range(4):
            blocks += [
                nn.Conv2d(channels, hidden, 3, stride=2 if strided else 1, padding=1),
                nn.BatchNorm2d(hidden, track_running_stats=track_running_stats),
                nn.ReLU(),
            ]
            if not strided:
                blocks.append(nn.MaxPool2d(2))
                side //= 2
            channels = hidden
        if strided:
            blocks.append(nn.AdaptiveAvgPool2d(1))  # the last map's mean over space, whatever its size
            side = 1
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for conv4 (needs at least 16)")
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.feature_dim = hidden * side * side
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def conv4_strided(**options: Any) -> Conv4:
    """:class:`Conv4` with stride-2 convolutions in place of max-pooling: MAML's Omniglot network."""
    return Conv4(downsample="stride", **options)


class SineMLP(nn.Module):
    """The 1-40-40-1 ReLU regressor of MAML's sinusoid task (amplitude in [0.1, 5],
    phase in [0, π], x in [-5, 5])."""

    def __init__(self, *, in_features: int = 1, out_features: int = 1, hidden: int = 40):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
