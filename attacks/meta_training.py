"""Meta-training of the meta-attacker on gradient sets, one task per whitebox zoo model.

Two meta-updates, both through the engine (:mod:`lazyapps.teacher`):

* ``reptile`` — Du et al. (ICLR 2020, Algorithm 1): per task, a few Adam steps
  (5 at lr 1e-2) on the task's (image, gradient map) pairs with MSE loss, then
  θ ← θ − β Σ_i (θ − φ_i).
* ``lazy-reptile`` — Algorithm 3 of Jamal, Wang, Gong ("A Lazy Approach to
  Long-Horizon Gradient-Based Meta-Learning"): the student explores k steps
  (k = 8 for MNIST, 10 for CIFAR-10) without a graph, the lazy teacher picks
  γ (and the checkpoint mix) on the task's validation pairs and leaps to
  φ_i(θ) = γθ + (1 − γ) φ_k, and θ ← θ − β Σ_i (θ − φ_i(θ)).

Since θ − φ_i(θ) = (1 − γ)(θ − φ_k), the lazy update is a Reptile step whose
per-task length the teacher chooses from validation data; with γ ∈ [0.75,
0.95] it is 5–25 % of the student's displacement, so its default β is larger.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazyapps.functional import Params, forward, params_of
from lazyapps.progress import progress
from lazyapps.teacher import LazyTeacher, explore, reptile_update

METHODS = ("reptile", "lazy-reptile")

#: The student's inner steps by dataset: Du et al.'s 5 for ``reptile``; Algorithm 3's k for ``lazy-reptile``.
INNER_STEPS: dict[str, dict[str, int]] = {
    "reptile": {"mnist": 5, "cifar10": 5},
    "lazy-reptile": {"mnist": 8, "cifar10": 10},
}

Task = tuple[Tensor, Tensor]
"""``(images (N, C, H, W) in [0, 1], normalised gradient maps (N, C, H, W))``."""


@dataclass
class MetaTrainResult:
    """The meta-trained parameters and the mean validation MSE along the way."""

    params: Params
    history: list[tuple[int, float]] = field(default_factory=list)  # (iteration, mean val MSE over tasks)
    gammas: list[float] = field(default_factory=list)  # the teacher's choices (lazy methods)


def default_meta_step(method: str, num_tasks: int) -> float:
    """β: Reptile moves halfway to the mean of the students; the lazy leap is already short, so 4× that."""
    return (0.5 if method == "reptile" else 2.0) / max(num_tasks, 1)


def split_task(task: Task, *, val_fraction: float = 0.1, min_val: int = 1) -> tuple[Task, Task]:
    """``(train pairs, validation pairs)``: the last ``val_fraction`` of the pairs validate."""
    images, maps = task
    n_val = max(min_val, int(round(len(images) * val_fraction)))
    if n_val >= len(images):
        raise ValueError(f"a task needs more than {n_val} pairs to hold out {n_val} for validation, got {len(images)}")
    return (images[:-n_val], maps[:-n_val]), (images[-n_val:], maps[-n_val:])


def mse(model: nn.Module, params: Params, images: Tensor, maps: Tensor, *, batch_size: int = 512) -> float:
    """Mean squared error of the predicted maps of ``params`` on the pairs (no graph)."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pred = forward(model, params, {}, images[start:start + batch_size])
            total += F.mse_loss(pred, maps[start:start + batch_size], reduction="sum").item()
    return total / maps.numel()


def meta_train(
    model: nn.Module,
    tasks: Sequence[Task],
    *,
    method: str = "lazy-reptile",
    iterations: int = 1000,
    inner_steps: int | None = None,
    inner_lr: float = 1e-2,
    meta_step: float | None = None,
    batch_size: int = 32,
    val_fraction: float = 0.1,
    val_batch: int = 64,
    teacher: LazyTeacher | None = None,
    eval_every: int = 50,
    generator: torch.Generator | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> MetaTrainResult:
    """Meta-train ``model`` (a :class:`~attacks.meta_attacker.MetaAttacker`) on ``tasks``.

    Args:
        model: the network; its own parameters are the initial θ and are left unchanged.
        tasks: one ``(images, maps)`` pair of tensors per zoo model, on the model's device.
        method: ``"reptile"`` or ``"lazy-reptile"``.
        iterations: meta-iterations (each visits every task once).
        inner_steps: the student's Adam steps (default 5 for reptile — Du et al. — and 8 for lazy-reptile).
        inner_lr: the student's Adam learning rate (Du et al.: 1e-2).
        meta_step: β of θ ← θ − β Σ_i (θ − φ_i) (default :func:`default_meta_step`).
        batch_size: pairs per inner step (a fresh minibatch every step; a task's whole
            training part when it has no more pairs than that).
        val_fraction: the share of each task's pairs the teacher validates on (and the history reports).
        val_batch: validation pairs per leap (a fresh sample each meta-iteration).
        teacher: the lazy teacher (default: γ ∈ {0.75, …, 0.95} on validation MSE, last checkpoint).
        eval_every: iterations between validation-MSE records in ``history``.
        generator: randomness of the minibatches.
        on_eval: called as ``on_eval(iteration, mean_val_mse)`` at every record.
    """
    if method not in METHODS:
        raise ValueError(f"unknown meta-training method {method!r}; valid: {', '.join(METHODS)}")
    if not tasks:
        raise ValueError("meta-training needs at least one task (gradient set)")
    lazy = method == "lazy-reptile"
    steps = inner_steps if inner_steps is not None else (8 if lazy else 5)
    beta = meta_step if meta_step is not None else default_meta_step(method, len(tasks))
    teacher = teacher or LazyTeacher(criterion="loss")
    splits = [split_task(t, val_fraction=val_fraction) for t in tasks]
    gen = generator or torch.Generator().manual_seed(0)
    theta = {k: v.detach().clone() for k, v in params_of(model).items()}
    result = MetaTrainResult(theta)

    def sample(pairs: Task, size: int) -> Task:
        if size >= len(pairs[0]):  # a task no bigger than a batch is used whole, in order
            return pairs
        idx = torch.randint(len(pairs[0]), (size,), generator=gen).to(pairs[0].device)
        return pairs[0][idx], pairs[1][idx]

    def record(it: int) -> None:
        value = sum(mse(model, theta, *val) for _, val in splits) / len(splits)
        result.history.append((it, value))
        if on_eval:
            on_eval(it, value)

    record(0)
    for it in progress(range(1, iterations + 1), desc=f"meta-training ({method})", total=iterations):
        leaps: list[Params] = []
        for train, val in splits:
            def inner_loss(predict, train=train) -> Tensor:
                x, g = sample(train, batch_size)
                return F.mse_loss(predict(x), g)

            checkpoints = explore(model, theta, inner_loss, steps=steps, lr=inner_lr, optimizer="adam",
                                  keep_last=teacher.last if lazy else 1, buffers={})
            if lazy:
                xv, gv = sample(val, val_batch)
                leap = teacher.leap(theta, checkpoints, lambda p, xv=xv, gv=gv: F.mse_loss(forward(model, p, {}, xv), gv))
                leaps.append({k: v.detach() for k, v in leap.params.items()})
                result.gammas.append(leap.gamma)
            else:
                leaps.append(checkpoints[-1])
        theta = reptile_update(theta, leaps, step_size=beta)
        if it % eval_every == 0 or it == iterations:
            record(it)
    result.params = theta
    return result


__all__ = ["meta_train", "MetaTrainResult", "METHODS", "INNER_STEPS", "split_task", "mse", "default_meta_step"]
