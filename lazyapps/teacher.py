"""The lazy teacher: a cheap student explores, a teacher leaps once.

Jamal, Wang, Gong, "A Lazy Approach to Long-Horizon Gradient-Based
Meta-Learning". For each task a student takes ``k`` inner steps from the
meta-model θ without keeping an autograd graph (:func:`explore`); the teacher
then takes a single leap (:class:`LazyTeacher`)::

    φ(θ) = γ·θ + (1 − γ)·Σ_j α_j φ_{k−b+1+j},   α on the simplex, b = ``last``

with γ and α chosen by grid search on the task's validation loss or accuracy.
The student's checkpoints are constants, so meta-gradients flow through the γθ
term only and memory does not grow with ``k``. Two meta-updates use the leap:
MAML-style (:func:`lazy_maml_meta_gradient`: backpropagate L_val(φ(θ)) to θ) and
Reptile-style (:func:`reptile_update`: θ ← θ − β Σ_i (θ − φ_i)).
"""
from __future__ import annotations

import itertools
import math
import numbers
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import DivergedError
from .functional import Params, buffers_of, forward

Predict = Callable[..., Tensor]
"""``predict(*inputs)`` runs the model with the student's current params."""

OPTIMIZERS = ("sgd", "adam")
CRITERIA = ("loss", "accuracy")


