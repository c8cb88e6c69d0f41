"""Checks on what a caller hands an attack: images in [0, 1], valid labels and target classes.

Every public attack entry point (:func:`attacks.score_attack.score_attack`,
:func:`attacks.meta_attack.meta_attack`, the foolbox runners) calls these
before spending a query, so a bad argument ends with one clear
:class:`~lazyapps.errors.LazyAppsError` instead of an index error deep in a
loss or a silent "success" (a target class equal to the true class is
already reached before the attack starts).
"""
from __future__ import annotations

import torch
from torch import Tensor

from lazyapps.errors import LazyAppsError


def check_image_count(n: int) -> None:
    """How many images to attack (``--n-images``): at least one; a negative count would slice from the end."""
    if int(n) < 1:
        raise LazyAppsError(f"--n-images must be at least 1, got {n}")


def check_images(x: Tensor) -> None:
    """Attacked images must be a float (N, C, H, W) batch in [0, 1]."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shown = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise LazyAppsError(f"attacked images must be float (N, C, H, W), got {shown}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise LazyAppsError(f"attacked images must lie in [0, 1], got range [{float(x.min()):.4g}, {float(x.max()):.4g}]; "
                            "divide 8-bit images by 255")


def check_targets(y: Tensor, target: Tensor | None, num_classes: int | None, *, images: int | None = None) -> None:
    """Labels (and target classes) must be class numbers of the target, one per image (``images`` of them when
    given); a target class must differ from the label."""
    for name, classes in (("labels", y), ("target classes", target)):
        # A float label (7.5) would compare unequal to every prediction: a fake success after one query.
        if classes is not None and (not isinstance(classes, Tensor) or classes.is_floating_point()
                                    or classes.is_complex() or classes.dtype == torch.bool):
            shown = f"dtype {classes.dtype}" if isinstance(classes, Tensor) else type(classes).__name__
            raise LazyAppsError(f"{name} must be an integer tensor of class numbers, got {shown}")
    if images is not None and (tuple(y.shape) != (images,) or (target is not None and tuple(target.shape) != (images,))):
        raise LazyAppsError(f"need (N,) labels and targets for {images} images, got labels {tuple(y.shape)}"
                            + ("" if target is None else f" and targets {tuple(target.shape)}"))
    for name, classes in (("label", y), ("target class", target)):
        if classes is None or num_classes is None or not classes.numel():
            continue
        if bool(((classes < 0) | (classes >= num_classes)).any()):
            bad = int(((classes < 0) | (classes >= num_classes)).nonzero()[0])
            raise LazyAppsError(f"{name} {int(classes[bad])} of image {bad} is out of range: "
                                f"the target has classes 0..{num_classes - 1}")
    if target is None:
        return
    same = target.cpu() == y.cpu()
    if bool(same.any()):
        bad = int(same.nonzero()[0])
        raise LazyAppsError(f"target class {int(target[bad])} equals the true class of image {bad}; "
                            "a targeted attack needs a different class")


__all__ = ["check_image_count", "check_images", "check_targets"]
