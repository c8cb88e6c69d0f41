"""Evaluation on the balanced test set: top-1 error, per-class accuracy and the shot groups.

Shot groups follow the long-tail literature (Liu et al., CVPR 2019, "OLTR"):
many-shot classes have more than 100 training images, medium-shot 20–100, and
few-shot fewer than 20. A group with no class (e.g. few-shot on CIFAR-10-LT at
imbalance 100, whose smallest class has 49 images) is reported as ``None``, as is the
accuracy of a class without test images.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .augment import normalize

MANY_SHOT = 100  # more than this many training images
FEW_SHOT = 20  # fewer than this many training images
SHOT_GROUPS = ("many", "medium", "few")  # the names shot_group returns, in the order results report them


def shot_group(count: int) -> str:
    """``many`` (> 100 training images), ``medium`` (20–100) or ``few`` (< 20)."""
    return "many" if count > MANY_SHOT else ("few" if count < FEW_SHOT else "medium")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
            batch_size: int = 500, device: torch.device | str = "cpu") -> torch.Tensor:
    """Top-1 predictions of ``model`` (eval mode) for ``uint8`` images, batch by batch."""
    was_training = model.training
    model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    # The constants go to the device once and the predictions come back once (not a copy per batch each way).
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start:start + batch_size].to(device), mean, std).to(dtype)
            out.append(model(x).argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(out).cpu() if out else torch.empty(0, dtype=torch.long)


def summarize(predictions: torch.Tensor, labels: torch.Tensor, counts: Sequence[int]) -> dict[str, Any]:
    """Top-1 error (%), many/medium/few-shot accuracy (%) and per-class accuracy (%, ``None`` for a class without
    test images) from predictions."""
    num_classes = len(counts)
    correct = (predictions == labels).double()
    per_class_total = torch.bincount(labels, minlength=num_classes).double()
    per_class_correct = torch.bincount(labels, weights=correct, minlength=num_classes)
    # A class without test images has no accuracy (None), not 0%.
    per_class = [float(a) if n > 0 else None
                 for a, n in zip((100 * per_class_correct / per_class_total.clamp_min(1)).tolist(), per_class_total.tolist())]
    groups: dict[str, list[int]] = {group: [] for group in SHOT_GROUPS}
    for c, n in enumerate(counts):
        if per_class[c] is not None:
            groups[shot_group(n)].append(c)
    result: dict[str, Any] = {"top1_error": float(100 * (1 - correct.mean())) if len(labels) else None}
    for group, members in groups.items():
        result[f"{group}_accuracy"] = (sum(per_class[c] for c in members) / len(members)) if members else None
        result[f"{group}_classes"] = len(members)
    result["per_class_accuracy"] = per_class
    return result


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, counts: Sequence[int], *,
             mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """:func:`summarize` of ``model``'s predictions on ``images``."""
    return summarize(predict(model, images, mean=mean, std=std, device=device), labels.cpu(), counts)
