"""Meta-Attack and lazy Meta-Attack on a blackbox (Algorithm 4 of the lazy paper; Du et al., ICLR 2020).

:func:`meta_attack` runs the package's one score-based loop
(:func:`attacks.score_attack.score_attack`) with a :class:`MetaEstimator`:
coordinate sign steps ``x[I] ← x[I] − λ·sign(g[I])`` on the top-q coordinates
of each image's meta-attacker copy, a ZOO estimate (and fine-tuning of that
copy) every j-th iteration, clipping to [0, 1] and stopping each image as
soon as the target is fooled. Images are attacked in chunks of
``batch_size`` because every image in flight holds a full copy of the
meta-attacker's parameters.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lazyapps.errors import LazyAppsError
from lazyapps.progress import progress

from .blackbox import BlackBox
from .inputs import check_images, check_targets
from .losses import LossFn
from .meta_estimator import MetaEstimator
from .outcome import AttackOutcome
from .score_attack import score_attack

#: Du et al.'s attack settings by dataset (q coordinates, every j-th iteration ZOO, λ, h).
PAPER_SETTINGS: dict[str, dict[str, float]] = {
    "mnist": {"q": 128, "every": 5, "step": 0.01, "h": 1e-4},
    "cifar10": {"q": 125, "every": 3, "step": 0.01, "h": 1e-4},
}


def meta_attack(
    blackbox: BlackBox,
    x: Tensor,
    y: Tensor,
    meta_attacker: nn.Module,
    params: Mapping[str, Tensor] | None = None,
    *,
    target: Tensor | None = None,
    loss: LossFn | None = None,
    max_queries: int = 10_000,
    q: int = 128,
    every: int = 5,
    step: float = 0.01,
    h: float = 1e-4,
    finetune_steps: int = 20,
    finetune_lr: float = 1e-2,
    zoo_mode: str = "forward",
    skip_blocked: bool = True,
    batch_size: int = 250,
    desc: str = "meta-attack",
) -> AttackOutcome:
    """Attack images ``x`` (labels ``y``) on ``blackbox`` with a meta-attacker (Algorithm 4).

    ``target`` (N,) makes it targeted. Defaults are Du et al.'s MNIST settings
    (see :data:`PAPER_SETTINGS` for CIFAR-10). Rows are charged to blackbox
    image numbers ``0..N−1``. ``zoo_mode`` is the finite-difference scheme of
    the ZOO steps and ``skip_blocked`` (on by default; ``False`` is Du et al.'s
    ranking) drops from the ranking the coordinates a sign step cannot move (see
    :class:`MetaEstimator`). Returns one
    :class:`AttackOutcome` for all images.
    """
    check_images(x)
    if not len(x):  # (there would be no chunk to attack and no outcome to return)
        raise LazyAppsError("meta_attack needs at least one image, got an empty batch")
    if int(max_queries) < 1:
        raise LazyAppsError(f"the query budget must be at least 1, got {max_queries}")
    if int(batch_size) < 1:
        raise LazyAppsError(f"batch_size must be at least 1, got {batch_size}")
    check_targets(y, target, blackbox.num_classes(tuple(x.shape[1:])), images=len(x))
    _check_channels(meta_attacker, x)
    estimator = MetaEstimator(meta_attacker, params, q=q, every=every, h=h,
                              finetune_steps=finetune_steps, finetune_lr=finetune_lr, zoo_mode=zoo_mode,
                              skip_blocked=skip_blocked)
    outcomes = []
    starts = range(0, len(x), batch_size)
    for start in progress(starts, desc=desc, total=len(starts)) if len(starts) > 1 else starts:
        stop = min(start + batch_size, len(x))
        outcomes.append(score_attack(
            blackbox, x[start:stop], y[start:stop], estimator,
            target=None if target is None else target[start:stop], loss=loss, max_queries=max_queries,
            step_size=step, update="sign", index=torch.arange(start, stop), reset_estimator=True, desc=desc,
        ))
    return AttackOutcome.concat(outcomes)


def _check_channels(meta_attacker: nn.Module, x: Tensor) -> None:
    """A meta-attacker made for other images (a CIFAR one on MNIST) would fail only at its first prediction,
    after the first queries were spent; its ``in_channels`` (where it has one) tells beforehand."""
    channels = getattr(meta_attacker, "in_channels", None)
    if isinstance(channels, int) and channels != x.shape[1]:
        raise LazyAppsError(f"the meta-attacker takes {channels}-channel images, but the attacked images have "
                            f"{x.shape[1]} channel(s); use a meta-attacker made for this dataset")


__all__ = ["meta_attack", "MetaEstimator", "PAPER_SETTINGS", "check_images", "check_targets"]
