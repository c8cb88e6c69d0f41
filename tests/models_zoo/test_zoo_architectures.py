"""Architecture details that the products rely on, checked against independent references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

import models_zoo
from models_zoo.fewshot_nets import Conv4
from models_zoo.normalize import Normalize, unwrap, with_normalization
from models_zoo.resnet32 import NormedLinear, ZeroPadShortcut


def test_net4_layers_match_meta_attack():
    net = models_zoo.create("net4")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 128, (3, 3)), (128, 64, (3, 3))]
    assert [(l.in_features, l.out_features) for l in linears] == [(1600, 128), (128, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in net.modules()) == 2
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 1


def test_net4_equals_the_literal_tanh_then_pool_order():
    """Pooling before tanh is an optimisation: the paper's order must give the same logits and input gradients."""
    torch.manual_seed(0)
    net = models_zoo.create("net4").eval()
    conv1, conv2 = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    fc1, fc2 = [m for m in net.modules() if isinstance(m, nn.Linear)]

    def reference(x):
        x = F.max_pool2d(torch.tanh(conv1(x)), 2)
        x = F.max_pool2d(torch.tanh(conv2(x)), 2)
        return fc2(F.relu(fc1(x.flatten(1))))

    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    out = net(x)
    expected = reference(x)
    torch.testing.assert_close(out, expected)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (grad_ref,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(grad, grad_ref)


def test_resnet32_has_about_0_46m_parameters():
    net = models_zoo.create("resnet32")
    count = models_zoo.num_parameters(net)
    # conv1 + bn1, 15 blocks of two 3x3 conv-BN layers (16/32/64 wide), fc 64->10; option-A adds nothing.
    by_hand = 3 * 16 * 9 + 32
    for width, first_in in ((16, 16), (32, 16), (64, 32)):
        by_hand += first_in * width * 9 + width * width * 9 + 4 * width  # first block of the stage
        by_hand += 4 * (2 * width * width * 9 + 4 * width)
    by_hand += 64 * 10 + 10
    assert count == by_hand == 464_154
    assert abs(count - 0.46e6) / 0.46e6 < 0.02
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 32  # 31 convs and one linear layer: ResNet-32


def test_option_a_shortcut_is_parameter_free_and_pads_zeros():
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0
    net = models_zoo.create("resnet32")
    assert sum(isinstance(m, ZeroPadShortcut) for m in net.modules()) == 2
    assert all(not isinstance(m, nn.Conv2d) or m.kernel_size == (3, 3) for m in net.modules())  # no 1x1 projections


def test_resnet32_features_fc_and_normalized_head():
    torch.manual_seed(0)
    net = models_zoo.create("resnet32").eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        features = net.features(x)
        assert features.shape == (3, 64)
        torch.testing.assert_close(net.fc(features), net(x))
    cosine = models_zoo.create("resnet32", normalized_head=True).eval()
    assert isinstance(cosine.fc, NormedLinear)
    with torch.no_grad():
        logits = cosine(x)
        f = cosine.features(x)
        w = cosine.fc.weight
        expected = (f / f.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=0, keepdim=True))
    torch.testing.assert_close(logits, expected)
    assert logits.abs().max() <= 1 + 1e-5


def test_cifar_stems_keep_the_resolution():
    net = models_zoo.create("resnet18")
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    seen = {}
    net.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("layer4", o.shape))
    mobile = models_zoo.create("mobilenetv2")
    mobile.features.register_forward_hook(lambda m, i, o: seen.__setitem__("mobile", o.shape))
    dense = models_zoo.create("densenet121")
    assert dense.features.conv0.kernel_size == (3, 3) and isinstance(dense.features.pool0, nn.Identity)
    with torch.no_grad():
        net.eval()(torch.rand(2, 3, 32, 32))
        mobile.eval()(torch.rand(2, 3, 32, 32))
    assert seen["layer4"][-2:] == (4, 4)  # total stride 8, as in the CIFAR ResNets
    assert seen["mobile"][-2:] == (4, 4)


