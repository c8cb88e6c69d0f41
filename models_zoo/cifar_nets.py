"""CIFAR-sized classifiers (default input 3×32×32) with CIFAR stems.

ImageNet networks shrink a 224×224 image by 4 in their stem (7×7 stride-2
conv + max-pool); on 32×32 images that throws most of the image away. The
CIFAR versions used throughout the literature start with a 3×3 stride-1 conv
and no max-pool. ResNet, DenseNet and MobileNetV2 are torchvision's
definitions with the stem swapped; VGG is the usual CIFAR VGG (BN after every
conv, one linear layer on the 512-d pooled feature).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision import models as tv


def _stem_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision initialises its convs
    return conv


def _resnet(builder, num_classes: int, in_channels: int) -> nn.Module:
    model = builder(num_classes=num_classes)
    model.conv1 = _stem_conv(in_channels, 64)
    model.maxpool = nn.Identity()
    return model


def resnet18(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-18 (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016), CIFAR stem."""
    return _resnet(tv.resnet18, num_classes, in_channels)


def resnet34(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-34 (He et al., CVPR 2016), CIFAR stem."""
    return _resnet(tv.resnet34, num_classes, in_channels)


def densenet121(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """DenseNet-121 (Huang, Liu, van der Maaten, Weinberger, "Densely Connected
    Convolutional Networks", CVPR 2017), growth 32, CIFAR stem (3×3 conv to 64 channels, no pool)."""
    model = tv.densenet121(num_classes=num_classes)
    model.features.conv0 = _stem_conv(in_channels, 64)
    model.features.pool0 = nn.Identity()
    return model


def mobilenetv2(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted
    Residuals and Linear Bottlenecks", CVPR 2018), CIFAR variant.

    The stem conv and the first 24-channel bottleneck run at stride 1 instead
    of 2 (total stride 8, a 4×4 final map on 32×32 inputs), the common CIFAR
    adaptation.
    """
    model = tv.mobilenet_v2(num_classes=num_classes)
    stem = model.features[0][0]
    new = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out")
    model.features[0][0] = new
    depthwise = model.features[2].conv[1][0]  # the stride-2 3×3 depthwise conv of the first 16→24 block
    depthwise.stride = (1, 1)
    return model


VGG_LAYOUTS: dict[str, tuple[int | str, ...]] = {
    # Simonyan & Zisserman's configurations A, B, D, E ("M" = 2×2 max-pool).
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG with batch normalisation (Simonyan & Zisserman, "Very Deep
    Convolutional Networks for Large-Scale Image Recognition", ICLR 2015;
    BN after Ioffe & Szegedy 2015), CIFAR form.

    3×3 convs, each followed by BN and ReLU; five 2×2 max-pools bring 32×32 to
    1×1, and one linear layer maps the 512 features to the classes (the
    ImageNet 4096-wide fully connected head is dropped, as is usual on
    CIFAR). Pools use ``ceil_mode`` and a global average pool follows, so
    28×28 or larger inputs work too.
    """

    def __init__(self, layout: Sequence[int | str], *, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False), nn.BatchNorm2d(int(item)), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def vgg(name: str):
    """The builder of VGG configuration ``name`` (``vgg11`` ... ``vgg19``)."""

    def build(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> VGG:
        return VGG(VGG_LAYOUTS[name], num_classes=num_classes, in_channels=in_channels)

    build.__doc__ = f"{name.upper()} with batch normalisation, CIFAR form (see :class:`VGG`)."
    return build
