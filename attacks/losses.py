"""The attack losses computed from a target's scores, and the adversarial test.

The loss every score-based attack here minimises is the C&W log-probability
margin used by Meta-Attack (Du et al., "Query-efficient meta attack to deep
neural networks", ICLR 2020, eq. 4; after Carlini & Wagner 2017):

* untargeted: ``max(log p_y − max_{j≠y} log p_j, −κ)``: positive while the
  image is still classified as its true class ``y``, ``−κ`` (0 by default)
  once it is fooled;
* targeted: ``max(max_{j≠t} log p_j − log p_t, −κ)``: positive until the
  target class ``t`` wins.

From logits the log-softmax normaliser cancels in the difference, so the loss
is computed on the logits directly (exact and numerically stable); from
probabilities it takes the log. Everything is batched over rows and
differentiable, so the same function serves the whitebox gradient sets and
the zeroth-order estimates.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lazyapps.errors import LazyAppsError

SCORE_KINDS = ("logits", "probs")

#: A loss an estimator differentiates: ``loss(scores, y, target) -> (B,)``.
LossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

# Floor for probabilities before the log: a probability that underflowed to 0
# would otherwise give an infinite loss and NaN finite differences.
_PROB_FLOOR = 1e-30


def log_scores(scores: Tensor, kind: str = "logits") -> Tensor:
    """Scores shifted so that differences between classes are log-probability differences."""
    if kind == "logits":
        return scores
    if kind == "probs":
        return scores.clamp_min(_PROB_FLOOR).log()
    raise LazyAppsError(f"unknown score kind {kind!r}; valid: {', '.join(SCORE_KINDS)}")


def _class_and_best_other(log_p: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:
    """``log p_cls`` and ``max_{j≠cls} log p_j`` per row."""
    cls = cls.to(device=log_p.device, dtype=torch.long).reshape(-1, 1)
    own = log_p.gather(1, cls).squeeze(1)
    others = log_p.scatter(1, cls, float("-inf"))
    return own, others.max(dim=1).values


def margin_loss(
    scores: Tensor,
    y: Tensor,
    target: Tensor | None = None,
    *,
    kind: str = "logits",
    kappa: float = 0.0,
) -> Tensor:
    """C&W log-probability margin loss per row (Du et al. 2020, eq. 4).

    Args:
        scores: (B, K) logits or probabilities (``kind``).
        y: (B,) true labels, used when ``target`` is None (untargeted).
        target: (B,) target classes for a targeted attack, or None.
        kind: ``"logits"`` or ``"probs"``.
        kappa: confidence margin; the loss stops decreasing at ``−kappa``.

    Returns:
        (B,) losses; ``≤ 0`` exactly when the row is adversarial (for ``kappa = 0``).
    """
    if scores.dim() != 2:
        raise LazyAppsError(f"margin_loss needs (batch, classes) scores, got shape {tuple(scores.shape)}")
    log_p = log_scores(scores, kind)
    if target is None:
        own, other = _class_and_best_other(log_p, y)
        margin = own - other
    else:
        own, other = _class_and_best_other(log_p, target)
        margin = other - own
    return margin.clamp_min(-kappa if kappa else 0.0)


class MarginLoss:
    """:func:`margin_loss` with its settings bound, as the ``loss`` estimators take."""

    def __init__(self, *, kind: str = "logits", kappa: float = 0.0):
        if kind not in SCORE_KINDS:
            raise LazyAppsError(f"unknown score kind {kind!r}; valid: {', '.join(SCORE_KINDS)}")
        self.kind, self.kappa = kind, float(kappa)

    def __call__(self, scores: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        return margin_loss(scores, y, target, kind=self.kind, kappa=self.kappa)

    def __repr__(self) -> str:
        return f"MarginLoss(kind={self.kind!r}, kappa={self.kappa})"


def predicted_labels(scores: Tensor) -> Tensor:
    """Top-1 labels from (B, K) scores, or the labels themselves if given (B,) integer labels."""
    if scores.dim() == 1 and not scores.is_floating_point():
        return scores.long()
    if scores.dim() != 2:
        raise LazyAppsError(f"expected (batch, classes) scores or (batch,) labels, got shape {tuple(scores.shape)}")
    return scores.argmax(dim=1)


def is_adversarial(scores: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """(B,) bool: untargeted — top-1 is not ``y``; targeted — top-1 is ``target``.

    ``scores`` may be logits, probabilities (same argmax) or top-1 labels from a
    label-only :class:`~attacks.blackbox.BlackBox`.
    """
    pred = predicted_labels(scores)
    if target is None:
        return pred != y.to(pred.device)
    return pred == target.to(pred.device)
