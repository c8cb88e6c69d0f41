"""MetaAttacker: output shape for any image size, vmappable per-image copies."""
from __future__ import annotations

import pytest
import torch

from attacks.meta_attacker import PAPER_WIDTHS, MetaAttacker, build, describe
from attacks.per_image import predict, stack_copies


@pytest.mark.parametrize(("dataset", "shape"), [("mnist", (2, 1, 28, 28)), ("cifar10", (2, 3, 32, 32))])
def test_paper_networks_map_images_to_same_shape(dataset, shape):
    net = MetaAttacker.for_dataset(dataset)
    assert net.widths == PAPER_WIDTHS[dataset]
    assert net.encoder[0].in_channels == shape[1]
    assert net(torch.rand(shape)).shape == shape


@pytest.mark.parametrize("shape", [(1, 2, 13, 17), (3, 1, 5, 5), (1, 4, 40, 33), (1, 3, 1, 1)])
def test_any_channels_and_size(shape):
    net = MetaAttacker(shape[1], (4, 8, 8))
    out = net(torch.rand(shape))
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_output_is_linear_and_depends_on_the_image():
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    assert isinstance(net.decoder[-1], torch.nn.ConvTranspose2d)  # no final ReLU: gradients take both signs
    a, b = net(torch.rand(1, 1, 12, 12)), net(torch.rand(1, 1, 12, 12))
    assert not torch.allclose(a, b)


def test_wrong_channels_is_a_clear_error():
    with pytest.raises(ValueError, match="expected images"):
        MetaAttacker(1)(torch.rand(1, 3, 28, 28))


def test_describe_build_round_trip():
    net = MetaAttacker(3, (5, 6))
    again = build(describe(net))
    assert [p.shape for p in again.parameters()] == [p.shape for p in net.parameters()]


def test_vmapped_copies_predict_like_the_module():
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    params = dict(net.named_parameters())
    stacked = stack_copies(params, 3)
    stacked["decoder.0.bias"][1] += 1.0  # copy 1 differs: must change only row 1
    x = torch.rand(3, 1, 10, 10)
    out = predict(net, stacked, x)
    with torch.no_grad():
        ref = net(x)
    torch.testing.assert_close(out[[0, 2]], ref[[0, 2]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[1], ref[1])


def test_for_dataset_takes_the_given_channels():
    assert MetaAttacker.for_dataset("mnist", in_channels=3).in_channels == 3
    assert MetaAttacker.for_dataset("svhn").in_channels == 3 and MetaAttacker.for_dataset("svhn").widths == PAPER_WIDTHS["cifar10"]


@pytest.mark.parametrize(("dataset", "chans"), [("mnist", (1, 16, 32, 64, 64)), ("cifar10", (3, 32, 64, 128, 256))])
def test_layers_and_shapes_follow_du_et_al(dataset, chans):
    """Du et al.'s widths, written out here: strided 3x3 convs down, 4x4 stride-2 transposed convs back up."""
    net = MetaAttacker.for_dataset(dataset)
    convs = [m for m in net.encoder if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in net.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (a, b, (3, 3), (2, 2)) for a, b in zip(chans[:-1], chans[1:])]
    back = chans[::-1]
    assert [(d.in_channels, d.out_channels, d.kernel_size, d.stride) for d in deconvs] == [
        (a, b, (4, 4), (2, 2)) for a, b in zip(back[:-1], back[1:])]
    side = 28 if dataset == "mnist" else 32
    x = torch.rand(1, chans[0], side, side)
    with torch.no_grad():
        code = net.encoder(x)
        full = net.decoder(code)
    small = (side + 15) // 16  # four ceil-halvings: 28 -> 14, 7, 4, 2; 32 -> 16, 8, 4, 2
    assert code.shape == (1, chans[-1], small, small)
    assert full.shape == (1, chans[0], 16 * small, 16 * small)  # four doublings, then cropped to the image


def test_a_relu_follows_every_layer_but_the_last():
    """Du et al.'s autoencoder: ReLU after each strided conv and each transposed conv except the linear output."""
    net = MetaAttacker(1, (4, 8, 8))
    assert [type(m) for m in net.encoder] == [torch.nn.Conv2d, torch.nn.ReLU] * 3
    assert [type(m) for m in net.decoder] == [torch.nn.ConvTranspose2d, torch.nn.ReLU] * 2 + [torch.nn.ConvTranspose2d]


def test_the_map_is_cropped_in_register_with_the_image():
    """Weights set to keep every other pixel, then repeat each kept pixel 2×2: an odd-sized image (5×5, decoded
    to 6×6) comes back as pixel (2⌊i/2⌋, 2⌊j/2⌋) at (i, j), so the crop keeps the top-left, aligned part."""
    net = MetaAttacker(1, (1,))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.encoder[0].weight[0, 0, 1, 1] = 1.0  # output (i, j) = input (2i, 2j)
        net.decoder[0].weight[0, 0, 1:3, 1:3] = 1.0  # outputs (2i, 2j) … (2i + 1, 2j + 1) = input (i, j)
        x = torch.rand(2, 1, 5, 5)
        out = net(x)
    even = torch.tensor([0, 0, 2, 2, 4])
    torch.testing.assert_close(out, x[:, :, even][:, :, :, even])


def test_widths_below_one_are_refused_when_built():
    for widths in ((4, 0), ()):
        with pytest.raises(ValueError, match="positive widths"):
            MetaAttacker(1, widths)
