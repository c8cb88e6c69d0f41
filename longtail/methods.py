"""The training methods of ``lazyapps longtail train --method``, by name.

Each method turns a training batch into the scalar loss whose gradient the
trainer's SGD step follows. Plain methods (``ce``, ``cb-ce``, ``cb-focal``,
``ldam-drw``, ``logit-adjust``) only weight or reshape the per-example loss.
Meta methods (``l2rw``, ``meta-weight-net``, ``two-component``,
``lazy-two-component``) train with plain CE until the meta phase starts (epoch
160 of 200 in the paper preset, as Jamal et al.), then weight each example by
a look-ahead on the balanced validation set (:mod:`longtail.reweighting`).
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lazyapps import distributed
from lazyapps.errors import UnknownNameError
from lazyapps.functional import Params, params_of
from lazyapps.teacher import LazyTeacher, explore

from . import losses as L
from .reweighting import LookAhead, chunks, clipped_normalized, lazy_direction, plain_direction, virtual_divisor
from .weights import class_balanced_weights


@dataclass
class StepContext:
    """What a method needs besides the batch: the model, the current lr and epoch, the validation batch."""

    model: nn.Module
    lr: float
    epoch: int  # 0-based
    val_inputs: Tensor | None = None
    val_targets: Tensor | None = None
    # Under torchrun: the whole batch's size and which of its rows the inputs are (this rank's share, ascending).
    # None: the inputs are the whole batch (one process).
    batch_size: int | None = None
    rows: slice | None = None


class BatchShare:
    """One rank's rows of a batch that torchrun's processes split; the meta methods' batch-level arithmetic.

    Sums over the batch are all-reduced and means divide by the whole batch's size, so the per-example weights
    and ε of every rank's rows are those one process computes on the whole batch.
    """

    def __init__(self, size: int, rows: slice, local: int) -> None:
        self.size, self.rows, self.local = int(size), rows, int(local)

    def sums(self, *values: Tensor) -> Tensor:
        """(Σ over the whole batch of each of ``values``), from every rank's part, in one collective."""
        return distributed.sum_over_ranks(torch.stack([v.sum() for v in values]))

    def as_local_mean(self, part: Tensor) -> Tensor:
        """This rank's additive part of a whole-batch loss, scaled for the trainer's example-weighted mean over ranks."""
        return part * (self.size / self.local)

    def parts(self, slices: Sequence[slice]) -> list[slice]:
        """This rank's rows of each slice of the whole batch (contiguous, since the rows ascend)."""
        mine = range(self.size)[self.rows]
        return [slice(bisect.bisect_left(mine, s.start), bisect.bisect_left(mine, s.stop)) for s in slices]


def share_of(ctx: StepContext, local: int) -> BatchShare | None:
    """This rank's :class:`BatchShare` of the step's batch under torchrun; None in one process."""
    return None if ctx.batch_size is None else BatchShare(ctx.batch_size, ctx.rows, local)


def weighted_batch_mean(losses: Tensor, weights: Tensor, share: BatchShare | None, total: Tensor | None = None) -> Tensor:
    """Σ w_i ℓ_i / Σ w_i over the whole batch (PyTorch's weighted cross-entropy reduction).

    In one process :func:`losses.weighted_mean`; under torchrun this rank's part of it, with Σ w over every rank's
    rows (``total``, if the caller has it), scaled as the trainer's mean over ranks expects. Each rank's own Σ w
    would give another loss and another gradient than one process on the whole batch.
    """
    if share is None:
        return L.weighted_mean(losses, weights)
    if total is None:
        total = share.sums(weights)[0]
    return share.as_local_mean((weights * losses).sum() / total.clamp_min(torch.finfo(losses.dtype).tiny))


