"""The one functional look-ahead shared by every meta-reweighting method.

L2RW (Ren et al., ICML 2018), Meta-Weight-Net (Shu et al., NeurIPS 2019), the
two-component weighting (Jamal, Brown, Yang, Wang, Gong, CVPR 2020) and its
lazy variant (Algorithm 2 of Jamal, Wang, Gong, "A Lazy Approach to
Long-Horizon Gradient-Based Meta-Learning") all take a *virtual* SGD step with
per-example weights w,

    θ̃(w) = θ − α ∇_θ (1/N) Σ_i w_i ℓ_i(θ)

(Shu et al.'s mean; Ren et al. and Jamal et al. sum, without the 1/N), score
the result on the balanced validation set and move the weights along
−∂L_val/∂w. By the chain rule

    ∂L_val/∂w_i = ⟨∂θ̃/∂w_i, v⟩ = −(α/N) ⟨∇_θ ℓ_i(θ), v⟩,   v = ∂L_val/∂θ̃,

so the pull-back of v to the weights is the derivative of the per-example
losses along v — one graph-free forward pass as a directional difference (or an
exact JVP) — rather than a double backward through the virtual step. :class:`LookAhead` does both halves; the methods only differ in
how they get v (plain validation gradient at θ̃, or through the lazy teacher's
leap, :func:`lazy_direction`) and what they do with ∂L_val/∂w.

Everything runs with :func:`lazyapps.functional.forward`
(``torch.func.functional_call``) on parameter dicts: no module is copied or
rebuilt. Virtual forwards run under :func:`batch_statistics`, so BatchNorm
normalises with the batch's statistics (as the real training forward does)
but never touches its running statistics.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import jvp

from lazyapps.functional import Params, forward
from lazyapps.runtime import image_layout
from lazyapps.teacher import Leap, LazyTeacher, explore, lazy_maml_meta_gradient
from lazyapps.torch_warnings import forward_mode_ad

PerExampleLoss = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits, targets) -> per-example losses`` (length N)."""


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside, BatchNorm layers normalise with batch statistics and leave running statistics alone.

    ``track_running_stats=False`` makes a training-mode BatchNorm pass no
    running buffers to ``F.batch_norm`` (and skip ``num_batches_tracked``), so
    virtual steps cannot change the model's buffers. Restored on exit.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in zip(norms, saved):
            m.track_running_stats = flag


def _no_buffers() -> dict[str, Tensor]:
    return {}


def fast_layout(tensor: Tensor) -> Tensor:
    """``tensor`` in the memory layout the look-ahead's own passes run fastest in (same values, other strides).

    On the CPU that is channels-last for 4-D tensors (images, conv weights): oneDNN's convolutions and
    PyTorch's BatchNorm work natively in NHWC, while NCHW makes every convolution reorder its operands
    (ResNet-32, 100 images, one thread: forward+backward 1.17 s instead of 1.59 s). Used for the passes
    whose results stay inside the meta step — the lazy student, the γ grid, the validation gradient — not
    for the pull-back, whose difference quotient must use the real forward's kernels. The trainer already
    holds its model and batches in this layout (a no-op then); a model given in another layout through the
    Python API still gets the fast passes. Other tensors and devices (no measurement there) are returned as they are.
    """
    if tensor.dim() == 4:
        return tensor.contiguous(memory_format=image_layout(tensor.device))
    return tensor


def _fast_params(params: Mapping[str, Tensor]) -> Params:
    return {k: fast_layout(t.detach()) for k, t in params.items()}


