"""ResNet-32 for CIFAR, the backbone of the long-tailed recognition literature.

He et al. (CVPR 2016, Sec. 4.2) define the CIFAR ResNets as 6n+2 layers: a
3×3 conv to 16 channels, three stages of n BasicBlocks with 16/32/64
channels (the first block of stages 2 and 3 halves the resolution), global
average pooling and one linear layer. n = 5 gives ResNet-32 (≈0.46M
parameters). Shortcuts that change shape use *option A*: subsample by 2 and
pad the new channels with zeros, so every shortcut is parameter-free.

Cui et al. ("Class-Balanced Loss Based on Effective Number of Samples", CVPR
2019), Cao et al. ("Learning Imbalanced Datasets with Label-Distribution-Aware
Margin Loss", NeurIPS 2019) and Jamal et al. (CVPR 2020) all use this network
on CIFAR-LT, with Kaiming-normal initialisation. LDAM needs a cosine
classifier: ``normalized_head=True`` swaps the last linear layer for
:class:`NormedLinear`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad the extra channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a ReLU between and after the residual sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        same = stride == 1 and in_channels == out_channels
        self.shortcut: nn.Module = nn.Identity() if same else ZeroPadShortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM (Cao et al., NeurIPS 2019): logits are cosines
    between the L2-normalised feature and L2-normalised class weights (the loss
    scales them, s = 30 in the paper)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        # Unit-norm columns to start (renorm caps each column's norm; the
        # large multiplier brings the small ones up to one).
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class ResNetCifar(nn.Module):
    """The 6n+2-layer CIFAR ResNet with option-A shortcuts (``depth=32`` → n=5).

    ``features(x)`` returns the 64-d pooled feature; ``fc`` is the last layer
    (linear, or :class:`NormedLinear` with ``normalized_head=True``).
    """

    def __init__(self, *, depth: int = 32, num_classes: int = 10, in_channels: int = 3, normalized_head: bool = False):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, channels = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            layers = []
            for i in range(blocks):
                layers.append(BasicBlock(channels, width, stride if i == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc: nn.Module = NormedLinear(64, num_classes) if normalized_head else nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally pooled 64-d feature of ``x``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet32(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, normalized_head: bool = False) -> ResNetCifar:
    """ResNet-32 for CIFAR (He et al. 2016; as used by Cui et al. 2019, Cao et al. 2019)."""
    return ResNetCifar(depth=32, num_classes=num_classes, in_channels=in_channels, normalized_head=normalized_head)
