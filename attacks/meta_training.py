"""Meta-training of the meta-attacker on gradient sets, one task per whitebox zoo model.

Four meta-updates, all through the engine (:mod:`lazyapps.teacher`, :mod:`lazyapps.functional`).
Two move θ towards the students (Reptile family):

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

Two step θ with Adam along a meta-gradient of the tasks' validation MSE (MAML family; the issue welcomes
them, Du et al. use Reptile only):

* ``maml`` — Finn et al. (ICML 2017): per task, ``inner_steps`` plain SGD steps on training pairs, kept in
  the graph (second order), the MSE of the adapted network on validation pairs differentiated back to θ
  (:func:`lazyapps.functional.maml_meta_gradient`, the tasks batched with ``vmap``); memory grows with the
  steps.
* ``lazy-maml`` — Algorithm 1 of the lazy paper with the attacker's student: the student explores k Adam
  steps without a graph (as in ``lazy-reptile``), the teacher picks γ̂ on the validation pairs, and the
  meta-gradient is ∇_θ MSE_val(γ̂θ + (1 − γ̂)φ_k) = γ̂∇MSE_val(φ)
  (:func:`lazyapps.teacher.lazy_maml_meta_gradient`): the cost of one validation backward for any k.

The meta-gradient is the mean over tasks; θ takes one Adam step of ``meta_lr`` (Finn et al.'s 1e-3) per
meta-iteration.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazyapps.functional import Params, forward, maml_meta_gradient, params_of
from lazyapps.progress import progress
from lazyapps.teacher import LazyTeacher, explore, lazy_maml_meta_gradient, reptile_update

METHODS = ("reptile", "lazy-reptile", "maml", "lazy-maml")
#: The methods that step θ with Adam along a meta-gradient (the rest move it towards the students).
GRADIENT_METHODS = ("maml", "lazy-maml")
LAZY_METHODS = ("lazy-reptile", "lazy-maml")

#: The student's inner steps by dataset: Du et al.'s 5 for ``reptile`` (and ``maml``); Algorithm 3's k for the lazy ones.
INNER_STEPS: dict[str, dict[str, int]] = {
    "reptile": {"mnist": 5, "cifar10": 5},
    "lazy-reptile": {"mnist": 8, "cifar10": 10},
    "maml": {"mnist": 5, "cifar10": 5},
    "lazy-maml": {"mnist": 8, "cifar10": 10},
}
#: The student's learning rate: Du et al.'s Adam lr 1e-2, except MAML's inner loop, which is plain SGD (it is
#: differentiated through) and needs a larger step: over 60 MNIST meta-iterations lr 0.1 lowered the validation
#: MSE (1.011 -> 0.993) where 1.0 raised it (1.038).
INNER_LR: dict[str, float] = {"reptile": 1e-2, "lazy-reptile": 1e-2, "maml": 0.1, "lazy-maml": 1e-2}

Task = tuple[Tensor, Tensor]
"""``(images (N, C, H, W) in [0, 1], normalised gradient maps (N, C, H, W))``."""


@dataclass
class MetaTrainResult:
    """The meta-trained parameters and the mean validation MSE along the way."""

    params: Params
    history: list[tuple[int, float]] = field(default_factory=list)  # (iteration, mean val MSE over tasks)
    gammas: list[float] = field(default_factory=list)  # the teacher's choices (lazy methods)


def default_meta_step(method: str, num_tasks: int) -> float:
    """β (Reptile family): Reptile moves halfway to the mean of the students; the lazy leap is already short, so 4× that."""
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
    inner_lr: float | None = None,
    meta_step: float | None = None,
    meta_lr: float = 1e-3,
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
        method: ``"reptile"``, ``"lazy-reptile"``, ``"maml"`` or ``"lazy-maml"`` (module docstring).
        iterations: meta-iterations (each visits every task once).
        inner_steps: the student's steps (default :data:`INNER_STEPS`: 5 for reptile and maml — Du et al. —
            8 for the lazy methods, Algorithm 3's k for MNIST).
        inner_lr: the student's learning rate (default :data:`INNER_LR`: Du et al.'s Adam 1e-2; maml's SGD).
        meta_step: β of θ ← θ − β Σ_i (θ − φ_i) (Reptile family; default :func:`default_meta_step`).
        meta_lr: Adam's learning rate for θ (MAML family).
        batch_size: pairs per inner step (a fresh minibatch every step; a task's whole
            training part when it has no more pairs than that).
        val_fraction: the share of each task's pairs held out for validation: the teacher's choice, the MAML
            family's meta-objective, and the history.
        val_batch: validation pairs per meta-iteration and task (a fresh sample each time).
        teacher: the lazy teacher (default: γ ∈ {0.75, …, 0.95} on validation MSE, last checkpoint).
        eval_every: iterations between validation-MSE records in ``history``.
        generator: randomness of the minibatches.
        on_eval: called as ``on_eval(iteration, mean_val_mse)`` at every record.
    """
    if method not in METHODS:
        raise ValueError(f"unknown meta-training method {method!r}; valid: {', '.join(METHODS)}")
    if not tasks:
        raise ValueError("meta-training needs at least one task (gradient set)")
    lazy = method in LAZY_METHODS
    steps = inner_steps if inner_steps is not None else INNER_STEPS[method]["mnist"]
    lr = inner_lr if inner_lr is not None else INNER_LR[method]
    beta = meta_step if meta_step is not None else default_meta_step(method, len(tasks))
    teacher = teacher or LazyTeacher(criterion="loss")
    splits = [split_task(t, val_fraction=val_fraction) for t in tasks]
    gen = generator or torch.Generator().manual_seed(0)
    theta = {k: v.detach().clone() for k, v in params_of(model).items()}
    result = MetaTrainResult(theta)
    meta_optimizer = None
    if method in GRADIENT_METHODS:
        theta = {k: v.requires_grad_() for k, v in theta.items()}
        meta_optimizer = torch.optim.Adam(list(theta.values()), lr=meta_lr)

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

    def val_mse(xv: Tensor, gv: Tensor) -> Callable[[Params], Tensor]:
        return lambda p: F.mse_loss(forward(model, p, {}, xv), gv)

    record(0)
    for it in progress(range(1, iterations + 1), desc=f"meta-training ({method})", total=iterations):
        if method == "maml":
            support = [sample(train, batch_size) for train, _ in splits]
            query = [sample(val, val_batch) for _, val in splits]
            grads = _maml_gradient(model, theta, support, query, steps=steps, lr=lr)
        else:
            leaps: list[Params] = []
            task_grads: list[Params] = []
            for train, val in splits:
                def inner_loss(predict, train=train) -> Tensor:
                    x, g = sample(train, batch_size)
                    return F.mse_loss(predict(x), g)

                checkpoints = explore(model, theta, inner_loss, steps=steps, lr=lr, optimizer="adam",
                                      keep_last=teacher.last if lazy else 1, buffers={})
                if not lazy:
                    leaps.append(checkpoints[-1])
                    continue
                score = val_mse(*sample(val, val_batch))
                leap = teacher.leap(theta, checkpoints, score)
                result.gammas.append(leap.gamma)
                if method == "lazy-maml":
                    task_grads.append(lazy_maml_meta_gradient(theta, leap, score)[1])
                else:
                    leaps.append({k: v.detach() for k, v in leap.params.items()})
            if meta_optimizer is None:
                theta = reptile_update(theta, leaps, step_size=beta)
            else:
                grads = {k: sum(g[k] for g in task_grads) / len(task_grads) for k in theta}
        if meta_optimizer is not None:
            for k, t in theta.items():
                t.grad = grads[k]
            meta_optimizer.step()
        if it % eval_every == 0 or it == iterations:
            record(it)
    result.params = {k: v.detach().clone() if meta_optimizer is not None else v for k, v in theta.items()}
    return result


def _maml_gradient(model: nn.Module, theta: Params, support: list[Task], query: list[Task], *, steps: int, lr: float) -> Params:
    """The mean over tasks of the second-order MAML gradient of the query MSE, the tasks vmapped together.

    Tasks whose samples differ in size (a task smaller than a batch is used whole) cannot be stacked; they run
    one at a time and their gradients are averaged.
    """
    def meta_gradient(tasks_support: list[Task], tasks_query: list[Task]) -> Params:
        stacked = [tuple(torch.stack([t[i] for t in batches]) for i in range(2)) for batches in (tasks_support, tasks_query)]
        return maml_meta_gradient(model, theta, {}, F.mse_loss, stacked[0], stacked[1], steps=steps, lr=lr).grads

    if len({len(s[0]) for s in support}) == 1 and len({len(q[0]) for q in query}) == 1:
        return meta_gradient(support, query)
    per_task = [meta_gradient([s], [q]) for s, q in zip(support, query)]
    return {k: sum(g[k] for g in per_task) / len(per_task) for k in theta}


__all__ = ["meta_train", "MetaTrainResult", "METHODS", "GRADIENT_METHODS", "LAZY_METHODS", "INNER_STEPS", "INNER_LR", "split_task", "mse", "default_meta_step"]