def virtual_divisor(reduction: str, n: int) -> int:
    """What Σ w_i ℓ_i over n examples is divided by in a virtual loss: n for ``"mean"``, 1 for ``"sum"``."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return n if reduction == "mean" else 1


class LookAhead:
    """One virtual SGD step θ̃(w) on a training batch, and the pull-back of a direction to the weights.

    ``params`` are θ by name. ``losses`` may be given: the per-example losses of
    the real training forward at θ with a graph to ``params`` (the virtual step
    then reuses that forward); otherwise they are computed here in batch-statistics
    mode. ``lr`` is α, the learning rate of the virtual step. ``reduction`` is the
    virtual loss's: ``"mean"`` (1/N) Σ w_i ℓ_i (Shu et al.) or ``"sum"`` Σ w_i ℓ_i
    (Ren et al.'s and Jamal et al.'s equations and code): N times the step, and
    N times ∂L_val/∂w, at the same α.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Mapping[str, Tensor],
        inputs: Tensor,
        targets: Tensor,
        loss_fn: PerExampleLoss,
        *,
        lr: float,
        losses: Tensor | None = None,
        batch_size: int | None = None,
        sum_over_ranks: Callable[[list[Tensor]], list[Tensor]] | None = None,
        reduction: str = "mean",
    ) -> None:
        self.model = model
        self.params = dict(params)
        self.theta = {k: v.detach() for k, v in self.params.items()}
        self.inputs, self.targets, self.loss_fn, self.lr = inputs, targets, loss_fn, float(lr)
        self.losses = losses
        # Under torchrun the rows are one rank's share of the batch: N is the whole batch's size and the virtual
        # step's gradient is summed over ranks (None: these rows are the whole batch, one process).
        self.batch_size = len(targets) if batch_size is None else int(batch_size)
        self.sum_over_ranks = sum_over_ranks
        self.divisor = virtual_divisor(reduction, self.batch_size)  # (of the whole batch under torchrun)
        self._at_theta: Tensor | None = None  # the per-example losses at θ, once a pull-back has needed them

    def _per_example(self, params: Mapping[str, Tensor]) -> Tensor:
        with batch_statistics(self.model):
            return self.loss_fn(forward(self.model, params, _no_buffers(), self.inputs), self.targets)

    def step(self, weights: Tensor) -> Params:
        """θ̃(w) = θ − α ∇_θ (1/N) Σ_i w_i ℓ_i(θ) (no 1/N for ``reduction="sum"``) for fixed ``weights`` (detached result)."""
        weights = weights.detach()
        if not bool((weights != 0).any()):
            if self.sum_over_ranks is None:
                return dict(self.theta)  # zero weights (L2RW's ε = 0): the virtual step does not move
            grads = [torch.zeros_like(t) for t in self.theta.values()]  # this rank's part is zero; others' may not be
            return self._descend(self.sum_over_ranks(grads))
        with torch.enable_grad():
            if self.losses is not None and self.losses.requires_grad:
                losses, wrt = self.losses, self.params
            else:
                wrt = {k: v.requires_grad_() for k, v in ((k, v.detach()) for k, v in self.theta.items())}
                losses = self._per_example(wrt)
            objective = (weights * losses).sum() / self.divisor
            grads = torch.autograd.grad(objective, list(wrt.values()), retain_graph=True, allow_unused=True)
        if self.sum_over_ranks is not None:
            grads = self.sum_over_ranks([torch.zeros_like(t) if g is None else g for t, g in zip(self.theta.values(), grads)])
        return self._descend(grads)

    def _descend(self, grads: Sequence[Tensor | None]) -> Params:
        return {k: (t - self.lr * g if g is not None else t) for (k, t), g in zip(self.theta.items(), grads)}

    def weight_gradient(self, direction: Mapping[str, Tensor], *, mode: str = "difference") -> Tensor:
        """∂⟨θ̃(w), v⟩/∂w_i = −(α/N)⟨∇_θ ℓ_i(θ), v⟩ (−α⟨∇_θ ℓ_i(θ), v⟩ for a sum) for every example i, v = ``direction``.

        With ``direction`` = ∂L_val/∂θ̃ this is ∂L_val(θ̃(w))/∂w, the same for every
        w since θ̃ is linear in w. ``mode="jvp"`` is exact (forward-mode AD: about
        three forward passes); ``mode="difference"`` (default) is the directional
        difference (ℓ_i(θ + h·v) − ℓ_i(θ))/h with ℓ_i(θ) from the real forward, so it
        costs one graph-free forward pass. h = √ε_dtype·‖θ‖/‖v‖: exact to ~1e-8 in
        float64; in float32 within a few per cent of the JVP, with the same signs
        in our ResNet-32 measurements (the weights are clipped at 0 and normalised).
        """
        tangent = {k: direction[k].detach().to(t) if k in direction else torch.zeros_like(t) for k, t in self.theta.items()}
        scale = -(self.lr / self.divisor)
        if mode == "jvp":
            with forward_mode_ad():
                _, along = jvp(self._per_example, (self.theta,), (tangent,))
            return scale * along.detach()
        if mode != "difference":
            raise ValueError(f"mode must be 'difference' or 'jvp', got {mode!r}")
        norm_v = torch.sqrt(sum((t.double() ** 2).sum() for t in tangent.values()))
        if float(norm_v) == 0:
            return torch.zeros_like(self.targets, dtype=next(iter(self.theta.values())).dtype)
        norm_theta = torch.sqrt(sum((t.double() ** 2).sum() for t in self.theta.values()))
        dtype = next(iter(self.theta.values())).dtype
        h = float(torch.finfo(dtype).eps ** 0.5 * max(float(norm_theta), 1.0) / float(norm_v))
        with torch.no_grad():
            # θ first: the sum takes θ's memory layout (v may be channels-last, see fast_layout), so the
            # real forward's kernels run and their rounding cancels in the difference.
            moved = self._per_example({k: t + h * tangent[k] for k, t in self.theta.items()})
            if self._at_theta is None:  # ℓ(θ) does not change: one forward serves every direction pulled back
                self._at_theta = self.losses.detach() if self.losses is not None else self._per_example(self.theta)
            here = self._at_theta
        return scale * (moved - here) / h


