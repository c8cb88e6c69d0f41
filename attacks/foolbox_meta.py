"""Meta-Attack as a foolbox 3 attack, so foolbox users call it like any other.

    attack = MetaAttackFoolbox(meta_attacker, params, max_queries=10_000)
    raw, clipped, success = attack(fmodel, images, fb.criteria.Misclassification(labels), epsilons=[1.0, 2.0, None])

It is an L2 :class:`foolbox.attacks.base.MinimizationAttack`: it runs
:func:`attacks.meta_attack.meta_attack` (Algorithm 4 of the lazy paper; Du et
al., ICLR 2020) against the foolbox model's scores, seen only through a
:class:`~attacks.blackbox.BlackBox` so every query is counted;
``last_outcome`` keeps the per-image queries of the latest run. Both
``Misclassification`` and ``TargetedMisclassification`` criteria work. The
model's bounds must be (0, 1), the pixel range the attack clips to.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import eagerpy as ep
import foolbox as fb
import torch
from torch import Tensor, nn

from lazyapps.errors import LazyAppsError

from .blackbox import BlackBox
from .inputs import check_images
from .meta_attack import meta_attack
from .outcome import AttackOutcome


class _FoolboxScores(nn.Module):
    """A foolbox model as a torch module returning its scores (for :class:`BlackBox`)."""

    def __init__(self, fmodel: fb.models.Model, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.fmodel = fmodel
        # BlackBox sends queries in the device and dtype of the module's tensors: the inputs' ones, which
        # the foolbox model was given.
        self.register_buffer("_anchor", torch.zeros((), device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.fmodel(ep.astensor(x)).raw


def _check_call(model: fb.models.Model, x: Tensor) -> None:
    """The model's bounds must be the attack's pixel range, (0, 1), and the images float (N, C, H, W) in it."""
    if tuple(model.bounds) != (0.0, 1.0):
        raise LazyAppsError(f"MetaAttackFoolbox needs a model with bounds (0, 1), got {tuple(model.bounds)}")
    check_images(x)


class MetaAttackFoolbox(fb.attacks.base.MinimizationAttack):
    """The (lazy) meta-attack as a foolbox L2 minimisation attack.

    Args:
        meta_attacker: the meta-trained image → gradient-map network.
        params: its parameters (default: the module's own).
        max_queries: per-image query budget.
        q, every, step, h, finetune_steps, finetune_lr, skip_blocked, batch_size: as
            :func:`attacks.meta_attack.meta_attack` (Du et al.'s MNIST defaults; ``skip_blocked`` is ours).
    """

    distance = fb.distances.l2

    def __init__(
        self,
        meta_attacker: nn.Module,
        params: Mapping[str, Tensor] | None = None,
        *,
        max_queries: int = 10_000,
        q: int = 128,
        every: int = 5,
        step: float = 0.01,
        h: float = 1e-4,
        finetune_steps: int = 20,
        finetune_lr: float = 1e-2,
        skip_blocked: bool = True,
        batch_size: int = 250,
    ):
        self.meta_attacker, self.params = meta_attacker, params
        self.settings = dict(max_queries=int(max_queries), q=q, every=every, step=step, h=h,
                             finetune_steps=finetune_steps, finetune_lr=finetune_lr, skip_blocked=skip_blocked,
                             batch_size=batch_size)
        self.last_outcome: AttackOutcome | None = None

    def __call__(self, model: fb.models.Model, inputs: Any, criterion: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # foolbox's __call__ checks the inputs against the model's bounds with a bare assert (an empty
        # AssertionError); the same checks, with messages, come first.
        _check_call(model, ep.astensor(inputs).raw)
        return super().__call__(model, inputs, criterion, **kwargs)

    def run(self, model: fb.models.Model, inputs: Any, criterion: Any, *, early_stop: float | None = None, **kwargs: Any) -> Any:
        x, restore_type = ep.astensor_(inputs)
        del inputs
        _check_call(model, x.raw)
        criterion = fb.criteria.Misclassification(criterion) if not isinstance(criterion, fb.criteria.Criterion) else criterion
        raw: Tensor = x.raw
        if isinstance(criterion, fb.criteria.Misclassification):
            labels, target = criterion.labels.raw, None
        elif isinstance(criterion, fb.criteria.TargetedMisclassification):
            target = criterion.target_classes.raw
        else:
            raise LazyAppsError(f"MetaAttackFoolbox supports Misclassification and TargetedMisclassification, not {type(criterion).__name__}")
        self.meta_attacker.to(raw.device)
        blackbox = BlackBox(_FoolboxScores(model, raw.device, raw.dtype), output="logits", budget=self.settings["max_queries"])
        if target is not None:
            # The attack never needs the true labels for a targeted criterion; any class ≠ target does.
            labels = (target + 1) % blackbox.num_classes(tuple(raw.shape[1:]))
        params = None if self.params is None else {k: v.to(raw.device) for k, v in self.params.items()}
        outcome = meta_attack(blackbox, raw, labels.to(raw.device), self.meta_attacker, params,
                              target=None if target is None else target.to(raw.device), desc="meta-attack (foolbox)",
                              **self.settings)
        # A targeted criterion has no true labels: the stand-in classes above are not the images' labels.
        self.last_outcome = outcome if target is None else dataclasses.replace(outcome, labels=None)
        return restore_type(ep.astensor(outcome.x_adv.to(device=raw.device, dtype=raw.dtype)))

    def __repr__(self) -> str:
        return f"MetaAttackFoolbox({', '.join(f'{k}={v}' for k, v in self.settings.items())})"


__all__ = ["MetaAttackFoolbox"]
