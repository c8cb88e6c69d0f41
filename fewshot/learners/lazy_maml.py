"""Lazy MAML: Algorithm 1 of Jamal, Wang, Gong, "A Lazy Approach to Long-Horizon
Gradient-Based Meta-Learning".

For every task a student takes ``k`` (> 10) SGD steps from θ on the support set
without keeping a graph; the teacher leaps once,
φ(θ) = γ̂·θ + (1 − γ̂)·Σ_j α̂_j φ_{k−b+1+j}, with γ̂ (and α̂ for b = ``last`` = 3)
chosen by grid search on the task's validation (query) accuracy; the
meta-gradient is ∇_θ L_val(φ(θ)), which flows through γ̂θ only, so memory does
not grow with ``k``. At meta-test a task adapts by the student's plain SGD steps.

The student runs batched over tasks with ``vmap`` (``vectorize=True``: the
engine's :func:`~lazyapps.functional.sgd_adapt` on detached weights) or per
task with :func:`lazyapps.teacher.explore`; both take the same SGD steps.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lazyapps.functional import Params, adapt_tasks, forward, map_tasks, sgd_adapt
from lazyapps.teacher import Leap, LazyTeacher, check_criterion, explore

from ..base import Learner, metric_name, register, task_scores
from ..tasks import TaskBatch

LAZY_GAMMAS = (0.75, 0.80, 0.85, 0.90, 0.95)


def check_last(inner_steps: int, last: int) -> None:
    """The teacher mixes the student's last ``last`` checkpoints: a student of fewer steps has not made them."""
    if inner_steps < last:
        raise ValueError(f"inner_steps ({inner_steps}) must be >= last ({last})")


def student_checkpoints(learner: Learner, support: tuple[Tensor, Tensor], *, steps: int, lr: float, keep_last: int,
                        optimizer: str = "sgd", rows: list[Tensor] | None = None) -> list[Params]:
    """The student's last ``keep_last`` checkpoints (oldest first) per task, each stacked over tasks, detached.

    ``rows``: step j trains on rows ``rows[j]`` of every task's support (minibatches, as Reptile's inner loop);
    None: every step on the whole support set. Batched (``learner.vectorize`` and SGD): the engine's
    graph-free SGD inner loop under vmap; otherwise :func:`lazyapps.teacher.explore` task by task
    (the only path for an Adam student, whose update the vmappable loop lacks).
    """
    model, buffers, loss_fn = learner.model, learner.buffers, learner.loss_fn
    theta = {k: v.detach() for k, v in learner.theta.items()}
    if learner.vectorize and optimizer == "sgd":
        def run(x: Tensor, y: Tensor) -> list[Params]:
            p, kept = theta, []
            for j in range(steps):
                batch = (x, y) if rows is None else (x[rows[j]], y[rows[j]])
                p = sgd_adapt(model, p, buffers, loss_fn, batch, steps=1, lr=lr)
                if j >= steps - keep_last:
                    kept.append(p)
            return kept

        with torch.no_grad():
            kept = map_tasks(run, *support, vectorize=True)
        return [{k: v.detach() for k, v in p.items()} for p in kept]
    per_task = []
    for t in range(support[0].shape[0]):
        x, y = support[0][t], support[1][t]
        batches = iter(rows) if rows is not None else None

        def loss(predict, x=x, y=y, batches=batches):
            if batches is None:
                return loss_fn(predict(x), y)
            r = next(batches)
            return loss_fn(predict(x[r]), y[r])

        per_task.append(explore(model, theta, loss, steps=steps, lr=lr, optimizer=optimizer, keep_last=keep_last, buffers=buffers))
    return [{k: torch.stack([task[j][k] for task in per_task]) for k in theta} for j in range(keep_last)]


def teacher_leaps(learner: Learner, teacher: LazyTeacher, theta: Params, checkpoints: list[Params], query: tuple[Tensor, Tensor]) -> list[Leap]:
    """The teacher's leap for every task, γ̂ (and α̂) chosen on the task's query (validation) set."""
    model, buffers = learner.model, learner.buffers
    leaps = []
    for t in range(query[0].shape[0]):
        qx, qy = query[0][t], query[1][t]

        def score(p: Params) -> Tensor:  # a tensor: the teacher reads a task's scores back at once
            out = forward(model, p, buffers, qx)
            if teacher.criterion == "accuracy":
                return task_scores(learner.problem, out.unsqueeze(0), qy.unsqueeze(0))[0]
            return learner.loss_fn(out, qy)

        leaps.append(teacher.leap(theta, [{k: v[t] for k, v in c.items()} for c in checkpoints], score))
    return leaps