def test_vgg_has_batchnorm_after_every_conv():
    for name, convs in (("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)):
        net = models_zoo.create(name)
        layers = list(net.features)
        conv_positions = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        assert len(conv_positions) == convs
        assert all(isinstance(layers[i + 1], nn.BatchNorm2d) for i in conv_positions)


def test_conv4_runs_under_vmap_over_tasks():
    torch.manual_seed(0)
    net = Conv4(num_classes=5, in_channels=1, image_size=28, hidden=32)
    assert list(net.buffers()) == []  # batch statistics only: nothing to update inside vmap
    params = {k: v.detach() for k, v in net.named_parameters()}
    tasks, shots = 3, 5
    x = torch.rand(tasks, shots, 1, 28, 28)
    y = torch.randint(0, 5, (tasks, shots))
    # Per-task parameters, as in an inner loop that has already diverged.
    batched = {k: v.unsqueeze(0) + 0.01 * torch.randn(tasks, *v.shape) for k, v in params.items()}

    def loss(p, xs, ys):
        return F.cross_entropy(functional_call(net, p, (xs,)), ys)

    losses = vmap(loss)(batched, x, y)
    grads = vmap(torch.func.grad(loss))(batched, x, y)
    for t in range(tasks):
        one = {k: v[t].clone().requires_grad_(True) for k, v in batched.items()}
        expected = loss(one, x[t], y[t])
        torch.testing.assert_close(losses[t], expected)
        reference = torch.autograd.grad(expected, list(one.values()))
        for (k, g), r in zip(grads.items(), reference):
            torch.testing.assert_close(g[t], r, atol=1e-5, rtol=1e-4)


def test_conv4_with_running_stats_and_miniimagenet_size():
    net = Conv4(num_classes=5, in_channels=3, image_size=84, hidden=32, track_running_stats=True)
    assert net.head.in_features == 32 * 5 * 5  # MAML's miniImageNet head: 800 features
    assert any(name.endswith("running_mean") for name, _ in net.named_buffers())


def test_sine_mlp_shape_and_size():
    net = models_zoo.create("sine_mlp")
    assert models_zoo.num_parameters(net) == (1 * 40 + 40) + (40 * 40 + 40) + (40 + 1)
    assert net(torch.linspace(-5, 5, 7).unsqueeze(1)).shape == (7, 1)


def test_normalize_inside_the_model():
    net = models_zoo.create("mlp", in_channels=3, image_size=4)
    model = with_normalization(net, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    assert unwrap(model) is net and unwrap(net) is net
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - mean) / std))
    assert set(model.state_dict()) >= {"normalize.mean", "normalize.std"}
    assert isinstance(model.normalize, Normalize)


def _output_shapes(net: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    seen: dict[str, tuple[int, ...]] = {}
    for name in names:
        net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        net.eval()(x)
    return seen


def test_resnet32_stages_halve_the_resolution_and_double_the_width():
    net = models_zoo.create("resnet32")
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3)] == [5, 5, 5]
    seen = _output_shapes(net, ["layer1", "layer2", "layer3"], torch.rand(2, 3, 32, 32))
    assert seen == {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)}  # He et al.: maps 32, 16, 8


