"""Class-balanced weights from the effective number of samples.

Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number
of Samples", CVPR 2019: a class with n samples has effective number
E_n = (1 − β^n)/(1 − β); its weight is 1/E_n = (1 − β)/(1 − β^n), normalised
so the C weights sum to C. β = 0 gives uniform weights, β → 1 inverse class
frequency. These are the w_y of Jamal et al.'s two-component weighting and the
DRW weights of Cao et al.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def class_balanced_weights(counts: Sequence[int], *, beta: float = 0.9999) -> torch.Tensor:
    """Per-class weights (1 − β)/(1 − β^{n_c}), normalised to sum to the number of classes (float32)."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    if (n < 1).any():
        raise ValueError(f"every class needs at least one sample, got counts {list(counts)}")
    effective = (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), n)) / (1 - beta)
    weights = 1.0 / effective
    return (weights / weights.sum() * len(n)).float()
