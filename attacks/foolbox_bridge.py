"""Decision-based baselines (HopSkipJump, Boundary) from foolbox 3, querying through a :class:`BlackBox`.

:class:`BlackBoxFoolboxModel` is a foolbox :class:`~foolbox.models.Model` whose
every call is a :meth:`BlackBox.query`: the attacks see only top-1 decisions
(returned as one-hot scores, so foolbox's criteria work unchanged), and every
row is counted for its image like any other query. foolbox calls the model
with one row per attacked image, in order, so row ``i`` of each call is
charged to image ``index[i]``. (foolbox queries every image of a batch in
lock-step, including images whose search has converged, so images of one
batch spend the same number of queries.)

While the attack runs the wrapper remembers, per image, the closest queried
point that was adversarial. foolbox's attacks have no query budget, so the
wrapper stops the attack (an internal exception) as soon as a call would take
an image beyond ``max_queries`` (or the blackbox's budget), and the runners
return those best points. HopSkipJump (Chen, Jordan, Wainwright, IEEE S&P
2020) and Boundary (Brendel, Rauber, Bethge, ICLR 2018) are *minimisation*
attacks: they start from an adversarial point (foolbox's blended-uniform-noise
search, or ``starting_points``) and shrink its distance. An image counts as a
success when an adversarial point was found at all; its L2 is reported.
"""
from __future__ import annotations

import warnings
from typing import Any

import eagerpy as ep
import foolbox as fb
import torch
from torch import Tensor

from lazyapps.errors import LazyAppsError

from .blackbox import BlackBox
from .inputs import check_images, check_targets
from .losses import is_adversarial, predicted_labels
from .outcome import AttackOutcome, l2_distance


class _OutOfQueries(Exception):
    """Raised inside a foolbox attack when its next call would exceed the budget."""


class BlackBoxFoolboxModel(fb.models.Model):
    """A foolbox model over a :class:`BlackBox` that sees decisions only and tracks the best adversarial.

    Args:
        blackbox: the target; any ``output`` (only the top-1 label is used).
        x: (N, C, H, W) clean images the attack runs on (rows of every call).
        y: (N,) true labels; target: (N,) target classes or None.
        index: (N,) blackbox image numbers of the rows (default ``arange(N)``).
        max_queries: per-image budget counted from the moment of construction;
            a call that would exceed it (or the blackbox's own budget) stops
            the attack.
    """

    def __init__(
        self,
        blackbox: BlackBox,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
        index: Tensor | None = None,
        max_queries: int | None = None,
    ):
        self.blackbox, self.x, self.y, self.target = blackbox, x.detach(), y, target
        n = x.shape[0]
        self.index = torch.arange(n) if index is None else torch.as_tensor(index).reshape(-1).long().cpu()
        self.max_queries = max_queries
        blackbox.remaining(self.index)  # sizes the counters
        self.start = blackbox.counts[self.index].clone()
        self.best = self.x.clone()
        self.best_l2 = torch.full((n,), float("inf"))
        self.found = torch.zeros(n, dtype=torch.bool)
        self.first_found = torch.zeros(n, dtype=torch.long)  # queries spent at the first adversarial
        self.rows = torch.arange(n)  # which of the N images the current foolbox run attacks

    @property
    def bounds(self) -> fb.types.Bounds:
        return fb.types.Bounds(0.0, 1.0)

    def spent(self) -> Tensor:
        """Queries each image has spent since construction."""
        return self.blackbox.counts[self.index] - self.start

    def attack_rows(self, rows: Tensor) -> None:
        """Restrict the following foolbox calls to images ``rows`` (of the N)."""
        self.rows = rows

    def __call__(self, inputs: Any) -> Any:
        x, restore_type = ep.astensor_(inputs)
        raw: Tensor = x.raw.detach()
        rows = self.rows
        if raw.shape[0] != len(rows):
            raise LazyAppsError(f"foolbox called the blackbox with {raw.shape[0]} rows for {len(rows)} images")
        index = self.index[rows]
        left = self.blackbox.remaining(index)
        if self.max_queries is not None:
            left = torch.minimum(left, self.max_queries - self.spent()[rows])
        if bool((left < 1).any()):
            raise _OutOfQueries
        # foolbox's noise and blends can leave float error just outside [0, 1]
        labels = predicted_labels(self.blackbox.query(raw.clamp(0.0, 1.0), index=index)).to(raw.device)
        self._track(raw, labels, rows)
        y = self.y[rows].to(raw.device)
        top = [int(labels.max()), int(y.max())]
        if self.target is not None:
            top.append(int(self.target.max()))
        scores = torch.nn.functional.one_hot(labels, max(top) + 1).to(raw.dtype)
        return restore_type(ep.astensor(scores))

    def _track(self, raw: Tensor, labels: Tensor, rows: Tensor) -> None:
        t = None if self.target is None else self.target[rows].to(labels.device)
        adv = is_adversarial(labels, self.y[rows].to(labels.device), t).cpu()
        if not bool(adv.any()):
            return
        first = rows[adv & ~self.found[rows]]
        self.first_found[first] = self.spent()[first]
        dist = l2_distance(self.x[rows.to(self.x.device)], raw.clamp(0.0, 1.0)).cpu()
        better = adv & (dist < self.best_l2[rows])
        if bool(better.any()):
            which = rows[better]
            self.best[which.to(self.best.device)] = raw[better.to(raw.device)].clamp(0.0, 1.0).to(self.best.dtype)
            self.best_l2[which] = dist[better]
            self.found[which] = True

    def outcome(self) -> AttackOutcome:
        spent = self.spent()
        return AttackOutcome.build(self.x, self.best, self.found, spent, labels=self.y, target_classes=self.target,
                                   first_success=torch.where(self.found, self.first_found, spent))