def test_resnet32_blocks_add_their_shortcut():
    """With the residual branch silenced (bn2 = 0) a block must pass relu(shortcut(x)) on: identity or option A."""
    from models_zoo.resnet32 import BasicBlock

    torch.manual_seed(0)
    for c_in, c_out, stride in ((16, 16, 1), (16, 32, 2)):
        block = BasicBlock(c_in, c_out, stride).eval()
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
        x = torch.randn(2, c_in, 8, 8)
        with torch.no_grad():
            out = block(x)
        expected = F.relu(x) if stride == 1 else F.relu(F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
        torch.testing.assert_close(out, expected)


# Simonyan & Zisserman, Table 1: 3x3 convs per stage in configurations A, B, D, E; stage widths 64..512, a 2x2 max-pool after each.
VGG_CONVS_PER_STAGE = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


def test_vgg_layers_match_the_papers_configurations():
    for name, per_stage in VGG_CONVS_PER_STAGE.items():
        expected, by_hand, channels = [], 0, 3
        for width, convs in zip((64, 128, 256, 512, 512), per_stage):
            for _ in range(convs):
                expected.append((channels, width))
                by_hand += channels * width * 9 + 2 * width  # bias-free conv + BN
                channels = width
            expected.append("M")
        by_hand += 512 * 10 + 10
        net = models_zoo.create(name)
        layers = list(net.features)
        got = [(m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else "M" for m in layers
               if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
        assert got == expected, name
        assert all(isinstance(layers[i + 2], nn.ReLU) for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)), name
        assert models_zoo.num_parameters(net) == by_hand, name
        with torch.no_grad():
            assert net.features.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 512, 1, 1)  # five pools: 32 -> 1
    assert models_zoo.num_parameters(models_zoo.create("vgg16")) == 14_724_042


def test_resnet18_is_resnet18():
    net = models_zoo.create("resnet18")
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]
    assert models_zoo.num_parameters(net) == 11_173_962  # the usual CIFAR ResNet-18 count (3x3 stem, 10 classes)


def _layers(net: nn.Module) -> list[tuple]:
    out = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.padding[0]))
        elif isinstance(m, nn.Linear):
            out.append(("fc", m.in_features, m.out_features))
        elif isinstance(m, (nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.BatchNorm2d)):
            out.append(type(m).__name__)
    return out


def test_net2_is_the_carlini_wagner_mnist_model():
    net = models_zoo.create("net2")
    assert _layers(net) == [
        ("conv", 1, 32, 3, 0), "ReLU", ("conv", 32, 32, 3, 0), "ReLU", "MaxPool2d",
        ("conv", 32, 64, 3, 0), "ReLU", ("conv", 64, 64, 3, 0), "ReLU", "MaxPool2d",
        ("fc", 64 * 4 * 4, 200), "ReLU", ("fc", 200, 200), "ReLU", ("fc", 200, 10),
    ]
    assert models_zoo.num_parameters(net) == 312_202


def test_net3_is_the_madry_mnist_model():
    net = models_zoo.create("net3")
    assert _layers(net) == [
        ("conv", 1, 32, 5, 2), "ReLU", "MaxPool2d", ("conv", 32, 64, 5, 2), "ReLU", "MaxPool2d",
        ("fc", 64 * 7 * 7, 1024), "ReLU", ("fc", 1024, 10),
    ]
    assert models_zoo.num_parameters(net) == 3_274_634  # the MNIST challenge model


