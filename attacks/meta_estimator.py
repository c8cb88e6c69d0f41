"""The meta-attacker as a gradient estimator (Algorithm 4 of the lazy paper; Du et al., ICLR 2020, Algorithm 2).

Every attacked image has its own copy of the meta-attacker (stacked
parameters, :mod:`attacks.per_image`). At an image's j-th, 2j-th, … call the
estimator ranks coordinates by |its copy's predicted gradient|, takes ZOO
finite differences on the top q (one blackbox call for all images), returns
that estimate and fine-tunes the copy on it (masked MSE, a few Adam steps,
vmapped over images). At the other calls (the first j − 1 included: the
meta-trained network starts the attack on its own) it returns its copy's
prediction on its top-q coordinates at zero query cost.

As in Du et al.'s implementation the differences are forward ones, one query
per coordinate: the scores of the current point are already known (the attack
loop's check of the previous step), so a ZOO step costs q queries, not 2q. Coordinates outside the top q are 0
in the returned gradient, so an attack's sign step moves exactly those q
coordinates — Du et al.'s coordinate update.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lazyapps.errors import LazyAppsError
from lazyapps.functional import params_of

from .blackbox import BlackBox, image_index
from .estimators import GradientEstimator, ZOOEstimator
from .gradient_sets import normalise_maps
from .losses import LossFn
from .per_image import finetune, index_mask, predict, stack_copies, top_indices


def blocked_by_box(x: Tensor, grad: Tensor) -> Tensor:
    """Coordinates where the descent step ``x − λ·sign(grad)`` is undone by clipping to [0, 1]."""
    return ((x <= 0) & (grad > 0)) | ((x >= 1) & (grad < 0))


class MetaEstimator(GradientEstimator):
    """Meta-attacker predictions, refreshed every ``every`` calls by ZOO on its top-``q`` coordinates.

    Args:
        meta_attacker: the (meta-trained) image → gradient-map network.
        params: its parameters θ (default: the module's own); every image's copy starts from them.
        q: coordinates per step (Du et al.: 128 MNIST, 125 CIFAR-10).
        every: j, the period of zeroth-order estimates (Du et al.: 5 MNIST, 3 CIFAR-10).
        h: finite-difference step (1e-4).
        finetune_steps, finetune_lr: Adam steps and learning rate of each fine-tuning (Du et al.'s
            implementation: 20 at 1e-2).
        zoo_mode: ``"forward"`` (1 query per coordinate given the current scores; Du et al.) or
            ``"symmetric"`` (2 per coordinate, more accurate).
        skip_blocked: rank last the coordinates a descent sign step cannot move: a pixel at 0
            whose predicted gradient is positive, or at 1 with a negative one (the step would
            be clipped back and the coordinate's queries wasted). Our default; Du et al. rank by
            |prediction| alone (``False``), which on MNIST costs about 20% more queries.
    """

    name = "meta"

    def __init__(
        self,
        meta_attacker: nn.Module,
        params: Mapping[str, Tensor] | None = None,
        *,
        q: int = 128,
        every: int = 5,
        h: float = 1e-4,
        finetune_steps: int = 20,
        finetune_lr: float = 1e-2,
        zoo_mode: str = "forward",
        skip_blocked: bool = True,
    ):
        if q < 1 or every < 1 or finetune_steps < 0:
            raise LazyAppsError(f"need q >= 1, every >= 1 and finetune_steps >= 0, got q={q}, every={every}, "
                                f"finetune_steps={finetune_steps}")
        if not (math.isfinite(float(finetune_lr)) and float(finetune_lr) > 0):
            raise LazyAppsError(f"finetune_lr must be a positive number, got {finetune_lr}")
        if params is not None:  # (functional_call would silently use the module's own tensors for missing names)
            names = dict(meta_attacker.named_parameters())
            missing, unexpected = sorted(set(names) - set(params)), sorted(set(params) - set(names))
            if missing or unexpected:
                raise LazyAppsError(f"params do not fit the meta-attacker: missing {missing or 'none'}, "
                                    f"unexpected {unexpected or 'none'}")
        self.model = meta_attacker.eval()
        self.theta = {k: v.detach() for k, v in (params if params is not None else params_of(meta_attacker)).items()}
        self.q, self.every = int(q), int(every)
        self.finetune_steps, self.finetune_lr = int(finetune_steps), float(finetune_lr)
        self.zoo = ZOOEstimator(h=h, mode=zoo_mode)
        self.skip_blocked = bool(skip_blocked)
        self.reset()

    def reset(self) -> None:
        """Forget every image's fine-tuned copy and call count."""
        self._slot = torch.full((0,), -1, dtype=torch.long)  # blackbox image number -> row of the copies
        self._copies: dict[str, Tensor] | None = None
        self._calls = torch.zeros(0, dtype=torch.long)  # per row
        self.zoo_calls = 0

    def queries_per_estimate(self, x_shape: tuple[int, ...], *, scores_known: bool = True) -> int:
        """The most one call charges an image: a ZOO step on q coordinates (other calls are free)."""
        d = 1
        for s in x_shape[1:]:
            d *= s
        return self.zoo.queries_on(min(self.q, d), scores_known=scores_known)

    def next_cost(self, index: Tensor, x_shape: tuple[int, ...], *, scores_known: bool = True) -> Tensor:
        """A ZOO step's queries for images whose next call is one of the j-th, 0 for a free prediction."""
        index = torch.as_tensor(index).reshape(-1).long().cpu()
        rows = torch.full_like(index, -1)  # -1: no copy yet, so no call yet
        known = index < len(self._slot)
        rows[known] = self._slot[index[known]]
        calls = torch.zeros_like(index)
        calls[rows >= 0] = self._calls[rows[rows >= 0]]
        due = (calls + 1) % self.every == 0  # as estimate() decides it
        return due.long() * self.queries_per_estimate(x_shape, scores_known=scores_known)

    def _rows(self, index: Tensor, device: torch.device) -> Tensor:
        """Rows of the copies for blackbox images ``index``, creating copies of θ for new images."""
        need = int(index.max()) + 1
        if need > len(self._slot):
            self._slot = torch.cat([self._slot, torch.full((need - len(self._slot),), -1, dtype=torch.long)])
        new = index[self._slot[index] < 0].unique()
        if len(new):
            start = 0 if self._copies is None else next(iter(self._copies.values())).shape[0]
            self._slot[new] = torch.arange(start, start + len(new))
            fresh = stack_copies({k: v.to(device) for k, v in self.theta.items()}, len(new))
            self._copies = fresh if self._copies is None else {k: torch.cat([self._copies[k], fresh[k]]) for k in fresh}
            self._calls = torch.cat([self._calls, torch.zeros(len(new), dtype=torch.long)])
        return self._slot[index]

    def copies(self, index: Tensor) -> dict[str, Tensor]:
        """The current parameters of the copies of images ``index`` (stacked)."""
        index = torch.as_tensor(index).long().cpu()  # the slot table lives on the CPU
        unknown = (index < 0) | (index >= len(self._slot))  # (checked first: indexing would wrap or fail)
        if self._copies is None or bool(unknown.any()) or bool((self._slot[index] < 0).any()):
            raise KeyError("some of these images have no meta-attacker copy yet")
        rows = self._slot[index]
        return {k: v[rows.to(v.device)] for k, v in self._copies.items()}

    def estimate(
        self,
        blackbox: BlackBox,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        index: Tensor | None = None,
        target: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        index = image_index(index, b)
        x = x.detach()
        rows = self._rows(index, x.device)
        dev_rows = rows.to(x.device)
        params = {k: v[dev_rows] for k, v in self._copies.items()}
        work = next(iter(params.values())).dtype  # the attacker's own dtype; the images may be another
        pred = predict(self.model, params, x.to(work)).to(x.dtype)
        d = x[0].numel()
        blocked = blocked_by_box(x, pred) if self.skip_blocked else None
        top = top_indices(pred, self.q, exclude=blocked)
        mask = index_mask(top, pred)
        grad = torch.where(mask, pred, torch.zeros_like(pred))
        queries = torch.zeros(b, dtype=torch.long)
        cost = self.zoo.queries_on(min(self.q, d), scores_known=scores is not None)
        # calls j−1, 2j−1, …: the j-th, 2j-th … iteration of each image (Du et al., Algorithm 2)
        due = ((self._calls[rows] + 1) % self.every == 0) & (blackbox.remaining(index) >= cost)
        if bool(due.any()):
            sel = due.nonzero().flatten()
            dev_sel = sel.to(x.device)
            coords = top[dev_sel]
            zoo_grad, zoo_queries = self.zoo.estimate_on(
                blackbox, x[dev_sel], y[dev_sel.to(y.device)], coords, loss=loss, index=index[sel],
                target=None if target is None else target[dev_sel.to(target.device)],
                scores=None if scores is None else scores[dev_sel.to(scores.device)],
            )
            grad[dev_sel] = zoo_grad.to(grad.dtype)
            queries[sel] = zoo_queries
            self.zoo_calls += 1
            if self.finetune_steps:
                # Same scale as the meta-training maps: each estimate divided by its own std.
                targets, _ = normalise_maps(zoo_grad.to(work))
                sub = {k: v[dev_sel] for k, v in params.items()}
                tuned = finetune(self.model, sub, x[dev_sel].to(work), targets, mask[dev_sel],
                                 steps=self.finetune_steps, lr=self.finetune_lr)
                for k, v in tuned.items():
                    self._copies[k][dev_rows[dev_sel]] = v
        self._calls[rows] += 1
        return grad, queries

    def __repr__(self) -> str:
        return (f"MetaEstimator(q={self.q}, every={self.every}, h={self.zoo.h}, zoo_mode={self.zoo.mode!r}, "
                f"finetune_steps={self.finetune_steps}, finetune_lr={self.finetune_lr}, skip_blocked={self.skip_blocked})")


__all__ = ["MetaEstimator", "blocked_by_box"]