def run_foolbox_attack(
    attack: fb.attacks.base.MinimizationAttack,
    blackbox: BlackBox,
    x: Tensor,
    y: Tensor,
    *,
    target: Tensor | None = None,
    max_queries: int = 10_000,
    index: Tensor | None = None,
    starting_points: Tensor | None = None,
    init_steps: int = 50,
) -> AttackOutcome:
    """Run a foolbox minimisation attack through ``blackbox`` within ``max_queries`` per image.

    Starting points: ``starting_points`` if given (must be adversarial; needed
    for targeted attacks), else foolbox's linear search towards uniform noise
    (``LinearSearchBlendedUniformNoiseAttack``, ``init_steps`` blend steps), its
    queries counted too. Images without an adversarial starting point fail; the
    attack runs on the others. Returns the closest adversarial point each image
    queried.
    """
    if int(max_queries) < 1:
        raise LazyAppsError(f"max_queries must be at least 1, got {max_queries}")
    check_images(x)
    check_targets(y, target, blackbox.num_classes(tuple(x.shape[1:])) if len(x) else None, images=len(x))
    if starting_points is not None:
        check_images(starting_points)
    if target is not None and starting_points is None:
        raise LazyAppsError(
            "targeted decision-based attacks need starting_points: images the target classifies as the target class"
        )
    model = BlackBoxFoolboxModel(blackbox, x, y, target=target, index=index, max_queries=int(max_queries))
    criterion = (fb.criteria.Misclassification(y.to(x.device)) if target is None
                 else fb.criteria.TargetedMisclassification(target.to(x.device)))
    try:
        if starting_points is None:
            init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=init_steps)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "failed to draw sufficient random inputs": handled below
                init.run(model, x, criterion)
            start = model.best.clone()
        else:
            model.best_l2.fill_(float("inf"))
            start = starting_points.detach().to(x.dtype)
            model(start)  # one counted query: which starting points are adversarial (tracks them)
            start = model.best.clone()
        rows = model.found.nonzero().flatten()
        if len(rows):
            model.attack_rows(rows)
            sub_criterion = (fb.criteria.Misclassification(y[rows.to(y.device)].to(x.device)) if target is None
                             else fb.criteria.TargetedMisclassification(target[rows.to(target.device)].to(x.device)))
            attack.run(model, x[rows.to(x.device)], sub_criterion, starting_points=start[rows.to(start.device)])
    except _OutOfQueries:
        pass
    return model.outcome()


def run_hsja(
    blackbox: BlackBox,
    x: Tensor,
    y: Tensor,
    *,
    target: Tensor | None = None,
    max_queries: int = 10_000,
    index: Tensor | None = None,
    starting_points: Tensor | None = None,
    initial_gradient_eval_steps: int = 100,
    max_gradient_eval_steps: int = 10_000,
    gamma: float = 1.0,
) -> AttackOutcome:
    """HopSkipJump (L2, geometric step-size search; Chen et al. 2020's defaults) within ``max_queries`` per image.

    Its iteration count is set so the budget, not the step count, ends the
    attack (each iteration spends at least ``initial_gradient_eval_steps`` queries).
    """
    steps = int(max_queries) // max(1, initial_gradient_eval_steps) + 1
    attack = fb.attacks.HopSkipJumpAttack(
        steps=steps,
        initial_gradient_eval_steps=initial_gradient_eval_steps,
        max_gradient_eval_steps=max_gradient_eval_steps,
        gamma=gamma,
        constraint="l2",
    )
    return run_foolbox_attack(attack, blackbox, x, y, target=target, max_queries=max_queries, index=index,
                              starting_points=starting_points)


def run_boundary(
    blackbox: BlackBox,
    x: Tensor,
    y: Tensor,
    *,
    target: Tensor | None = None,
    max_queries: int = 10_000,
    index: Tensor | None = None,
    starting_points: Tensor | None = None,
    spherical_step: float = 1e-2,
    source_step: float = 1e-2,
    step_adaptation: float = 1.5,
) -> AttackOutcome:
    """Boundary attack (Brendel et al. 2018; foolbox's defaults) within ``max_queries`` per image.

    Each of its steps spends at least one query per image, so at most
    ``max_queries`` steps are asked for; the budget ends the attack.
    """
    attack = fb.attacks.BoundaryAttack(
        steps=int(max_queries),
        spherical_step=spherical_step,
        source_step=source_step,
        step_adaptation=step_adaptation,
    )
    return run_foolbox_attack(attack, blackbox, x, y, target=target, max_queries=max_queries, index=index,
                              starting_points=starting_points)