def test_conv4_default_is_mamls_64_filter_network():
    net = models_zoo.create("conv4")
    expected = []
    for c_in in (1, 64, 64, 64):  # Finn et al.: 3x3 conv (64 filters), BatchNorm, ReLU, 2x2 max-pool
        expected += [("conv", c_in, 64, 3, 1), "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert _layers(net) == [*expected, ("fc", 64, 5)]
    # 4 x (3x3 conv + bias, BN affine), head 64 -> 5
    assert models_zoo.num_parameters(net) == (9 * 64 + 64 + 128) + 3 * (64 * 64 * 9 + 64 + 128) + (64 * 5 + 5) == 112_261
    torch.manual_seed(0)
    with torch.no_grad():
        feats = net.features(torch.rand(4, 1, 28, 28))
    assert feats.shape == (4, 64) and (feats >= 0).all()  # pooled ReLU outputs, 28 -> 14 -> 7 -> 3 -> 1


def test_conv4_strided_is_mamls_omniglot_network():
    # MAML's released code: stride-2 convolutions instead of max-pooling for Omniglot, then the mean over space.
    net = models_zoo.create("conv4-strided")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (1, 64, 3, 2, 1), (64, 64, 3, 2, 1), (64, 64, 3, 2, 1), (64, 64, 3, 2, 1)]
    assert _layers(net) == [*[x for c in convs for x in (_layers(c)[0], "BatchNorm2d", "ReLU")], ("fc", 64, 5)]
    assert models_zoo.num_parameters(net) == models_zoo.num_parameters(models_zoo.create("conv4")) == 112_261
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    sides, h = [], x
    for block in net.features:
        h = block(h)
        if isinstance(block, nn.ReLU):
            sides.append(h.shape[-1])
    assert sides == [14, 7, 4, 2]
    with torch.no_grad():
        feats = net.features(x)
        last = net.features[:-2](x)  # the fourth block's 2x2 ReLU maps, before the mean over space
    torch.testing.assert_close(feats, last.mean((2, 3)))
    big = models_zoo.create("conv4-strided", in_channels=3, image_size=84)
    assert big.feature_dim == 64 and big(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    with pytest.raises(ValueError, match="downsample must be one of"):
        Conv4(downsample="avg")


def test_resnet32_is_kaiming_normal_initialised():
    """Cui et al., Cao et al.: Kaiming-normal weights, std sqrt(2 / fan_in), for every conv and the linear layer."""
    torch.manual_seed(0)
    net = models_zoo.create("resnet32")
    standardised = []
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight.detach()
            expected_std = (2 / w[0].numel()) ** 0.5
            assert float(w.std()) == pytest.approx(expected_std, rel=0.15), name
            standardised.append(w.flatten() / expected_std)
    z = torch.cat(standardised).double()
    assert float(z.pow(2).mean()) == pytest.approx(1.0, abs=0.02)
    assert float(z.pow(4).mean() / z.pow(2).mean() ** 2) == pytest.approx(3.0, abs=0.1)  # normal's kurtosis; uniform's is 1.8


def test_normed_linear_starts_with_unit_norm_class_weights():
    torch.manual_seed(0)
    head = NormedLinear(64, 10)
    torch.testing.assert_close(head.weight.norm(dim=0), torch.ones(10))
    assert head.weight.std() > 0.05  # random directions, not a constant


def test_resnet32_features_are_the_stem_stages_and_a_spatial_mean():
    torch.manual_seed(0)
    net = models_zoo.create("resnet32").eval()
    with torch.no_grad():  # a stem BatchNorm that is not the identity, so leaving it out shows
        net.bn1.weight.uniform_(0.5, 2.0)
        net.bn1.bias.uniform_(-0.5, 0.5)
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 2.0)
        x = torch.rand(2, 3, 32, 32)
        out = F.relu(net.bn1(net.conv1(x)))
        for stage in (net.layer1, net.layer2, net.layer3):
            for block in stage:
                out = block(out)
        torch.testing.assert_close(net.features(x), out.mean(dim=(2, 3)))


def test_resnet32_block_is_conv_bn_relu_conv_bn_plus_shortcut_then_relu():
    from models_zoo.resnet32 import BasicBlock

    torch.manual_seed(0)
    for c_in, c_out, stride in ((16, 16, 1), (16, 32, 2)):
        block = BasicBlock(c_in, c_out, stride).eval()
        with torch.no_grad():
            for bn in (block.bn1, block.bn2):
                bn.bias.uniform_(-0.5, 0.5)  # negative pre-activations, so a missing ReLU shows
            x = torch.randn(2, c_in, 8, 8)
            branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
            shortcut = x if stride == 1 else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
            torch.testing.assert_close(block(x), F.relu(branch + shortcut))


def test_resnet32_takes_grayscale_input_and_refuses_a_depth_that_is_not_6n_plus_2():
    from models_zoo.resnet32 import ResNetCifar

    net = models_zoo.create("resnet32", in_channels=1, image_size=28).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert ResNetCifar(depth=20).layer1.__len__() == 3  # n = 3
    with pytest.raises(ValueError, match="6n\\+2, got 29"):
        ResNetCifar(depth=29)


@pytest.mark.parametrize("name", ["net4", "lenet5", "net2", "net3", "mlp"])
def test_mnist_nets_take_any_square_size_they_are_built_for(name):
    """Each MNIST net computes its flatten size from image_size, odd sizes included."""
    for size in (29, 32):
        net = models_zoo.create(name, image_size=size)
        with torch.no_grad():
            assert net(torch.zeros(2, 1, size, size)).shape == (2, 10), size