class Method:
    """Base: plain cross-entropy. Subclasses override :meth:`per_example` / :meth:`loss`."""

    name = "ce"
    summary = "softmax cross-entropy"
    meta = False
    normalized_head = False

    def __init__(self, counts: Sequence[int], *, device: torch.device | str = "cpu") -> None:
        self.counts = list(counts)
        self.device = torch.device(device)
        self.meta_start = 0
        self.diagnostics: dict[str, float] = {}  # means over the steps since reset_diagnostics()
        self._diagnostic_counts: dict[str, int] = {}

    def record(self, **values: float) -> None:
        """Fold one step's diagnostic values into their running means."""
        for key, value in values.items():
            n = self._diagnostic_counts.get(key, 0) + 1
            self._diagnostic_counts[key] = n
            self.diagnostics[key] = self.diagnostics.get(key, 0.0) + (float(value) - self.diagnostics.get(key, 0.0)) / n

    def reset_diagnostics(self) -> None:
        self.diagnostics.clear()
        self._diagnostic_counts.clear()

    def per_example(self, logits: Tensor, targets: Tensor, epoch: int) -> Tensor:
        return L.cross_entropy(logits, targets)

    def loss(self, ctx: StepContext, inputs: Tensor, targets: Tensor) -> Tensor:
        """The scalar training loss of one batch (the real forward updates BatchNorm statistics once)."""
        return self.per_example(ctx.model(inputs), targets, ctx.epoch).mean()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def stale_state(self, state: dict[str, Any], *, meta_epochs: bool) -> str | None:
        """Why a checkpoint's :meth:`state_dict` (of a run that has had meta epochs or not) cannot go on here; None: it can."""
        return None


class ClassBalancedCE(Method):
    name = "cb-ce"
    summary = "class-balanced CE, weights (1-β)/(1-β^n), β=0.9999 (Cui et al. 2019)"

    def __init__(self, counts, *, device="cpu", beta: float = 0.9999) -> None:
        super().__init__(counts, device=device)
        self.class_weights = class_balanced_weights(counts, beta=beta).to(self.device)

    def loss(self, ctx, inputs, targets):
        return weighted_batch_mean(self.per_example(ctx.model(inputs), targets, ctx.epoch), self.class_weights[targets],
                                   share_of(ctx, len(targets)))


class ClassBalancedFocal(ClassBalancedCE):
    name = "cb-focal"
    summary = "class-balanced softmax focal loss, β=0.9999, γ=1 (Cui et al. 2019)"

    def __init__(self, counts, *, device="cpu", beta: float = 0.9999, gamma: float = 1.0) -> None:
        super().__init__(counts, device=device, beta=beta)
        self.gamma = gamma

    def per_example(self, logits, targets, epoch):
        return L.focal_loss(logits, targets, gamma=self.gamma)


class LDAMDRW(Method):
    name = "ldam-drw"
    summary = "LDAM loss (max margin 0.5, s=30, cosine head) + deferred re-weighting (Cao et al. 2019)"
    normalized_head = True

    def __init__(self, counts, *, device="cpu", max_margin: float = 0.5, scale: float = 30.0, beta: float = 0.9999) -> None:
        super().__init__(counts, device=device)
        self.margins = L.ldam_margins(counts, max_margin=max_margin).to(self.device)
        self.scale = scale
        self.class_weights = class_balanced_weights(counts, beta=beta).to(self.device)
        self.drw_start = 160  # set by the trainer from the schedule (the first lr decay)

    def loss(self, ctx, inputs, targets):
        per = L.ldam_loss(ctx.model(inputs), targets, margins=self.margins, scale=self.scale)
        if ctx.epoch >= self.drw_start:
            return weighted_batch_mean(per, self.class_weights[targets], share_of(ctx, len(targets)))
        return per.mean()


class LogitAdjust(Method):
    name = "logit-adjust"
    summary = "logit-adjusted loss, τ=1 (Menon et al. 2021)"

    def __init__(self, counts, *, device="cpu", tau: float = 1.0) -> None:
        super().__init__(counts, device=device)
        self.log_prior = L.log_priors(counts).to(self.device)
        self.tau = tau

    def per_example(self, logits, targets, epoch):
        return L.logit_adjusted_loss(logits, targets, log_prior=self.log_prior, tau=self.tau)


