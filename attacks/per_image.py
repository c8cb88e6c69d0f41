"""Per-image copies of the meta-attacker, held functionally and updated with one vmap.

Algorithm 4 of the lazy paper (after Du et al., ICLR 2020, Algorithm 2) gives
every attacked image its own copy of the meta-attacker and fine-tunes it on
that image's zeroth-order gradient estimates. Instead of deep-copying the
module per image, the copies are one dict of parameter tensors with a leading
image dimension; predictions and Adam fine-tuning steps for all images run
as a single ``torch.func.vmap`` over that dimension.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lazyapps.functional import Params


def stack_copies(params: Mapping[str, Tensor], n: int) -> Params:
    """``n`` copies of ``params`` stacked on a new leading dim (real memory: each copy is fine-tuned)."""
    return {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}


def _predict_one(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)


def predict(model: nn.Module, stacked: Params, x: Tensor) -> Tensor:
    """Each image's map from its own copy: row ``i`` of ``x`` through the params at row ``i``."""
    with torch.no_grad():
        return vmap(lambda p, xi: _predict_one(model, p, xi))(stacked, x)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the entries where ``mask`` is true (one image)."""
    weight = mask.to(pred.dtype)
    return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def finetune(
    model: nn.Module,
    stacked: Params,
    x: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    steps: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Params:
    """``steps`` Adam steps per image on the masked MSE between its copy's map and ``target``.

    Row ``i`` of ``stacked`` is fitted to ``target[i]`` on the coordinates
    ``mask[i]`` only (the ones a zeroth-order estimate was taken at). The
    update is ``torch.optim.Adam``'s with a fresh state per call; gradients of
    all copies come from one vmapped ``torch.func.grad``. Returns new tensors.
    """
    def loss(p: Params, xi: Tensor, ti: Tensor, mi: Tensor) -> Tensor:
        return masked_mse(_predict_one(model, p, xi), ti, mi)

    per_image_grad = vmap(grad(loss))
    params = {k: v.detach() for k, v in stacked.items()}
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2 = betas
    for step in range(1, steps + 1):
        g = per_image_grad(params, x, target, mask)
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] * g[k]
            denom = v2[k].sqrt() / math.sqrt(1 - b2 ** step) + eps
            params[k] = params[k] - (lr / (1 - b1 ** step)) * m[k] / denom
    return params


def top_indices(maps: Tensor, q: int, *, exclude: Tensor | None = None) -> Tensor:
    """(N, q) flat indices of each image's ``q`` largest-|value| coordinates.

    Coordinates where ``exclude`` is true rank below all others: they are
    picked only when an image has fewer than ``q`` others.
    """
    score = maps.abs().flatten(1)
    if exclude is not None:
        score = score.masked_fill(exclude.flatten(1), -1.0)
    return score.topk(min(int(q), score.shape[1]), dim=1).indices


def top_coordinates(maps: Tensor, q: int, *, exclude: Tensor | None = None) -> Tensor:
    """Bool mask (same shape as ``maps``) of the coordinates :func:`top_indices` picks."""
    return index_mask(top_indices(maps, q, exclude=exclude), maps)


def index_mask(idx: Tensor, like: Tensor) -> Tensor:
    """Bool mask shaped like ``like``, true at the (N, k) flat indices ``idx`` of each row."""
    mask = torch.zeros(like.shape[0], like[0].numel(), dtype=torch.bool, device=like.device)
    return mask.scatter_(1, idx, True).view_as(like)


__all__ = ["stack_copies", "predict", "finetune", "masked_mse", "top_coordinates", "top_indices", "index_mask"]