def test_mlp_default_is_two_hidden_layers_of_256():
    net = models_zoo.create("mlp")
    assert models_zoo.num_parameters(net) == (784 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)


def test_vgg_takes_28x28_inputs_too():
    net = models_zoo.create("vgg11", in_channels=1).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # 28 -> 14 -> 7 -> 4 -> 2 -> 1 with ceil_mode pools


@pytest.mark.parametrize("name, convs", [
    ("vgg11", lambda net: [m for m in net.features if isinstance(m, nn.Conv2d)]),
    ("resnet18", lambda net: [net.conv1]),
    ("densenet121", lambda net: [net.features.conv0]),
    ("mobilenetv2", lambda net: [net.features[0][0]]),
])
def test_cifar_convs_are_kaiming_normal_fan_out_initialised(name, convs):
    """He et al.'s fan-out normal init (std sqrt(2 / (out_channels * k * k))), not PyTorch's default uniform one."""
    torch.manual_seed(0)
    for conv in convs(models_zoo.create(name)):
        w = conv.weight.detach()
        expected_std = (2 / (w.shape[0] * w[0, 0].numel())) ** 0.5
        assert float(w.std()) == pytest.approx(expected_std, rel=0.15)


def test_conv4_refuses_an_image_too_small_for_its_four_pools():
    with pytest.raises(ValueError, match="image_size 8 is too small for conv4 \\(needs at least 16\\)"):
        Conv4(image_size=8)
    assert Conv4(image_size=16).feature_dim == 64


def test_normalize_refuses_a_mean_and_std_of_different_lengths():
    with pytest.raises(ValueError, match="mean has 3 channels but std has 1"):
        Normalize([0.1, 0.2, 0.3], [0.5])


@pytest.mark.parametrize("name, stem", [("resnet18", "conv1"), ("resnet34", "conv1"), ("densenet121", "features.conv0"),
                                        ("mobilenetv2", "features.0")])
def test_cifar_stems_keep_the_full_32x32_map(name, stem):
    """The CIFAR stem is a padded 3x3 stride-1 conv: a 32x32 image leaves it 32x32 (an unpadded one would give 30x30)."""
    net = models_zoo.create(name).eval()
    with torch.no_grad():
        assert net.get_submodule(stem)(torch.rand(1, 3, 32, 32)).shape[-2:] == (32, 32)


def test_resnet34_is_resnet34_and_takes_grayscale_input():
    net = models_zoo.create("resnet34")
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]  # He et al., Table 1
    # torchvision's ResNet-34 with a 10-class head, its 7x7 stem (9,408 weights) replaced by a 3x3 one (1,728)
    assert models_zoo.num_parameters(net) == 21_282_122
    gray = models_zoo.create("resnet34", in_channels=1)
    with torch.no_grad():
        assert gray.conv1(torch.rand(1, 1, 32, 32)).shape == (1, 64, 32, 32)


def test_densenet121_takes_grayscale_input():
    net = models_zoo.create("densenet121", in_channels=1).eval()
    with torch.no_grad():
        assert net.features.conv0(torch.rand(1, 1, 32, 32)).shape == (1, 64, 32, 32)
    assert models_zoo.num_parameters(net) == 6_956_426 - 2 * 9 * 64  # torchvision's, 3x3 stem, two input channels fewer


def test_vgg_head_sees_the_spatial_mean_of_larger_inputs():
    """On 64x64 images the last map is 2x2: the head takes its average (not its maximum, nor the flattened map)."""
    torch.manual_seed(0)
    net = models_zoo.create("vgg11").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = net.features(x)
        assert maps.shape[-2:] == (2, 2)
        torch.testing.assert_close(net(x), net.fc(maps.mean(dim=(2, 3))))


def test_sine_mlp_is_relu_layers_by_hand():
    torch.manual_seed(0)
    net = models_zoo.create("sine_mlp")
    first, second, third = [m for m in net.modules() if isinstance(m, nn.Linear)]
    x = torch.linspace(-5, 5, 7).unsqueeze(1)
    expected = third(F.relu(second(F.relu(first(x)))))
    torch.testing.assert_close(net(x), expected)
