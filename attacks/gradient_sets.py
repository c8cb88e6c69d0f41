"""Gradient sets: the (image, input-gradient map) pairs a meta-attacker is trained on.

Du et al. (ICLR 2020, Sec. 3.2) build one task per whitebox zoo model: images
and the gradient of the attack loss w.r.t. each image, each map divided by its
own standard deviation so that tasks (models) of different gradient scales
weigh the same in the MSE meta-training loss.

The loss is the C&W log-probability margin of :mod:`attacks.losses`. Its
clamp ``max(·, 0)`` makes the gradient exactly zero for an image the model
already misclassifies, which would teach the meta-attacker nothing (and has
no standard deviation to divide by). We therefore differentiate the
*unclamped* margin: it equals the clamped loss wherever the clamp is inactive
(every correctly classified image, which is what an attack starts from) and
still gives an informative map elsewhere. Maps that are exactly zero anyway
(e.g. saturated softmax) are dropped.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lazyapps.progress import progress

from .losses import margin_loss

MODES = ("untargeted", "targeted")


def default_targets(labels: Tensor, num_classes: int) -> Tensor:
    """The default target class of a targeted attack: ``(y + 1) mod C``."""
    return (labels + 1) % num_classes


def normalise_maps(grads: Tensor, *, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Each map divided by its own standard deviation; returns ``(maps, kept)``.

    ``kept`` is a bool mask of the maps whose standard deviation is above
    ``eps`` (the others cannot be normalised and are left out by callers).
    """
    std = grads.flatten(1).std(dim=1)
    kept = std > eps
    maps = grads / std.clamp_min(eps).view(-1, *([1] * (grads.dim() - 1)))
    return maps, kept


def margin_gradients(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    targets: Tensor | None = None,
    batch_size: int = 256,
    desc: str = "",
) -> Tensor:
    """Raw input gradients of the unclamped margin loss of ``model`` at ``images`` (in [0, 1]).

    ``targets`` given: the targeted margin ``max_{j≠t} log p_j − log p_t``;
    otherwise the untargeted ``log p_y − max_{j≠y} log p_j``. The model is used
    as it is (put it in eval mode first); the result is on ``images``' device.
    """
    device = next(model.parameters()).device
    out = torch.empty_like(images, dtype=torch.float32)
    starts = range(0, len(images), batch_size)
    for start in progress(starts, desc=desc or "gradient maps", total=len(starts)):
        stop = start + batch_size
        x = images[start:stop].to(device=device, dtype=torch.float32).requires_grad_()
        y = labels[start:stop].to(device)
        t = None if targets is None else targets[start:stop].to(device)
        with torch.enable_grad():
            # Rows are independent (eval mode), so the gradient of the sum is each row's own gradient.
            loss = margin_loss(model(x), y, t, kappa=float("inf")).sum()
            (grad,) = torch.autograd.grad(loss, x)
        out[start:stop] = grad.to(out.device)
    return out


def build_gradient_set(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    mode: str = "untargeted",
    target_class: int | None = None,
    batch_size: int = 256,
    desc: str = "",
) -> dict[str, Tensor]:
    """The gradient set of one zoo model: ``{"images", "labels", "maps"}``.

    ``images`` are uint8 (kept as uint8, exact and 4× smaller) or floats in
    [0, 1]; ``maps`` are float16 normalised gradient maps (the std-normalised
    values are O(1), well within float16). ``mode="targeted"`` uses the
    targeted margin towards :func:`default_targets`, or towards
    ``target_class`` for every image if given (the images of that class are
    left out: there is no margin to cross towards one's own class), so that
    the meta-attacker learns the gradients of the loss it will be used on.
    """
    if mode not in MODES:
        raise ValueError(f"unknown gradient-set mode {mode!r}; valid: {', '.join(MODES)}")
    if target_class is not None:
        if mode != "targeted":
            raise ValueError("target_class is for targeted gradient sets (mode='targeted')")
        if not 0 <= int(target_class) < num_classes:
            raise ValueError(f"target_class {target_class} is out of range 0..{num_classes - 1}")
        others = labels != int(target_class)
        images, labels = images[others], labels[others]
    floats = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    if mode == "untargeted":
        targets = None
    elif target_class is None:
        targets = default_targets(labels, num_classes)
    else:
        targets = torch.full_like(labels, int(target_class))
    model.eval()
    grads = margin_gradients(model, floats, labels, targets=targets, batch_size=batch_size, desc=desc)
    maps, kept = normalise_maps(grads)
    return {"images": images[kept].clone(), "labels": labels[kept].clone(), "maps": maps[kept].half()}


def as_pairs(gradient_set: dict[str, Tensor], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """``(images in [0, 1] float32, maps float32)`` of a gradient set, on ``device``."""
    images = gradient_set["images"]
    images = images.to(device).float().div(255) if images.dtype == torch.uint8 else images.to(device).float()
    return images, gradient_set["maps"].to(device).float()


__all__ = ["build_gradient_set", "margin_gradients", "normalise_maps", "as_pairs", "default_targets", "MODES"]
