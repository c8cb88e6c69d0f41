"""Small MNIST-sized classifiers (default input 1×28×28).

These are the whitebox and blackbox targets of the Meta-Attack product: small,
fast to train on a CPU, and different enough from each other (depth, width,
kernel size, activation) that gradients learned on some transfer imperfectly
to the others. Every net computes its flatten size from ``image_size``, so
the same definition serves other square inputs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _after(size: int, *layers: tuple[int, int]) -> int:
    """Spatial size after a chain of ``(kernel, padding)`` stride-1 convs, each followed by a 2×2 max-pool."""
    for kernel, padding in layers:
        size = (size + 2 * padding - kernel + 1) // 2
    if size < 1:
        raise ValueError("image_size is too small for this network")
    return size


class Net4(nn.Module):
    """The MNIST target network of Meta-Attack (Du et al., "Query-efficient Meta
    Attack to Deep Neural Networks", ICLR 2020).

    conv 1→128 3×3, tanh, max-pool 2; conv 128→64 3×3, tanh, max-pool 2;
    fc 1600→128, ReLU; fc 128→10. (1600 = 64·5·5 for 28×28 inputs.)

    tanh is increasing, so it commutes with max-pooling: the layers apply
    the pool first, which computes the same function (and gradients) with a
    quarter of the tanh evaluations.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = _after(image_size, (3, 0), (3, 0))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 128, 3), nn.MaxPool2d(2), nn.Tanh(),
            nn.Conv2d(128, 64, 3), nn.MaxPool2d(2), nn.Tanh(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied
    to document recognition", Proc. IEEE 1998), modern variant.

    conv 6@5×5 (padding 2, so a 28×28 digit is seen as LeCun's 32×32 field),
    ReLU, max-pool; conv 16@5×5, ReLU, max-pool; fc 120, 84, classes. The
    original's tanh/sigmoid units, trainable sub-sampling and sparse C3
    connection table are replaced by ReLU, max-pooling and full connections.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = _after(image_size, (5, 2), (5, 0))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Net2(nn.Module):
    """The MNIST model of Carlini & Wagner ("Towards Evaluating the Robustness of
    Neural Networks", IEEE S&P 2017; architecture of Papernot et al.'s
    distillation paper): a deeper, narrow all-ReLU CNN.

    conv 32, 32 (3×3), max-pool; conv 64, 64 (3×3), max-pool; fc 200, 200,
    classes. The original's dropout is left out so the model is deterministic
    in training mode too (attack gradients are taken in eval mode anyway).
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = image_size
        for _ in range(2):  # two valid 3×3 convs then a 2×2 pool, twice
            side = (side - 4) // 2
        if side < 1:
            raise ValueError("image_size is too small for net2")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Net3(nn.Module):
    """The MNIST challenge model of Madry et al. ("Towards Deep Learning Models
    Resistant to Adversarial Attacks", ICLR 2018): shallow and wide, 5×5 kernels.

    conv 32@5×5 (same padding), ReLU, max-pool; conv 64@5×5 (same), ReLU,
    max-pool; fc 1024, ReLU; fc classes.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = _after(image_size, (5, 2), (5, 2))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 1024), nn.ReLU(), nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A fully connected ReLU network on the flattened image (default two hidden layers of 256).

    The non-convolutional member of the zoo: its input gradients look least
    like those of the CNNs, which makes it a hard transfer target.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