class MetaMethod(Method):
    """Shared meta step: real forward, virtual step, validation direction, weight update, weighted loss."""

    meta = True
    _share: BatchShare | None = None  # the current step's share of the batch under torchrun (None: one process)
    virtual_reduction = "mean"  # the virtual loss (1/N) Σ w_i ℓ_i; "sum": Σ w_i ℓ_i (see LookAhead)

    def loss(self, ctx, inputs, targets):
        if ctx.epoch < self.meta_start or ctx.val_inputs is None:
            return super().loss(ctx, inputs, targets)
        # Under torchrun the rows are this rank's share: the look-ahead and every batch-level sum span all ranks.
        share = self._share = share_of(ctx, len(targets))
        ranks = {} if share is None else {"batch_size": share.size, "sum_over_ranks": distributed.sum_over_ranks}
        model = ctx.model
        params = params_of(model)
        losses = L.cross_entropy(model(inputs), targets)  # the real forward: BN running stats move once
        base = self.base_weights(losses, targets)
        look = LookAhead(model, params, inputs, targets, L.cross_entropy, lr=ctx.lr, losses=losses,
                         reduction=self.virtual_reduction, **ranks)
        theta_tilde = look.step(base)
        direction = self.direction(ctx, theta_tilde, inputs, targets, base)
        grad_w = look.weight_gradient(direction)
        weights = self.final_weights(grad_w, base, losses, targets)
        self.last_weights = weights.detach()  # this step's per-example weights (this rank's rows under torchrun)
        if share is None:
            total = None
            self.record(weight_mean=float(weights.mean()))
        else:
            total = share.sums(self.last_weights)[0]
            self.record(weight_mean=float(total) / share.size)
        return self.reduce(losses, weights, share, total)

    def base_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def direction(self, ctx, theta_tilde, inputs, targets, base):
        v, val_loss = plain_direction(ctx.model, theta_tilde, ctx.val_inputs, ctx.val_targets)
        self.record(val_loss=val_loss)
        return v

    def final_weights(self, grad_w: Tensor, base: Tensor, losses: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def reduce(self, losses: Tensor, weights: Tensor, share: BatchShare | None, total: Tensor | None) -> Tensor:
        """The real update's loss: Σwℓ/Σw over the whole batch (under torchrun ``share`` is this rank's, ``total`` Σw)."""
        return weighted_batch_mean(losses, weights.detach(), share, total)


class L2RW(MetaMethod):
    name = "l2rw"
    summary = "learning to reweight: ε=0, weights max(-∂L_val/∂ε, 0) normalised (Ren et al. 2018)"

    def base_weights(self, losses, targets):
        return torch.zeros_like(losses)

    def final_weights(self, grad_w, base, losses, targets):
        if self._share is not None:  # torchrun: normalised over the whole batch
            return clipped_normalized(-grad_w, sum_over_ranks=distributed.sum_over_ranks)
        return clipped_normalized(-grad_w)


class TwoComponent(MetaMethod):
    name = "two-component"
    summary = "w_y (Cui et al.) + ε_i from a one-step look-ahead on the validation set (Jamal et al. 2020)"

    EPS_RULES = ("step", "normalized")
    # Jamal et al.'s virtual step is on the summed loss Σ(w_y + ε_i)ℓ_i at the training lr (their equation, as
    # Ren et al.'s, and their released code): N times the mean form's step, so v is taken that far from θ.
    virtual_reduction = "sum"

    def __init__(self, counts, *, device="cpu", beta: float = 0.9999, eps_rule: str = "step", eps_lr: float = 0.01) -> None:
        super().__init__(counts, device=device)
        if eps_rule not in self.EPS_RULES:
            raise UnknownNameError("eps rule", eps_rule, self.EPS_RULES)
        self.class_weights = class_balanced_weights(counts, beta=beta).to(self.device)
        self.eps_rule, self.eps_lr = eps_rule, eps_lr

    def base_weights(self, losses, targets):
        return self.class_weights[targets]

    def final_weights(self, grad_w, base, losses, targets):
        share = self._share  # torchrun: this rank's rows; sums and N are the whole batch's
        if self.eps_rule == "normalized":
            # L2RW's clipped step from ε = 0, scaled to the batch's class-weight mass (both components alike).
            if share is not None:
                return base + clipped_normalized(-grad_w, total=share.sums(base)[0], sum_over_ranks=distributed.sum_over_ranks)
            return base + clipped_normalized(-grad_w, total=base.sum())
        # "step", Jamal et al.'s released code: one plain gradient step ε = −η ∂L_val/∂ε from ε = 0, η = 0.01
        # (∂L_val/∂ε of the summed virtual loss, as grad_w is here).
        eps = -self.eps_lr * grad_w
        if share is None:
            self.record(eps_over_w=float(eps.abs().mean() / base.mean()))
        else:
            eps_sum, base_sum = share.sums(eps.abs(), base)
            self.record(eps_over_w=float(eps_sum / base_sum))
        return base + eps

    def state_dict(self):
        return {"virtual_reduction": self.virtual_reduction}  # the form its meta steps took (see stale_state)

    def stale_state(self, state, *, meta_epochs):
        # A checkpoint that records no form predates the summed step, or this record of it: taken as the mean form.
        if meta_epochs and state.get("virtual_reduction", "mean") != self.virtual_reduction:
            return ("its meta epochs took the virtual step on the mean loss, as lazyapps did before it followed "
                    "Jamal et al.'s summed loss; the run cannot go on with the other")
        return None


class LazyTwoComponent(TwoComponent):
    name = "lazy-two-component"
    summary = "two-component with ε through the lazy teacher's leap over a k-step student (Jamal et al., lazy, Alg. 2)"

    def __init__(self, counts, *, device="cpu", beta: float = 0.9999, inner_steps: int = 5,
                 gammas: Sequence[float] = (0.75, 0.80, 0.85, 0.90, 0.95), inner_lr: float | None = None,
                 eps_rule: str = "step", eps_lr: float = 0.01) -> None:
        super().__init__(counts, device=device, beta=beta, eps_rule=eps_rule, eps_lr=eps_lr)
        self.inner_steps = inner_steps
        # The student's SGD step size; None: the current training lr, the virtual step's.
        self.inner_lr = inner_lr
        self.teacher = LazyTeacher(gammas=tuple(gammas), last=1, criterion="accuracy")

    def direction(self, ctx, theta_tilde, inputs, targets, base):
        # The student continues the virtual step's SGD (its loss Σ w_i ℓ_i, or the mean, at its lr) for k steps
        # from θ̃ over k slices of this batch: one pass over the batch in all, about one extra training step.
        share = self._share
        weights = base.detach()
        whole = chunks(len(targets) if share is None else share.size, self.inner_steps)
        # The slices' sizes divide a mean; under torchrun a slice is spread over the ranks (each holds every
        # world-th row), each rank's loss is its part of the slice's, and the student sums the steps over ranks.
        divisors = iter([virtual_divisor(self.virtual_reduction, s.stop - s.start) for s in whole])
        slices = iter(whole if share is None else share.parts(whole))

        def student_loss(predict):
            part = next(slices)
            return (weights[part] * L.cross_entropy(predict(inputs[part]), targets[part])).sum() / next(divisors)

        student = explore if share is None else explore_across_ranks
        v, leap, val_loss = lazy_direction(ctx.model, theta_tilde, student_loss, ctx.val_inputs, ctx.val_targets,
                                           steps=len(whole),
                                           lr=ctx.lr if self.inner_lr is None else self.inner_lr, teacher=self.teacher,
                                           student=student)
        scores = [s for _, _, s in leap.scores]
        # grid_tie: every γ scored the same, so the first γ won by the teacher's tie rule (a student that barely moved)
        self.record(val_loss=val_loss, gamma=leap.gamma, leap_val_accuracy=leap.score,
                    grid_tie=float(max(scores) == min(scores)) if scores else 0.0)
        return v


def explore_across_ranks(model: nn.Module, params: Params, loss_fn, *, steps: int, lr: float, keep_last: int = 1,
                         buffers: dict[str, Tensor] | None = None) -> list[Params]:
    """:func:`~lazyapps.teacher.explore`'s SGD student when every step's minibatch is split across torchrun's ranks.

    ``loss_fn`` returns this rank's additive part of the step's loss. Each rank takes explore's step on its
    part and the moves are summed over ranks: an SGD step is linear in the gradient, so θ + Σ_r (θ_r − θ) is the
    step on the whole minibatch, the same on every rank.
    """
    current = {k: v.detach() for k, v in params.items()}
    kept: list[Params] = []
    for _ in range(steps):
        moved = explore(model, current, loss_fn, steps=1, lr=lr, buffers=buffers)[-1]
        summed = distributed.sum_over_ranks([moved[k] - t for k, t in current.items()])
        current = {k: t + d for (k, t), d in zip(current.items(), summed)}
        kept.append(current)
    return kept[-keep_last:]


class WeightNet(nn.Module):
    """Meta-Weight-Net's weighting function: MLP 1-100-1 with ReLU, sigmoid output, input the loss (Shu et al. 2019)."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses[:, None])).squeeze(1)


class MetaWeightNet(MetaMethod):
    name = "meta-weight-net"
    summary = "weights from an MLP on the loss, trained through the look-ahead (Shu et al. 2019)"

    def __init__(self, counts, *, device="cpu", meta_lr: float = 1e-5, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        super().__init__(counts, device=device)
        self.weight_net = WeightNet().to(self.device)
        self.optimizer = torch.optim.SGD(self.weight_net.parameters(), lr=meta_lr, momentum=momentum, weight_decay=weight_decay)

    def base_weights(self, losses, targets):
        self._weights_with_graph = self.weight_net(losses.detach())
        return self._weights_with_graph.detach()

    def final_weights(self, grad_w, base, losses, targets):
        # ∂L_val/∂ψ = Σ_i ∂L_val/∂w_i · ∂w_i/∂ψ, then one meta-optimiser step and fresh weights.
        self.optimizer.zero_grad(set_to_none=True)
        self._weights_with_graph.backward(grad_w)
        if self._share is not None:
            distributed.sum_gradients(self.weight_net.parameters())  # torchrun: each rank held part of the sum over i
        self.optimizer.step()
        del self._weights_with_graph
        with torch.no_grad():
            return self.weight_net(losses.detach())

    def reduce(self, losses, weights, share, total):
        # Shu et al.'s (1/N) Σ V(ℓ_i) ℓ_i, unnormalised; under torchrun a mean over this rank's examples, which the
        # trainer's example-weighted mean over ranks makes the whole batch's
        return (losses * weights.detach()).mean()

    def state_dict(self):
        return {"weight_net": self.weight_net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        if not state:  # a checkpoint from before the meta phase (or the CE phase): keep the fresh meta-net
            return
        self.weight_net.load_state_dict(state["weight_net"])
        self.optimizer.load_state_dict(state["optimizer"])


METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Method, ClassBalancedCE, ClassBalancedFocal, LDAMDRW, LogitAdjust, L2RW, MetaWeightNet, TwoComponent, LazyTwoComponent)
}


def method_names() -> list[str]:
    return list(METHODS)


def create_method(name: str, counts: Sequence[int], *, device: torch.device | str = "cpu", **options: Any) -> Method:
    """The method ``name`` for training counts ``counts`` (``UnknownNameError`` lists the valid names)."""
    if name not in METHODS:
        raise UnknownNameError("method", name, METHODS)
    return METHODS[name](counts, device=device, **options)
