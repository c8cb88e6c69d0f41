"""The zoo's names: which architecture each is, its family and default input.

``create("net4")`` builds a freshly initialised network; ``create("timm:<name>")``
builds any timm model with random weights. Families: ``mnist`` (1×28×28
digits), ``cifar`` (3×32×32 colour images, CIFAR stems), ``fewshot``
(MAML's networks) and ``timm``.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lazyapps.errors import LazyAppsError, UnknownNameError

from . import cifar_nets, fewshot_nets, mnist_nets, resnet32

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class Arch:
    """One zoo entry: ``build(num_classes=, in_channels=, image_size=, **options)`` and its defaults."""

    name: str
    family: str
    build: Callable[..., nn.Module]
    num_classes: int
    in_channels: int
    image_size: int | None
    summary: str
    #: Training hyperparameters of this architecture that differ from its family's (models_zoo.training).
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def default_input(self) -> str:
        if self.image_size is None:
            return f"{self.in_channels} features"
        return f"{self.in_channels}x{self.image_size}x{self.image_size}"


def _sine_mlp(*, num_classes: int, in_channels: int, image_size: int | None, **options: Any) -> nn.Module:
    if image_size is not None:
        raise LazyAppsError("sine_mlp takes a vector, not an image; leave image_size unset")
    return fewshot_nets.SineMLP(in_features=in_channels, out_features=num_classes, **options)


_ENTRIES = [
    Arch("net4", "mnist", mnist_nets.Net4, 10, 1, 28, "Meta-Attack's MNIST target: 2 tanh convs (128, 64), fc 1600-128-10"),
    Arch("lenet5", "mnist", mnist_nets.LeNet5, 10, 1, 28, "LeNet-5 with ReLU and max-pooling"),
    Arch("net2", "mnist", mnist_nets.Net2, 10, 1, 28, "Carlini-Wagner MNIST net: 4 ReLU convs (32,32,64,64), fc 200-200"),
    Arch("net3", "mnist", mnist_nets.Net3, 10, 1, 28, "Madry et al. MNIST net: 2 5x5 convs (32, 64), fc 1024"),
    Arch("mlp", "mnist", mnist_nets.MLP, 10, 1, 28, "fully connected ReLU net, hidden 256-256"),
    Arch("resnet18", "cifar", cifar_nets.resnet18, 10, 3, 32, "ResNet-18, CIFAR stem"),
    Arch("resnet34", "cifar", cifar_nets.resnet34, 10, 3, 32, "ResNet-34, CIFAR stem"),
    Arch("resnet32", "cifar", resnet32.resnet32, 10, 3, 32, "CIFAR ResNet-32 (16/32/64, option-A shortcuts), long-tail backbone"),
    # Simonyan & Zisserman's lr 1e-2: at the family's 0.05, without warm-up, the He-initialised VGGs diverge in the
    # first steps (VGG13 on 6,000 CIFAR-10 images: loss 2.5 -> 8.8, then a one-class model after 2 epochs).
    *[Arch(name, "cifar", cifar_nets.vgg(name), 10, 3, 32, f"{name.upper()} with BN, CIFAR form", {"lr": 0.01})
      for name in cifar_nets.VGG_LAYOUTS],
    Arch("densenet121", "cifar", cifar_nets.densenet121, 10, 3, 32, "DenseNet-121 (growth 32), CIFAR stem"),
    Arch("mobilenetv2", "cifar", cifar_nets.mobilenetv2, 10, 3, 32, "MobileNetV2, CIFAR strides"),
    Arch("conv4", "fewshot", fewshot_nets.Conv4, 5, 1, 28, "MAML's 4x[conv3x3-BN-ReLU-pool] (64 filters), batch-statistics BN"),
    Arch("conv4-strided", "fewshot", fewshot_nets.conv4_strided, 5, 1, 28,
         "conv4 with stride-2 convs instead of pools, spatial mean: MAML's Omniglot net, 4-6x faster on a CPU"),
    Arch("sine_mlp", "fewshot", _sine_mlp, 1, 1, None, "MAML's 1-40-40-1 ReLU sinusoid regressor"),
]
ARCHS: dict[str, Arch] = {arch.name: arch for arch in _ENTRIES}


def available() -> list[str]:
    """The registered architecture names (``timm:<name>`` is accepted besides these)."""
    return list(ARCHS)


def get_arch(name: str) -> Arch:
    """The registry entry of ``name`` (``UnknownNameError`` listing the valid names otherwise)."""
    if name in ARCHS:
        return ARCHS[name]
    if name.startswith(TIMM_PREFIX):
        _check_timm_name(name[len(TIMM_PREFIX):])
        return Arch(name, "timm", _timm_builder(name[len(TIMM_PREFIX):]), 10, 3, 32, "timm model, random init")
    raise UnknownNameError("model", name, [*available(), "timm:<name>"])


def _check_timm_name(model_name: str) -> None:
    import timm

    if not model_name or not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" close matches: {', '.join(close)};" if close else ""
        raise LazyAppsError(f"unknown timm model {model_name!r};{hint} timm.list_models() lists all {len(timm.list_models())}")


def _timm_builder(model_name: str) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, in_channels: int, image_size: int | None, **options: Any) -> nn.Module:
        import timm

        return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)

    return build


def create(name: str, *, num_classes: int | None = None, in_channels: int | None = None, image_size: int | None = None, **options: Any) -> nn.Module:
    """A freshly initialised network ``name`` (see :func:`available`, or ``timm:<name>``).

    Unset ``num_classes``/``in_channels``/``image_size`` take the
    architecture's defaults (10 classes; 1×28×28 for the MNIST family and
    conv4 (5-way); 3×32×32 for the CIFAR family). ``options`` go to the
    architecture (e.g. ``hidden``/``track_running_stats`` for conv4,
    ``normalized_head`` for resnet32). The networks themselves do not
    normalise their input; :func:`models_zoo.train` wraps them so trained zoo
    models take images in [0, 1].
    """
    arch = get_arch(name)
    size = arch.image_size if image_size is None else image_size
    try:
        return arch.build(
            num_classes=arch.num_classes if num_classes is None else num_classes,
            in_channels=arch.in_channels if in_channels is None else in_channels,
            image_size=size,
            **options,
        )
    except TypeError as exc:  # an option this architecture does not take
        raise LazyAppsError(f"model {name!r} does not accept these options ({exc})") from None
    except ValueError as exc:  # e.g. an image too small for the net
        raise LazyAppsError(f"model {name!r}: {exc}") from None


def num_parameters(model: nn.Module) -> int:
    """How many parameters ``model`` has (buffers not counted)."""
    return sum(p.numel() for p in model.parameters())