@register("lazy-maml")
class LazyMAML(Learner):
    """Lazy MAML (Jamal et al., Algorithm 1).

    ``inner_steps`` = k student SGD steps with ``inner_lr``; ``eval_inner_steps``
    at meta-test (default k); ``gammas`` the teacher's γ grid (0.75…0.95 as in
    the paper); ``last`` = b ∈ {1, 3} checkpoints mixed with weights on a
    simplex grid of spacing ``weight_step``; ``criterion`` how the teacher
    scores candidates on the validation set ("accuracy" as in the paper;
    regression always uses the loss); ``meta_lr`` Adam's rate for θ.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.1,
        inner_steps: int = 15,
        eval_inner_steps: int | None = None,
        meta_lr: float = 1e-3,
        gammas: tuple[float, ...] = LAZY_GAMMAS,
        last: int = 1,
        weight_step: float = 0.1,
        criterion: str = "accuracy",
        **base: Any,
    ) -> None:
        super().__init__(model, **base)
        check_last(inner_steps, last)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.meta_lr = meta_lr
        self.gammas = tuple(gammas)
        self.last = last
        self.weight_step = weight_step
        self.criterion = check_criterion(criterion)  # (also on regression, where the teacher scores the loss)
        self.teacher = LazyTeacher(gammas=self.gammas, last=last, weight_grid=weight_step,
                                   criterion=criterion if self.problem == "classification" else "loss")
        self.meta_optimizer = torch.optim.Adam(self.model.parameters(), lr=meta_lr)
        self.last_gammas: list[float] = []  # γ̂ of the latest meta-batch (for logs)

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        # The lazy paper uses MAML's meta-batch sizes and Adam 1e-3 with a long inner horizon (k > 10).
        if dataset == "sine":
            return {"inner_lr": 0.01, "inner_steps": 15, "meta_batch": 25}
        if dataset.startswith("omniglot"):
            return {"inner_lr": 0.1, "inner_steps": 15, "meta_batch": 16 if ways >= 20 else 32}
        return {"inner_lr": 0.01, "inner_steps": 15, "meta_batch": 4 if shots == 1 else 2}

    def meta_gradient(self, tasks: TaskBatch) -> tuple[Tensor, Params, Tensor, list[Leap]]:
        """``(mean query loss, grads by name, query outputs (T, Q, ...), leaps)`` of one meta-batch (does not step)."""
        checkpoints = student_checkpoints(self, tasks.support, steps=self.inner_steps, lr=self.inner_lr, keep_last=self.last)
        with torch.enable_grad():
            theta = {k: v.detach().requires_grad_() for k, v in self.theta.items()}
            leaps = teacher_leaps(self, self.teacher, theta, checkpoints, tasks.query)
            # φ_t(θ) = γ̂_t θ + const_t, stacked so the query losses run batched over tasks.
            phis = {k: torch.stack([leap.params[k] for leap in leaps]) for k in theta}
            model, buffers, loss_fn = self.model, self.buffers, self.loss_fn

            def query_loss(p: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
                out = forward(model, p, buffers, x)
                return loss_fn(out, y), out

            losses, outputs = map_tasks(query_loss, phis, *tasks.query, vectorize=self.vectorize)
            loss = losses.mean()
            grads = torch.autograd.grad(loss, list(theta.values()), allow_unused=True, materialize_grads=True)
        return loss.detach(), dict(zip(theta, grads)), outputs.detach(), leaps

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        loss, grads, outputs, leaps = self.meta_gradient(tasks)
        self.apply_meta_gradient(grads)
        self.last_gammas = [leap.gamma for leap in leaps]
        score = task_scores(self.problem, outputs, tasks.query_y).mean()
        return {"loss": float(loss), metric_name(self.problem): float(score),
                "gamma": sum(self.last_gammas) / len(self.last_gammas)}

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        theta = {k: v.detach() for k, v in self.theta.items()}
        fast = adapt_tasks(self.model, theta, self.buffers, self.loss_fn, support,
                           steps=self.eval_inner_steps, lr=self.inner_lr, vectorize=self.vectorize)
        return {k: v.detach() for k, v in fast.items()}
