"""The one attack loop of every score-based attack: estimate, step, check, stop.

Many images are attacked at once; each has its own query count, budget and
stopping point. One iteration for the still-active images is:

1. ``g = estimator.estimate(blackbox, x_adv, y, scores=…)`` — any
   :class:`~attacks.estimators.GradientEstimator` (ZOO, NES, Bandits, the
   meta-attacker); it gets the scores of ``x_adv`` the loop already paid for,
   so forward differences need no extra baseline query;
2. a descent step on the margin loss:

   * ``update="sign"``: ``x ← x − λ·sign(g)``. With ZOO's or the
     meta-attacker's sparse estimates (0 outside the chosen coordinates) this
     is exactly the coordinate update ``x[I] ← x[I] − λ·sign(g[I])`` of ZOO /
     Meta-Attack (Du et al., ICLR 2020, Algorithm 2); with NES / Bandits'
     dense estimates it is the PGD-style L∞ step of Ilyas et al. (2018, 2019);
   * ``update="l2"``: ``x ← x − λ·g/‖g‖₂`` (the L2 variants);

   then projection onto the ``epsilon`` ball around the clean image (L∞ ball
   for ``"sign"``, L2 ball for ``"l2"``; no ball when ``epsilon`` is None,
   Meta-Attack's setting) and clipping to [0, 1];
3. one query of the new point per image (counted): its scores decide success
   and feed the next estimate.

An image stops as soon as it is adversarial, or when its next iteration
(``estimator.next_cost`` + 1 check: a free meta-attacker prediction costs only
the check) would not fit in what is left of ``max_queries`` and of the
blackbox's own budget, so the blackbox never refuses a query of this loop and
an image stops only at a call it cannot afford. Before the first iteration each image costs
one query to learn whether it is already misclassified.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lazyapps.errors import LazyAppsError, UnknownNameError
from lazyapps.progress import progress

from .blackbox import BlackBox
from .estimators import BanditsEstimator, GradientEstimator, NESEstimator, ZOOEstimator, default_loss
from .inputs import check_images, check_targets
from .losses import LossFn, is_adversarial
from .outcome import AttackOutcome

UPDATES = ("sign", "l2")

#: The score-based baselines by CLI name.
ESTIMATORS: dict[str, type[GradientEstimator]] = {
    "zoo": ZOOEstimator,
    "nes": NESEstimator,
    "bandits": BanditsEstimator,
}

#: Settings of the score-based baselines by dataset: estimator keywords and
#: :func:`score_attack` keywords. Estimators use their papers' settings (ZOO:
#: 128 random coordinates per step, h = 1e-4; NES: 50 antithetic samples,
#: σ = 0.001; Bandits: the paper's L2 configuration, η = 0.01, δ = 0.01, online
#: lr 0.1, 4 px tiles). The image steps are ours, chosen on held-out MNIST /
#: CIFAR-10 test images (docs/attack_baselines.md): the papers' ImageNet step
#: sizes do not transfer to 28/32 px images, and Meta-Attack's comparison has
#: no ε-ball, so all run unbounded (clipping to [0, 1] only), like Meta-Attack.
BASELINE_SETTINGS: dict[str, dict[str, dict[str, dict]]] = {
    "mnist": {
        "zoo": {"estimator": {"coordinates": 128, "h": 1e-4, "mode": "symmetric"},
                "attack": {"update": "sign", "step_size": 0.1}},
        "nes": {"estimator": {"samples": 50, "sigma": 0.001},
                "attack": {"update": "l2", "step_size": 0.2}},
        "bandits": {"estimator": {"prior_update": "gd", "fd_eta": 0.01, "exploration": 0.01, "online_lr": 0.1,
                                  "tile_size": 4},
                    "attack": {"update": "l2", "step_size": 0.05}},
    },
    "cifar10": {
        "zoo": {"estimator": {"coordinates": 128, "h": 1e-4, "mode": "symmetric"},
                "attack": {"update": "sign", "step_size": 0.02}},
        "nes": {"estimator": {"samples": 50, "sigma": 0.001},
                "attack": {"update": "l2", "step_size": 0.2}},
        "bandits": {"estimator": {"prior_update": "gd", "fd_eta": 0.01, "exploration": 0.01, "online_lr": 0.1,
                                  "tile_size": 4},
                    "attack": {"update": "l2", "step_size": 0.02}},
    },
}

#: Every baseline :func:`run_baseline` knows: score-based, then decision-based (foolbox).
BASELINES = ("zoo", "nes", "bandits", "hsja", "boundary")

#: L∞ radii conventional for each dataset, for callers that want an ε-ball
#: (Madry et al. 2018: 0.3 on MNIST, 8/255 on CIFAR-10). Meta-Attack uses none.
SUGGESTED_EPSILON = {"mnist": 0.3, "cifar10": 8 / 255}


def make_estimator(name: str, **settings) -> GradientEstimator:
    """A baseline estimator by name (``zoo``, ``nes``, ``bandits``) with keyword settings."""
    if name not in ESTIMATORS:
        raise UnknownNameError("estimator", name, ESTIMATORS)
    return ESTIMATORS[name](**settings)


def descent_step(x: Tensor, grad: Tensor, *, step_size: float, update: str = "sign") -> Tensor:
    """One step that decreases the loss: ``x − λ·sign(g)`` or ``x − λ·g/‖g‖₂`` (per image)."""
    if update == "sign":
        return x - step_size * grad.sign()
    if update == "l2":
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape((-1,) + (1,) * (x.dim() - 1))
        return x - step_size * grad / norm
    raise UnknownNameError("update", update, UPDATES)


def project(x_new: Tensor, x_clean: Tensor, *, epsilon: float | None, update: str = "sign") -> Tensor:
    """Back into the ε-ball around ``x_clean`` (L∞ for ``sign``, L2 for ``l2``; none if ε is None), then [0, 1]."""
    if epsilon is not None:
        delta = x_new - x_clean
        if update == "sign":
            delta = delta.clamp(-epsilon, epsilon)
        else:
            norm = delta.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (x_new.dim() - 1))
            delta = delta * (epsilon / norm.clamp_min(1e-12)).clamp(max=1.0)
        x_new = x_clean + delta
    return x_new.clamp(0.0, 1.0)


def score_attack(
    blackbox: BlackBox,
    x: Tensor,
    y: Tensor,
    estimator: GradientEstimator,
    *,
    target: Tensor | None = None,
    loss: LossFn | None = None,
    max_queries: int = 10_000,
    step_size: float = 0.01,
    update: str = "sign",
    epsilon: float | None = None,
    index: Tensor | None = None,
    max_iterations: int | None = None,
    reset_estimator: bool = True,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    desc: str = "attack",
) -> AttackOutcome:
    """Attack a batch of images with a score-based gradient estimator (module docstring).

    Args:
        blackbox: the target (``output`` logits or probs).
        x: (N, C, H, W) clean images in [0, 1]; y: (N,) their true labels.
        estimator: ZOO / NES / Bandits / meta-attacker estimator.
        target: (N,) target classes for a targeted attack, else None (untargeted).
        loss: the loss to decrease; default the C&W margin loss (Du et al. eq. 4).
        max_queries: per-image budget of this attack, the initial check included.
        step_size: λ of the update (Du et al.: 0.01 coordinate steps; Ilyas
            et al.: 0.01 L∞ image step).
        update: ``"sign"`` or ``"l2"``.
        epsilon: radius of the perturbation ball, or None for none.
        index: (N,) blackbox image numbers of the rows (default ``arange(N)``);
            each image's queries are counted there.
        max_iterations: optional cap on iterations (the query budget always applies).
        reset_estimator: call ``estimator.reset()`` first (forget per-image state
            of a previous attack that used the same image numbers).
        callback: ``callback(iteration, active_rows, x_adv)`` after each iteration.

    Returns:
        AttackOutcome with the final images, success, queries (blackbox counts
        spent in this call) and L2 distortion.
    """
    if update not in UPDATES:
        raise UnknownNameError("update", update, UPDATES)
    if int(max_queries) < 1:
        raise LazyAppsError(f"max_queries must be at least 1, got {max_queries}")
    if epsilon is not None and epsilon <= 0:
        raise LazyAppsError(f"epsilon must be positive (or None for no bound), got {epsilon}")
    if not (math.isfinite(float(step_size)) and float(step_size) > 0):  # (a negative step would climb the loss)
        raise LazyAppsError(f"step_size must be a positive number, got {step_size}")
    check_images(x)
    n = x.shape[0]
    check_targets(y, target, blackbox.num_classes(tuple(x.shape[1:])) if n else None, images=n)
    loss = loss or default_loss(blackbox)
    index = torch.arange(n) if index is None else torch.as_tensor(index).reshape(-1).long().cpu()
    if reset_estimator:
        estimator.reset()

    x = x.detach()
    x_adv = x.clone()
    blackbox.remaining(index)  # sizes the counters for these images
    start = blackbox.counts[index].clone()

    def left() -> Tensor:
        spent = blackbox.counts[index] - start
        return torch.minimum(blackbox.remaining(index), int(max_queries) - spent)

    success = torch.zeros(n, dtype=torch.bool)
    done = left() < 1  # not even the first check fits
    scores: Tensor | None = None
    first = (~done).nonzero().flatten()
    if len(first):
        first_scores = blackbox.query(x[first.to(x.device)], index=index[first])
        scores = first_scores.new_zeros((n,) + tuple(first_scores.shape[1:]))
        scores[first.to(scores.device)] = first_scores
        success[first] = is_adversarial(first_scores, y[first.to(y.device)],
                                        None if target is None else target[first.to(target.device)]).cpu()
    done |= success
    # (an estimator written to the documented interface without subclassing GradientEstimator has no next_cost:
    # every call then costs queries_per_estimate, as for the built-in fixed-cost estimators)
    next_cost = getattr(estimator, "next_cost", None) or (lambda idx, shape, scores_known: torch.full(
        (len(idx),), estimator.queries_per_estimate(shape, scores_known=scores_known), dtype=torch.long))
    bar = progress(total=n, desc=desc, unit="img")
    iteration = 0
    while scores is not None:
        active = ~done & (left() >= next_cost(index, tuple(x.shape), scores_known=True) + 1)
        bar.update(int((~active).sum()) - bar.n)  # images finished: fooled or out of budget
        if not bool(active.any()) or (max_iterations is not None and iteration >= max_iterations):
            break
        rows = active.nonzero().flatten()
        dev = rows.to(x.device)  # one host-to-device copy (a sync on CUDA) reused for every tensor on that device

        def on(t: Tensor) -> Tensor:
            return dev if t.device == dev.device else rows.to(t.device)

        y_a = y[on(y)]
        t_a = None if target is None else target[on(target)]
        scores_rows = on(scores)
        grad, _ = estimator.estimate(
            blackbox, x_adv[dev], y_a, loss=loss, index=index[rows], target=t_a, scores=scores[scores_rows]
        )
        x_new = project(descent_step(x_adv[dev], grad.to(x.dtype), step_size=step_size, update=update),
                        x[dev], epsilon=epsilon, update=update)
        new_scores = blackbox.query(x_new, index=index[rows])
        x_adv[dev] = x_new
        scores[scores_rows] = new_scores
        won = is_adversarial(new_scores, y_a, t_a).cpu()
        success[rows] = won
        done[rows] |= won
        iteration += 1
        if callback is not None:
            callback(iteration, rows, x_adv)
    bar.update(n - bar.n)
    bar.close()

    queries = blackbox.counts[index] - start
    return AttackOutcome.build(x, x_adv, success, queries, labels=y, target_classes=target)


def baseline_settings(method: str, dataset: str = "mnist") -> dict:
    """The settings :func:`run_baseline` attacks with for ``method`` on ``dataset``, as a result should record them.

    Score-based methods: ``{"estimator": ..., "attack": ...}`` from :data:`BASELINE_SETTINGS`; decision-based
    ones: the keyword defaults of their :mod:`attacks.foolbox_bridge` runner (the one place they are set).
    """
    if method not in BASELINES:
        raise UnknownNameError("baseline", method, BASELINES)
    if method in ("hsja", "boundary"):
        import inspect

        from . import foolbox_bridge

        runner = foolbox_bridge.run_hsja if method == "hsja" else foolbox_bridge.run_boundary
        per_call = ("blackbox", "x", "y", "target", "max_queries", "index", "starting_points")
        return {name: p.default for name, p in inspect.signature(runner).parameters.items() if name not in per_call}
    if dataset not in BASELINE_SETTINGS:
        raise UnknownNameError("dataset for baseline settings", dataset, BASELINE_SETTINGS)
    spec = BASELINE_SETTINGS[dataset][method]
    return {"estimator": dict(spec["estimator"]), "attack": dict(spec["attack"])}


def run_baseline(
    method: str,
    blackbox: BlackBox,
    x: Tensor,
    y: Tensor,
    *,
    dataset: str = "mnist",
    target: Tensor | None = None,
    max_queries: int = 10_000,
    index: Tensor | None = None,
    starting_points: Tensor | None = None,
    estimator_settings: dict | None = None,
    attack_settings: dict | None = None,
) -> AttackOutcome:
    """Run baseline ``method`` (``zoo``, ``nes``, ``bandits``, ``hsja``, ``boundary``) with its settings.

    Score-based methods use :data:`BASELINE_SETTINGS` ``[dataset][method]``,
    updated by ``estimator_settings`` / ``attack_settings``; the decision-based
    ones go through :mod:`attacks.foolbox_bridge` (``starting_points`` for
    targeted runs) and see only labels, whatever the blackbox's output.
    """
    if method not in BASELINES:
        raise UnknownNameError("baseline", method, BASELINES)
    if method in ("hsja", "boundary"):
        from . import foolbox_bridge

        runner = foolbox_bridge.run_hsja if method == "hsja" else foolbox_bridge.run_boundary
        return runner(blackbox, x, y, target=target, max_queries=max_queries, index=index,
                      starting_points=starting_points, **(attack_settings or {}))
    spec = baseline_settings(method, dataset)
    estimator = make_estimator(method, **{**spec["estimator"], **(estimator_settings or {})})
    return score_attack(blackbox, x, y, estimator, target=target, max_queries=max_queries, index=index,
                        desc=method, **{**spec["attack"], **(attack_settings or {})})
