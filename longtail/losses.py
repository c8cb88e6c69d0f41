"""Per-example losses for long-tailed recognition.

Every loss here maps ``(logits N×C, targets N)`` to a length-N tensor of
per-example losses; the methods weight and reduce them (class weights, meta
weights), so one convention serves plain CE, the class-balanced losses and the
meta-reweighting methods alike.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy per example."""
    return F.cross_entropy(logits, targets, reduction="none")


def focal_loss(logits: Tensor, targets: Tensor, *, gamma: float = 1.0) -> Tensor:
    """Softmax focal loss per example: −(1 − p_y)^γ · log p_y (Lin et al., ICCV 2017).

    Cui et al. (CVPR 2019) weight it by class-balanced weights (CB focal); they
    use the sigmoid form, we use the softmax form as Cao et al.'s code does.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    return -((1 - log_p.exp()).clamp_min(0) ** gamma) * log_p


def ldam_margins(counts: Sequence[int], *, max_margin: float = 0.5) -> Tensor:
    """LDAM's per-class margins Δ_j ∝ n_j^{−1/4}, scaled so the largest is ``max_margin`` (Cao et al. 2019)."""
    n = torch.tensor([float(c) for c in counts])
    margins = n.pow(-0.25)
    return margins * (max_margin / margins.max())


def ldam_loss(logits: Tensor, targets: Tensor, *, margins: Tensor, scale: float = 30.0) -> Tensor:
    """Label-distribution-aware margin loss per example (Cao, Wei, Gaidon, Arechiga, Ma, NeurIPS 2019).

    ``logits`` are cosines from a normalised linear head; the true class's logit
    is lowered by its margin Δ_y, then all logits are scaled by ``scale`` (s = 30)
    before the softmax cross-entropy.
    """
    shift = margins.to(logits)[targets]
    adjusted = logits - F.one_hot(targets, logits.shape[1]).to(logits) * shift[:, None]
    return F.cross_entropy(scale * adjusted, targets, reduction="none")


def log_priors(counts: Sequence[int]) -> Tensor:
    """log π_y of the training label distribution."""
    n = torch.tensor([float(c) for c in counts])
    return (n / n.sum()).log()


def logit_adjusted_loss(logits: Tensor, targets: Tensor, *, log_prior: Tensor, tau: float = 1.0) -> Tensor:
    """Logit-adjusted softmax cross-entropy per example (Menon et al., ICLR 2021, eq. 10).

    Training adds τ·log π_y to every logit; prediction uses the raw logits, so
    the classifier is Fisher-consistent for the balanced error.
    """
    return F.cross_entropy(logits + tau * log_prior.to(logits), targets, reduction="none")


def weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    """Σ w_i ℓ_i / Σ w_i (PyTorch's weighted cross-entropy reduction); 0 when all weights are 0."""
    total = weights.sum()
    return (weights * losses).sum() / total.clamp_min(torch.finfo(losses.dtype).tiny)
