"""What an attack on a batch of images produced, and the numbers reported from it.

Every attack in this package (score-based, decision-based, meta) returns an
:class:`AttackOutcome`: the adversarial images, per-image success, queries and
L2 distortion. The reported metrics follow Meta-Attack (Du et al., ICLR 2020,
Tables 1–3): success rate over all images; mean L2 (whole image, pixels in
[0, 1]) and mean / median queries over the successful images only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def l2_distance(x: Tensor, x_adv: Tensor) -> Tensor:
    """(N,) L2 norm of ``x_adv − x`` over the whole image, in [0, 1] pixel units."""
    return (x_adv.detach().double() - x.detach().double().to(x_adv.device)).flatten(1).norm(dim=1).float()


@dataclass
class AttackOutcome:
    """Per-image result of an attack; all tensors on the CPU, first dimension N images.

    Attributes:
        x_adv: (N, C, H, W) final images (the adversarial one where ``success``,
            otherwise the last iterate / starting image).
        success: (N,) bool, the target was fooled (untargeted) or gave the
            target class (targeted) on ``x_adv``.
        queries: (N,) int64 queries the attack spent on each image.
        l2: (N,) float32 ``‖x_adv − x‖₂`` over the whole image.
        labels: (N,) true labels, if known.
        target_classes: (N,) target classes of a targeted attack, else None.
        first_success: (N,) int64 queries spent when the first adversarial
            was found, for attacks that go on spending after it (the
            minimisation attacks HopSkipJump and Boundary shrink the
            distortion until the budget is gone); None where success ends
            the attack, so ``queries`` is that count.
    """

    x_adv: Tensor
    success: Tensor
    queries: Tensor
    l2: Tensor
    labels: Tensor | None = None
    target_classes: Tensor | None = None
    first_success: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.x_adv.shape[0]
        self.x_adv = self.x_adv.detach().cpu()
        self.success = self.success.detach().cpu().bool().reshape(-1)
        self.queries = self.queries.detach().cpu().long().reshape(-1)
        self.l2 = self.l2.detach().cpu().float().reshape(-1)
        if self.labels is not None:
            self.labels = self.labels.detach().cpu().long().reshape(-1)
        if self.target_classes is not None:
            self.target_classes = self.target_classes.detach().cpu().long().reshape(-1)
        if self.first_success is not None:
            self.first_success = self.first_success.detach().cpu().long().reshape(-1)
        for name in ("success", "queries", "l2", "labels", "target_classes", "first_success"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"AttackOutcome.{name} has {len(value)} entries for {n} images")

    @classmethod
    def build(
        cls,
        x: Tensor,
        x_adv: Tensor,
        success: Tensor,
        queries: Tensor,
        *,
        labels: Tensor | None = None,
        target_classes: Tensor | None = None,
        first_success: Tensor | None = None,
    ) -> AttackOutcome:
        """An outcome with ``l2`` computed from the clean images ``x``."""
        return cls(x_adv, success, queries, l2_distance(x, x_adv), labels, target_classes, first_success)

    def __len__(self) -> int:
        return self.x_adv.shape[0]

    @property
    def n_images(self) -> int:
        return len(self)

    def summary(self) -> dict[str, float | int]:
        """Success rate over all images; mean L2 and mean / median queries over the successes (NaN if none)."""
        ok = self.success
        n_ok = int(ok.sum())
        nan = float("nan")
        return {
            "n_images": len(self),
            "n_success": n_ok,
            "success_rate": n_ok / len(self) if len(self) else nan,
            "mean_l2": float(self.l2[ok].double().mean()) if n_ok else nan,
            "mean_queries": float(self.queries[ok].double().mean()) if n_ok else nan,
            # the usual median (mean of the two middle values for an even count)
            "median_queries": float(self.queries[ok].double().quantile(0.5)) if n_ok else nan,
            "total_queries": int(self.queries.sum()),
        }

    def budget_curve(self, budgets: Sequence[int]) -> list[float]:
        """Success rate if each image could spend at most ``b`` queries, for each ``b`` in ``budgets``.

        An image counts at budget ``b`` when it succeeded with ``queries ≤ b``
        (``first_success ≤ b`` for an attack that records it: a run with
        budget ``b`` would have found that adversarial and stopped there).
        """
        if not len(self):
            return [math.nan for _ in budgets]
        needed = self.queries if self.first_success is None else self.first_success
        return [float((self.success & (needed <= int(b))).double().mean()) for b in budgets]

    def rows(self, *, offset: int = 0) -> list[dict[str, int | float | bool | None]]:
        """One dict per image (``image, label, target, success, queries, l2, first_success``) for a CSV."""
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "image": i + offset,
                    "label": None if self.labels is None else int(self.labels[i]),
                    "target": None if self.target_classes is None else int(self.target_classes[i]),
                    "success": bool(self.success[i]),
                    "queries": int(self.queries[i]),
                    "l2": float(self.l2[i]),
                    "first_success": None if self.first_success is None or not self.success[i]
                    else int(self.first_success[i]),
                }
            )
        return out

    @staticmethod
    def concat(outcomes: Sequence[AttackOutcome]) -> AttackOutcome:
        """One outcome for the images of several (e.g. per-batch) outcomes, in order."""
        if not outcomes:
            raise ValueError("AttackOutcome.concat needs at least one outcome")

        def cat(name: str) -> Tensor | None:
            parts = [getattr(o, name) for o in outcomes]
            if any(p is None for p in parts):
                return None
            return torch.cat(parts)

        return AttackOutcome(
            torch.cat([o.x_adv for o in outcomes]),
            cat("success"),
            cat("queries"),
            cat("l2"),
            cat("labels"),
            cat("target_classes"),
            cat("first_success"),
        )
