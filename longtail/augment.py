"""The standard CIFAR augmentation as batched tensor ops (no per-image PIL work).

Random 32×32 crop from the image zero-padded by 4 pixels, then a horizontal
flip with probability 1/2 (He et al. 2016; the augmentation of every CIFAR-LT
paper), then per-channel normalisation. One gather does the crops of a whole
batch, so augmenting costs far less than the network's forward pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``uint8`` (or [0, 1] float) images N×C×H×W → float32, minus ``mean``, divided by ``std`` per channel.

    ``mean`` and ``std`` may be float32 tensors on the images' device already: a training loop passes those so
    that no batch copies them there again.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop_flip(images: torch.Tensor, *, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of the batch randomly cropped (after zero padding) and flipped left-right with p = 1/2.

    ``images`` is N×C×H×W of any dtype; the result has the same shape and dtype.
    Random numbers come from ``generator`` (CPU) so runs are reproducible and
    resumable.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4) if images.dtype != torch.uint8 else F.pad(images.float(), (padding,) * 4).to(torch.uint8)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # n×h
    cols = dx[:, None] + torch.arange(w, device=images.device)  # n×w
    # Flipping is a reversed column index, so crop and flip are one gather.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # n×h×w×C
    return out.permute(0, 3, 1, 2).contiguous()
