"""Whether a network fits a dataset: it takes the dataset's images and gives one score per class.

Checked with one forward pass of two blank images before a model trains or is scored, so a model made
for other inputs or another number of classes (a timm network with a fixed input size, a head of 5
classes for a 10-class dataset, a 3-class model scored on MNIST) is one clear line, not an error deep
in the loss or a silent, meaningless accuracy.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lazyapps.errors import LazyAppsError, describe


def check_outputs(model: nn.Module, image_shape: Sequence[int], num_classes: int, *, what: str = "the model") -> None:
    """:class:`LazyAppsError` unless ``model`` maps ``(2, *image_shape)`` inputs to ``(2, num_classes)`` scores."""
    first = next(iter(model.parameters()), None)
    device, dtype = (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)
    shape = "x".join(str(int(s)) for s in image_shape)
    was_training = model.training
    model.eval()  # (BatchNorm statistics untouched)
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *image_shape, device=device, dtype=dtype))
    except Exception as exc:  # the network decides what it cannot take; its own message says why
        raise LazyAppsError(f"{what} cannot take {shape} images ({describe(exc)})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LazyAppsError(f"{what} gives outputs of shape {got} for two {shape} images, not one score for each "
                            f"of the dataset's {num_classes} classes")