def validation_loss(model: nn.Module, params: Mapping[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``params`` on a validation batch (batch-statistics BatchNorm)."""
    with batch_statistics(model):
        logits = forward(model, params, _no_buffers(), inputs)
    return torch.nn.functional.cross_entropy(logits, targets)


def validation_accuracy(model: nn.Module, params: Mapping[str, Tensor], inputs: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy of ``params`` on a validation batch (batch-statistics BatchNorm, no graph)."""
    with torch.no_grad(), batch_statistics(model):
        logits = forward(model, params, _no_buffers(), inputs)
    return float((logits.argmax(1) == targets).float().mean())


def plain_direction(model: nn.Module, theta_tilde: Mapping[str, Tensor], val_inputs: Tensor, val_targets: Tensor) -> tuple[Params, float]:
    """v = ∂L_val/∂θ̃ at the virtual step (L2RW, Meta-Weight-Net, two-component). Returns (v, L_val)."""
    with torch.enable_grad():
        leaf = {k: t.requires_grad_() for k, t in _fast_params(theta_tilde).items()}
        loss = validation_loss(model, leaf, fast_layout(val_inputs), val_targets)
        grads = torch.autograd.grad(loss, list(leaf.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(leaf, grads)), float(loss.detach())


def lazy_direction(
    model: nn.Module,
    theta_tilde: Mapping[str, Tensor],
    student_loss: Callable[[Callable[..., Tensor]], Tensor],
    val_inputs: Tensor,
    val_targets: Tensor,
    *,
    steps: int,
    lr: float,
    teacher: LazyTeacher,
    student: Callable[..., list[Params]] = explore,
) -> tuple[Params, Leap, float]:
    """v = ∂L_val(φ)/∂θ̃ through the lazy teacher's leap φ = γ̂θ̃ + (1 − γ̂)φ_k (Algorithm 2).

    The student takes ``steps`` SGD steps from θ̃ on ``student_loss`` with
    :func:`lazyapps.teacher.explore` (no graph); ``teacher`` picks γ̂ on the
    validation batch (accuracy or loss, per its criterion); the meta-gradient
    comes from :func:`lazyapps.teacher.lazy_maml_meta_gradient`, so v = γ̂·∇L_val(φ).
    Returns (v, the leap, L_val(φ)). ``student``: the inner loop, called as :func:`~lazyapps.teacher.explore`
    is (under torchrun, a variant that sums each step's gradient over the ranks holding the step's examples).
    """
    # For b = 1 the leap's meta-gradient is γ̂·∇_φ L_val(φ) at the chosen candidate, so each candidate is
    # scored with a graph and the best one's is kept: the meta-gradient then needs no extra forward pass.
    reuse = teacher.last == 1 and len(teacher.weights) == 1
    best: dict[str, object] = {}
    # Every pass below stays inside the meta step, so it runs in the fast layout (the returned v is in it too).
    theta_tilde, val_inputs = _fast_params(theta_tilde), fast_layout(val_inputs)

    def fast_student_loss(predict: Callable[..., Tensor]) -> Tensor:
        return student_loss(lambda *inputs: predict(*(fast_layout(x) for x in inputs)))
    calls = [0]

    def score(p: Params) -> float:
        index, calls[0] = calls[0], calls[0] + 1
        if not reuse:
            with torch.no_grad():
                if teacher.criterion == "accuracy":
                    return validation_accuracy(model, p, val_inputs, val_targets)
                return float(validation_loss(model, p, val_inputs, val_targets))
        with torch.enable_grad():
            leaf_p = {k: t.detach().requires_grad_() for k, t in p.items()}
            logits = forward(model, leaf_p, _no_buffers(), val_inputs)
            loss = torch.nn.functional.cross_entropy(logits, val_targets)
        value = float((logits.detach().argmax(1) == val_targets).float().mean()) if teacher.criterion == "accuracy" else float(loss.detach())
        signed = -value if teacher.criterion == "accuracy" else value
        if value == value and ("signed" not in best or signed < best["signed"]):  # the teacher's rule: first best wins
            best.update(signed=signed, index=index, loss=loss, leaf=leaf_p)
        return value

    with batch_statistics(model):
        checkpoints = student(model, theta_tilde, fast_student_loss, steps=steps, lr=lr, keep_last=teacher.last, buffers=_no_buffers())
        leaf = {k: t.detach().requires_grad_() for k, t in theta_tilde.items()}
        leap = teacher.leap(leaf, checkpoints, score)
        if reuse and best.get("index") == teacher.gammas.index(leap.gamma):
            grads_phi = torch.autograd.grad(best["loss"], list(best["leaf"].values()), allow_unused=True, materialize_grads=True)
            grads = {k: leap.gamma * g for k, g in zip(best["leaf"], grads_phi)}
            loss = best["loss"].detach()
        else:
            loss, grads = lazy_maml_meta_gradient(leaf, leap, lambda p: validation_loss(model, p, val_inputs, val_targets))
    best.clear()
    return grads, leap, float(loss)


def clipped_normalized(negative_gradient: Tensor, *, total: float | Tensor = 1.0,
                       sum_over_ranks: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """max(−∂L/∂w, 0) rescaled to sum to ``total`` (all zeros when no example helps): L2RW's rule.

    ``sum_over_ranks``: under torchrun, where these are one rank's examples, sums the clipped mass over ranks so
    the weights of the whole batch sum to ``total``.
    """
    clipped = negative_gradient.clamp_min(0)
    mass = clipped.sum()
    if sum_over_ranks is not None:
        mass = sum_over_ranks(mass)
    if float(mass) <= 0:
        return torch.zeros_like(clipped)
    return clipped * (total / mass)


def chunks(n: int, parts: int) -> Sequence[slice]:
    """``parts`` contiguous slices covering range(n) as evenly as possible (the student's minibatches)."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]
