"""The registry: every name builds, defaults are right, bad names fail clearly."""
from __future__ import annotations

import pytest
import torch

import models_zoo
from lazyapps.errors import LazyAppsError, UnknownNameError
from models_zoo.registry import ARCHS, get_arch

EXPECTED = {
    "net4", "lenet5", "net2", "net3", "mlp", "resnet18", "resnet34", "resnet32", "vgg11", "vgg13", "vgg16", "vgg19",
    "densenet121", "mobilenetv2", "conv4", "conv4-strided", "sine_mlp",
}


def test_available_lists_every_architecture():
    assert set(models_zoo.available()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_input_gives_logits_of_the_default_classes(name):
    arch = get_arch(name)
    torch.manual_seed(0)
    model = models_zoo.create(name).eval()
    if arch.image_size is None:
        x = torch.rand(2, arch.in_channels)
    else:
        x = torch.rand(2, arch.in_channels, arch.image_size, arch.image_size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, arch.num_classes)
    assert torch.isfinite(out).all()


def test_family_defaults():
    assert {a.name for a in ARCHS.values() if a.family == "mnist"} == {"net4", "lenet5", "net2", "net3", "mlp"}
    for arch in ARCHS.values():
        if arch.family == "mnist":
            assert (arch.in_channels, arch.image_size, arch.num_classes) == (1, 28, 10)
        if arch.family == "cifar":
            assert (arch.in_channels, arch.image_size, arch.num_classes) == (3, 32, 10)


@pytest.mark.parametrize("name", ["net4", "lenet5", "net2", "net3", "mlp", "vgg11", "resnet32", "conv4"])
def test_other_input_shapes_compute_their_flatten_size(name):
    model = models_zoo.create(name, num_classes=7, in_channels=3, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_cifar_nets_take_mnist_sized_inputs():
    for name in ("vgg16", "resnet18", "mobilenetv2"):
        model = models_zoo.create(name, in_channels=1, image_size=28).eval()
        with torch.no_grad():
            assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        models_zoo.create("nosuchnet")
    message = str(info.value)
    assert "nosuchnet" in message and "net4" in message and "resnet32" in message and "timm:<name>" in message
    assert isinstance(info.value, LazyAppsError)


def test_unknown_option_and_too_small_image_are_user_errors():
    with pytest.raises(LazyAppsError, match="net4"):
        models_zoo.create("net4", hidden=3)
    with pytest.raises(LazyAppsError, match="too small"):
        models_zoo.create("net4", image_size=6)
    with pytest.raises(LazyAppsError, match="image_size"):
        models_zoo.create("sine_mlp", image_size=28)


def test_timm_model_with_random_init():
    torch.manual_seed(0)
    model = models_zoo.create("timm:resnet10t", num_classes=4, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 4)
    # Random init, not pretrained: two seeds give different weights.
    torch.manual_seed(1)
    other = models_zoo.create("timm:resnet10t", num_classes=4, in_channels=1)
    first = next(iter(model.state_dict().values()))
    assert not torch.equal(first, next(iter(other.state_dict().values())))


def test_unknown_timm_name_is_a_clear_error():
    with pytest.raises(LazyAppsError, match="unknown timm model 'resnet10tt'.*resnet10t"):
        models_zoo.create("timm:resnet10tt")


def test_parameter_count_helper_matches_a_manual_sum():
    model = models_zoo.create("lenet5")
    # conv 1->6 5x5, conv 6->16 5x5, fc 400-120-84-10 (weights + biases)
    manual = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert models_zoo.num_parameters(model) == manual


def test_a_timm_name_takes_the_zoo_defaults_not_timms():
    """Unset sizes give 10 classes on 3x32x32, as for the CIFAR family (timm's own default is 1000 ImageNet classes)."""
    assert get_arch("timm:resnet10t").default_input == "3x32x32"
    torch.manual_seed(0)
    model = models_zoo.create("timm:resnet10t").eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_sine_mlp_takes_its_input_and_output_widths():
    model = models_zoo.create("sine_mlp", in_channels=3, num_classes=2)
    assert model(torch.rand(4, 3)).shape == (4, 2)
