"""Gradient sets equal autograd gradients of the C&W margin, each divided by its std."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks.gradient_sets import as_pairs, build_gradient_set, default_targets, normalise_maps


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def _reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """One image at a time, log-softmax written out: the slow obvious computation."""
    maps = []
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_()
        logp = torch.log_softmax(net(xi), dim=1)[0]
        cls = int(y[i]) if target is None else int(target[i])
        others = torch.cat([logp[:cls], logp[cls + 1:]])
        margin = logp[cls] - others.max() if target is None else others.max() - logp[cls]
        (g,) = torch.autograd.grad(margin, xi)
        maps.append(g[0] / g.std())
    return torch.stack(maps)


def test_untargeted_maps_match_autograd_reference():
    net = _net()
    images = (torch.rand(12, 1, 8, 8) * 255).to(torch.uint8)
    labels = torch.randint(5, (12,))
    gs = build_gradient_set(net, images, labels, num_classes=5, batch_size=5)
    x, maps = as_pairs(gs)
    assert torch.equal(gs["images"], images) and torch.equal(gs["labels"], labels)
    torch.testing.assert_close(x, images.float() / 255)
    ref = _reference(net, images.float() / 255, labels, None)
    torch.testing.assert_close(maps, ref, atol=2e-3, rtol=2e-3)  # float16 storage
    assert gs["maps"].dtype == torch.float16  # stored at half the bytes of float32
    assert torch.allclose(maps.flatten(1).std(dim=1), torch.ones(12), atol=1e-2)


def test_targeted_maps_use_the_default_target():
    net = _net(1)
    x = torch.rand(6, 1, 8, 8)
    labels = torch.randint(5, (6,))
    gs = build_gradient_set(net, x, labels, num_classes=5, mode="targeted", batch_size=4)  # each batch its targets
    ref = _reference(net, x, labels, default_targets(labels, 5))
    torch.testing.assert_close(gs["maps"].float(), ref, atol=2e-3, rtol=2e-3)
    assert torch.equal(default_targets(torch.tensor([0, 4, 9]), 10), torch.tensor([1, 5, 0]))


def test_a_target_class_sets_every_images_target_and_drops_that_class():
    """``--target-class 3``: the attacker learns the margin towards 3 for every image not of class 3."""
    net = _net(2)
    x = torch.rand(10, 1, 8, 8)
    labels = torch.tensor([0, 3, 1, 2, 3, 4, 0, 1, 3, 2])
    gs = build_gradient_set(net, x, labels, num_classes=5, mode="targeted", target_class=3)
    keep = labels != 3
    assert torch.equal(gs["labels"], labels[keep]) and torch.equal(gs["images"], x[keep])
    ref = _reference(net, x[keep], labels[keep], torch.full((int(keep.sum()),), 3))
    torch.testing.assert_close(gs["maps"].float(), ref, atol=2e-3, rtol=2e-3)
    default = build_gradient_set(net, x[keep], labels[keep], num_classes=5, mode="targeted")
    assert not torch.allclose(default["maps"].float(), gs["maps"].float(), atol=0.1)  # another loss, other maps
    with pytest.raises(ValueError, match="for targeted gradient sets"):
        build_gradient_set(net, x, labels, num_classes=5, target_class=3)
    with pytest.raises(ValueError, match="out of range 0..4"):
        build_gradient_set(net, x, labels, num_classes=5, mode="targeted", target_class=5)


def test_misclassified_images_still_get_informative_maps():
    net = _net(2)
    x = torch.rand(20, 1, 8, 8)
    with torch.no_grad():
        wrong = (net(x).argmax(1) + 1) % 5  # every image misclassified w.r.t. these labels
    gs = build_gradient_set(net, x, wrong, num_classes=5)
    assert len(gs["maps"]) == 20
    assert (gs["maps"].float().flatten(1).abs().sum(1) > 0).all()


def test_zero_maps_are_dropped():
    grads = torch.zeros(3, 1, 4, 4)
    grads[1] = torch.randn(1, 4, 4)
    maps, kept = normalise_maps(grads)
    assert kept.tolist() == [False, True, False]
    assert torch.isclose(maps[1].std(), torch.tensor(1.0))

    # tiny but non-zero maps (a confident model's gradients) are kept, scaled to unit std like the others
    tiny = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1e-9, 1.0]).view(2, 1, 1, 1)
    maps, kept = normalise_maps(tiny)
    assert kept.tolist() == [True, True]
    torch.testing.assert_close(maps.flatten(1).std(dim=1), torch.ones(2))

    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    with torch.no_grad():
        constant[1].weight.zero_()
    gs = build_gradient_set(constant, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), num_classes=5)
    assert len(gs["maps"]) == 0


class _DeadBelowHalf(nn.Module):
    """Logits of relu(x - 0.5): an image with every pixel below 0.5 has an exactly zero gradient map."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 5)

    def forward(self, x):
        return self.lin(torch.relu(x.flatten(1) - 0.5))


def test_dropped_maps_take_their_images_and_labels_with_them():
    net = _DeadBelowHalf().eval()
    x = torch.rand(4, 1, 8, 8)
    x[[0, 2]] *= 0.4  # rows 0 and 2: zero maps, dropped
    labels = torch.tensor([0, 1, 2, 3])
    gs = build_gradient_set(net, x, labels, num_classes=5)
    assert torch.equal(gs["images"], x[[1, 3]]) and gs["labels"].tolist() == [1, 3]
    ref = _reference(net, x[[1, 3]], labels[[1, 3]], None)
    torch.testing.assert_close(gs["maps"].float(), ref, atol=2e-3, rtol=2e-3)


def test_a_model_in_training_mode_is_differentiated_in_eval_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 5))
    x, labels = torch.rand(6, 1, 8, 8), torch.randint(5, (6,))
    net.train()
    gs = build_gradient_set(net, x, labels, num_classes=5)
    ref = _reference(net.eval(), x, labels, None)
    torch.testing.assert_close(gs["maps"].float(), ref, atol=2e-3, rtol=2e-3)