def check_criterion(criterion: str) -> str:
    """``criterion`` if it names a way to score the teacher's candidates, else :class:`ValueError` listing them."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    return criterion


def explore(
    model: nn.Module,
    params: Mapping[str, Tensor],
    loss_fn: Callable[[Predict], Tensor],
    *,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    keep_last: int = 1,
    buffers: Mapping[str, Tensor] | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> list[Params]:
    """The student: ``steps`` inner updates from ``params`` keeping no autograd graph.

    ``loss_fn(predict)`` returns the scalar training loss, where ``predict(*inputs)``
    runs ``model`` with the current params and ``buffers`` (default: the model's own);
    callers close over their data and may draw a fresh minibatch on each call.
    ``optimizer`` is plain SGD or Adam (``torch.optim.Adam``'s update, state fresh
    per call). Returns the last ``keep_last`` checkpoints, oldest first; the last
    is φ_k. They are detached tensors; ``params`` is never mutated, but ``buffers``
    are updated in place by modules tracking running statistics (BatchNorm in train
    mode), as in eager PyTorch. Parameters the loss does not depend on are left
    unchanged, as ``torch.optim`` does.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 1 <= keep_last <= steps:
        raise ValueError(f"keep_last must be in 1..steps={steps}, got {keep_last}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    buffers = dict(buffers_of(model) if buffers is None else buffers)
    current = {k: v.detach() for k, v in params.items()}
    exp_avg = {k: torch.zeros_like(v) for k, v in current.items()}
    exp_avg_sq = {k: torch.zeros_like(v) for k, v in current.items()}
    counts = dict.fromkeys(current, 0)  # Adam's per-parameter step count
    kept: deque[Params] = deque(maxlen=keep_last)
    b1, b2 = betas
    for _ in range(steps):
        with torch.enable_grad():
            # A fresh leaf per step: the graph of one step is freed before the next.
            leaf = {k: v.detach().requires_grad_() for k, v in current.items()}
            loss = loss_fn(lambda *inputs: forward(model, leaf, buffers, *inputs))
            grads = torch.autograd.grad(loss, list(leaf.values()), allow_unused=True)
        with torch.no_grad():
            nxt = {}
            for (k, p), g in zip(current.items(), grads):
                if g is None:
                    nxt[k] = p
                elif optimizer == "sgd":
                    nxt[k] = p - lr * g
                else:
                    counts[k] += 1
                    exp_avg[k] = exp_avg[k] * b1 + (1 - b1) * g
                    exp_avg_sq[k] = exp_avg_sq[k] * b2 + (1 - b2) * g * g
                    denom = (exp_avg_sq[k].sqrt() / math.sqrt(1 - b2 ** counts[k])) + eps
                    nxt[k] = p - (lr / (1 - b1 ** counts[k])) * exp_avg[k] / denom
        current = nxt
        kept.append(current)
    return list(kept)


@dataclass(frozen=True)
class Leap:
    """The teacher's leap for one task.

    ``params`` is φ(θ) = γ̂·θ + (1 − γ̂)·Σ_j α̂_j φ_j, differentiable w.r.t. θ through
    the γ̂θ term only. ``score`` is its validation score; ``scores`` lists every
    grid evaluation as ``(gamma, weights, score)`` in visiting order.
    """

    params: Params
    gamma: float
    weights: tuple[float, ...]
    score: float
    scores: tuple[tuple[float, tuple[float, ...], float], ...] = ()


def simplex_grid(size: int, step: float) -> tuple[tuple[float, ...], ...]:
    """All weight tuples of length ``size`` on the simplex with spacing ``step`` (summing to 1).

    Lexicographic in the integer numerators, so the first entry puts all weight
    on the newest checkpoint, e.g. ``(0.0, 0.0, 1.0)``.
    """
    n = round(1 / step) if step > 0 else 0
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise ValueError(f"weight_grid step must be 1/n for a positive integer n, got {step}")
    return tuple(tuple(i / n for i in c) for c in itertools.product(range(n + 1), repeat=size) if sum(c) == n)


class LazyTeacher:
    """The teacher of the lazy approach: one leap from θ towards the student's last checkpoints.

    Grid-searches γ ∈ ``gammas`` and convex weights α over the last ``last``
    checkpoints (b = 1 or 3 in the paper; any b >= 1 works) on ``score_fn``, which
    is a validation loss (``criterion="loss"``, minimised) or accuracy
    (``"accuracy"``, maximised). ``weight_grid`` is the simplex step (0.1 gives
    the 66 weight tuples for b = 3) or an explicit sequence of weight tuples.
    Candidates are visited weights-major: for each α in grid order, each γ in
    ``gammas`` order; ties go to the first visited. NaN scores never win.
    """

    def __init__(
        self,
        *,
        gammas: Sequence[float] = (0.75, 0.80, 0.85, 0.90, 0.95),
        last: int = 1,
        weight_grid: float | Sequence[Sequence[float]] = 0.1,
        criterion: str = "loss",
    ) -> None:
        if isinstance(gammas, (str, numbers.Real)) or not isinstance(gammas, Iterable):
            raise ValueError(f"gammas must be a non-empty sequence of values in [0, 1] (e.g. (0.9,) for one), got {gammas!r}")
        # One pass into plain floats first: a generator is read once, an array or tensor element by element.
        gammas = tuple(float(g) if isinstance(g, numbers.Real) or (isinstance(g, Tensor) and g.numel() == 1) else g
                       for g in gammas)
        if not gammas or not all(isinstance(g, float) and 0.0 <= g <= 1.0 for g in gammas):
            raise ValueError(f"gammas must be a non-empty sequence of values in [0, 1] (e.g. (0.9,) for one), got {gammas}")
        if isinstance(last, bool) or not isinstance(last, numbers.Integral) or last < 1:
            raise ValueError(f"last must be a whole number >= 1, got {last!r}")
        check_criterion(criterion)
        if isinstance(weight_grid, Tensor) and weight_grid.numel() == 1:
            weight_grid = float(weight_grid)
        if isinstance(weight_grid, numbers.Real):
            weights = simplex_grid(last, float(weight_grid))
        else:
            weights = tuple(tuple(float(a) for a in w) for w in weight_grid)
            for w in weights:
                if len(w) != last or min(w) < 0 or abs(sum(w) - 1) > 1e-6:
                    raise ValueError(f"each weight tuple needs {last} non-negative entries summing to 1, got {w}")
            if not weights:
                raise ValueError("weight_grid must contain at least one weight tuple")
        self.gammas = gammas
        self.last = int(last)
        self.weights = weights
        self.criterion = criterion

    def __repr__(self) -> str:
        return (f"LazyTeacher(gammas={self.gammas}, last={self.last}, "
                f"weights={len(self.weights)} tuples, criterion={self.criterion!r})")

    def leap(
        self,
        theta: Mapping[str, Tensor],
        checkpoints: Sequence[Mapping[str, Tensor]],
        score_fn: Callable[[Params], float | Tensor],
    ) -> Leap:
        """Choose γ̂, α̂ by grid search on ``score_fn`` and return the leap from ``theta``.

        ``checkpoints`` are the student's checkpoints, oldest first (as returned by
        :func:`explore`); the last ``self.last`` of them are mixed. The search runs
        under ``torch.no_grad``; the returned params are then built once with
        grad to ``theta``: γ̂·θ + (1 − γ̂)·Σ_j α̂_j φ_j.detach(). ``score_fn`` may
        return a float or a one-element tensor; tensor scores are read back
        together after the search, so on CUDA the grid costs one sync. NaN scores never win; when every
        candidate scores NaN the student diverged: :class:`~lazyapps.errors.DivergedError`.
        """
        if len(checkpoints) < self.last:
            raise ValueError(f"need at least last={self.last} checkpoints, got {len(checkpoints)}")
        phis = list(checkpoints)[-self.last:]
        for phi in phis:
            if set(phi) != set(theta):
                raise ValueError(f"checkpoint keys differ from theta's: {sorted(set(phi) ^ set(theta))}")
            for k, t in theta.items():  # (a stacked per-task checkpoint would broadcast silently)
                if phi[k].shape != t.shape:
                    raise ValueError(f"checkpoint {k!r} has shape {tuple(phi[k].shape)}, theta's is {tuple(t.shape)}")
        sign = 1.0 if self.criterion == "loss" else -1.0
        candidates, raw = [], []
        with torch.no_grad():
            for w in self.weights:
                mix = _mix(phis, w)
                for g in self.gammas:
                    candidates.append((g, w))
                    raw.append(score_fn({k: g * theta[k].detach() + (1 - g) * mix[k] for k in theta}))
        scores = [(g, w, s) for (g, w), s in zip(candidates, _floats(raw))]
        best: tuple[float, float, tuple[float, ...]] | None = None  # (signed score, gamma, weights)
        for g, w, s in scores:
            if not math.isnan(s) and (best is None or sign * s < best[0]):
                best = (sign * s, g, w)
        if best is None:
            raise DivergedError("every leap candidate of the lazy teacher scored NaN: the student diverged; lower its "
                                "learning rate (--inner-lr)")
        _, gamma, weights = best
        mix = _mix([{k: v.detach() for k, v in phi.items()} for phi in phis], weights)
        params = {k: gamma * theta[k] + (1 - gamma) * mix[k] for k in theta}
        return Leap(params, gamma, weights, sign * best[0], tuple(scores))


def _floats(scores: Sequence[float | Tensor]) -> list[float]:
    """The scores as Python floats, tensor scores read back in one transfer (one CUDA sync, not one per candidate)."""
    tensors = [s.detach().reshape(()).double() for s in scores if isinstance(s, Tensor)]
    read = iter(torch.stack(tensors).tolist() if tensors else ())
    return [next(read) if isinstance(s, Tensor) else float(s) for s in scores]


def _mix(phis: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> Params:
    # Zero weights are skipped so a diverged (NaN) checkpoint with weight 0 cannot poison the mix.
    return {k: sum(a * phi[k] for a, phi in zip(weights, phis) if a) for k in phis[0]}


def reptile_update(
    theta: Mapping[str, Tensor],
    task_params: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
    *,
    step_size: float,
) -> Params:
    """The Reptile-style meta-update with the teacher's leaps: θ ← θ − β Σ_i (θ − φ_i).

    ``task_params`` is a list of per-task params or one dict stacked on a leading
    task dim. As in the lazy paper's Reptile variant, β = ``step_size`` multiplies
    the *sum* over tasks (not the mean): scale it by 1/num_tasks yourself for the
    averaged form. Returns new detached tensors; the inputs are not modified.
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if isinstance(task_params, Mapping):
        stacked = dict(task_params)
    else:
        if len(task_params) == 0:
            raise ValueError("task_params is empty; need at least one task's params")
        if any(set(p) != set(theta) for p in task_params):
            raise ValueError("every task's params must have exactly the keys of theta")
        stacked = {k: torch.stack([p[k].detach() for p in task_params]) for k in theta}
    if set(stacked) != set(theta):
        raise ValueError(f"task params keys differ from theta's: {sorted(set(stacked) ^ set(theta))}")
    with torch.no_grad():
        out = {}
        for k, t in theta.items():
            phi = stacked[k]
            if phi.dim() != t.dim() + 1 or phi.shape[1:] != t.shape or phi.shape[0] == 0:
                raise ValueError(f"task params {k!r} have shape {tuple(phi.shape)}; expected (tasks, *{tuple(t.shape)})")
            out[k] = t.detach() - step_size * (t.detach().unsqueeze(0) - phi).sum(0)
    return out


def lazy_maml_meta_gradient(
    theta: Mapping[str, Tensor],
    leap: Leap,
    loss_fn: Callable[[Params], Tensor],
) -> tuple[Tensor, Params]:
    """The MAML-style lazy meta-gradient: backpropagate ``loss_fn(leap.params)`` to ``theta``.

    ``theta`` must be the tensors (requiring grad) that ``leap`` was built from;
    ``loss_fn`` is the task's validation loss. Only the γ̂θ term carries
    gradient, so for ``last=1`` this equals γ̂·∇_φ L_val(φ) (the paper's
    first-order-cost meta-gradient). Returns the detached loss and grads by name;
    sum or average them over a batch of tasks before the meta-optimiser step.
    """
    names = [k for k, v in theta.items() if v.requires_grad]
    if not names:
        raise ValueError("theta has no tensor requiring grad; build the leap from params with requires_grad=True")
    with torch.enable_grad():
        loss = loss_fn(leap.params)
        if not loss.requires_grad:
            raise ValueError("the validation loss does not depend on theta; was the leap built under torch.no_grad?")
        gs = torch.autograd.grad(loss, [theta[k] for k in names], allow_unused=True, materialize_grads=True)
    return loss.detach(), dict(zip(names, gs))
