"""Reptile and lazy Reptile.

Reptile: Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms"
(2018). Each task trains θ for a few minibatch steps (Adam, lr 1e-3) on its
data, giving φ_i; the meta-update moves θ towards the tasks' solutions,
θ ← θ + ε·mean_i(φ_i − θ), with ε linearly annealed from 1.0 to 0 (their
5-way Omniglot settings: 5 inner steps on batches of 10, meta-batch 5, 100,000
iterations, 50 Adam steps at test; 20-way: Adam lr 5e-4, 10 inner steps on
batches of 20, 200,000 iterations).

Lazy Reptile: Jamal, Wang, Gong, "A Lazy Approach to Long-Horizon
Gradient-Based Meta-Learning": a long-horizon student (k > 10 steps) on the
support set, the teacher's leap φ_i(θ) chosen by validation (query) accuracy,
and θ ← θ − β Σ_i (θ − φ_i(θ)) via :func:`lazyapps.teacher.reptile_update`
(β = ε / meta-batch, annealed like Reptile's ε).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lazyapps import distributed
from lazyapps.functional import Params, adapt_tasks
from lazyapps.teacher import OPTIMIZERS, LazyTeacher, check_criterion, explore, reptile_update

from ..base import Learner, register
from ..tasks import TaskBatch
from .lazy_maml import LAZY_GAMMAS, check_last, student_checkpoints, teacher_leaps


def minibatches(x: Tensor, y: Tensor, *, batch: int, steps: int,
                span: tuple[int, int] | None = None) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Reptile's inner-loop data: ``(x, y)`` of every task shuffled (dim 1), and the rows of each of ``steps`` minibatches.

    Step j takes ``batch`` consecutive rows of the shuffled order, wrapping round, so the steps cycle through the
    task's examples. The same shuffle feeds the batched (vmap) and the looped path, so both take the same steps.
    ``span``: the tasks' :attr:`~fewshot.tasks.TaskBatch.span`; the shuffles of the whole batch are drawn and
    these tasks' kept, so a rank's share of a meta-batch is shuffled as one process shuffles it.
    """
    n = x.shape[1]
    first, total = span or (0, x.shape[0])
    perm = torch.stack([torch.randperm(n) for _ in range(total)][first:first + x.shape[0]]).to(x.device)
    x = torch.gather(x, 1, perm.view(*perm.shape, *([1] * (x.dim() - 2))).expand_as(x))
    y = torch.gather(y, 1, perm.view(*perm.shape, *([1] * (y.dim() - 2))).expand_as(y))
    b = min(batch, n)
    rows = [torch.tensor([(j * b + i) % n for i in range(b)], device=x.device) for j in range(steps)]
    return x, y, rows


class _ReptileBase(Learner):
    """What Reptile and lazy Reptile share: the annealed meta step and Adam/SGD test-time adaptation."""

    def _init_common(self, *, inner_lr: float, inner_steps: int, eval_inner_steps: int, inner_optimizer: str,
                     meta_step_size: float, meta_step_final: float) -> None:
        if inner_optimizer not in OPTIMIZERS:
            raise ValueError(f"inner_optimizer must be one of {OPTIMIZERS}, got {inner_optimizer!r}")
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.inner_optimizer = inner_optimizer
        self.meta_step_size = meta_step_size
        self.meta_step_final = meta_step_final

    def current_step_size(self) -> float:
        """ε, linearly annealed from ``meta_step_size`` to ``meta_step_final`` over the run (Nichol et al.).

        The run is ``total_iterations`` long (``meta_train`` sets it); left at 0, as by a caller of
        :meth:`train_step` that sets no horizon, ε stays ``meta_step_size`` (annealing over a run of 0
        iterations would make every step after the first a step of ``meta_step_final``, 0 by default).
        """
        if self.total_iterations <= 0:
            return self.meta_step_size
        frac = self.iteration / self.total_iterations
        return self.meta_step_size + (self.meta_step_final - self.meta_step_size) * min(1.0, frac)

    def _update_towards(self, phis: Params, num_tasks: int) -> float:
        eps = self.current_step_size()
        theta = self.theta
        if eps > 0:
            if distributed.is_distributed():  # torchrun: move towards the mean φ of the whole meta-batch's tasks
                phis, num_tasks = distributed.mean_of_stacked(phis), 1
            new = reptile_update(theta, phis, step_size=eps / num_tasks)  # sum form with β = ε/T = mean form
            with torch.no_grad():
                for k, v in theta.items():
                    v.copy_(new[k])
        return eps

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        theta = {k: v.detach() for k, v in self.theta.items()}
        # 0 steps of Adam are 0 steps of SGD (θ itself, per task); explore() takes at least one step.
        if self.inner_optimizer == "sgd" or self.eval_inner_steps == 0:
            fast = adapt_tasks(self.model, theta, self.buffers, self.loss_fn, support,
                               steps=self.eval_inner_steps, lr=self.inner_lr, vectorize=self.vectorize)
            return {k: v.detach() for k, v in fast.items()}
        per_task = []
        for t in range(support[0].shape[0]):
            x, y = support[0][t], support[1][t]
            per_task.append(explore(self.model, theta, lambda predict: self.loss_fn(predict(x), y), steps=self.eval_inner_steps,
                                    lr=self.inner_lr, optimizer="adam", buffers=self.buffers)[-1])
        return {k: torch.stack([p[k] for p in per_task]) for k in theta}


@register("reptile")
class Reptile(_ReptileBase):
    """Reptile (Nichol et al. 2018).

    Each task's inner loop runs ``inner_steps`` steps of ``inner_optimizer``
    (Adam with lr 1e-3 as in the paper, or SGD) on minibatches of
    ``inner_batch`` examples cycling through the task's support ∪ query set
    (Reptile has no query/support distinction at meta-train time);
    ``eval_inner_steps`` full-batch steps on the support set at meta-test.
    Only an SGD inner loop runs batched over tasks (vmap); Adam loops over tasks.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        eval_inner_steps: int = 50,
        inner_batch: int = 10,
        inner_optimizer: str = "adam",
        meta_step_size: float = 1.0,
        meta_step_final: float = 0.0,
        **base: Any,
    ) -> None:
        super().__init__(model, **base)
        self._init_common(inner_lr=inner_lr, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps,
                          inner_optimizer=inner_optimizer, meta_step_size=meta_step_size, meta_step_final=meta_step_final)
        self.inner_batch = inner_batch

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        if dataset == "sine":  # Nichol et al.'s sine setting: SGD-style small lr, 32 inner steps; not in our references
            return {"inner_lr": 0.02, "inner_steps": 32, "eval_inner_steps": 32, "inner_optimizer": "sgd", "meta_batch": 1}
        if dataset.startswith("omniglot"):
            # The commands of Nichol et al.'s code (openai/supervised-reptile README, as archived): meta-training tasks
            # with 10 shots per class (--train-shots), 5-way Adam lr 1e-3 for 100,000 iterations, 20-way 5e-4 for 200,000.
            if ways >= 20:
                return {"inner_lr": 5e-4, "inner_steps": 10, "inner_batch": 20, "meta_batch": 5, "iterations": 200000,
                        "train_shots": max(shots, 10)}
            return {"inner_lr": 1e-3, "inner_steps": 5, "inner_batch": 10, "meta_batch": 5, "iterations": 100000,
                    "train_shots": max(shots, 10)}
        # Their miniImageNet commands: 8 inner steps on batches of 10, meta-training tasks with 15 shots per class
        return {"inner_steps": 8, "inner_batch": 10, "meta_batch": 5, "iterations": 100000, "train_shots": max(shots, 15)}

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        # Reptile has no support/query distinction at meta-train time: the inner loop cycles through both.
        x, y, rows = minibatches(torch.cat([tasks.support_x, tasks.query_x], 1), torch.cat([tasks.support_y, tasks.query_y], 1),
                                 batch=self.inner_batch, steps=self.inner_steps, span=tasks.span)
        # The inner loop is the lazy learners' student: the same minibatch steps, batched over tasks where it can be.
        phis = student_checkpoints(self, (x, y), steps=self.inner_steps, lr=self.inner_lr, keep_last=1,
                                   optimizer=self.inner_optimizer, rows=rows)[0]
        theta = {k: v.detach() for k, v in self.theta.items()}
        with torch.no_grad():
            dist = sum(((phis[k] - theta[k]) ** 2).flatten(1).sum(1) for k in theta).sqrt().mean()
        eps = self._update_towards(phis, x.shape[0])
        return {"distance": float(dist), "step_size": eps}


@register("lazy-reptile")
class LazyReptile(_ReptileBase):
    """Lazy Reptile (Jamal et al.): k-step student on the support set, the teacher's leap by
    validation accuracy, θ ← θ − β Σ_i (θ − φ_i(θ)) with β = ε/T, ε annealed 1 → 0 as in Reptile.

    ``inner_batch``: the student's steps take minibatches of this many support examples, cycling through
    the support set as Reptile's inner loop does (None: every step on the whole support set). Nichol et
    al. found that Reptile's inner loop needs different minibatches of a task; on Omniglot 5-way 1-shot a
    full-batch student on the 5 support images left θ no better than a random init after 750 iterations.
    The paper defaults therefore meta-train on 10-shot tasks (``train_shots``). The query set stays the
    teacher's validation set.
    ``inner_optimizer`` defaults to SGD (runs batched over tasks); ``gammas``,
    ``last``, ``weight_step`` as in :class:`~fewshot.learners.lazy_maml.LazyMAML`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.1,
        inner_steps: int = 15,
        eval_inner_steps: int | None = None,
        inner_batch: int | None = None,
        inner_optimizer: str = "sgd",
        meta_step_size: float = 1.0,
        meta_step_final: float = 0.0,
        gammas: tuple[float, ...] = LAZY_GAMMAS,
        last: int = 1,
        weight_step: float = 0.1,
        criterion: str = "accuracy",
        **base: Any,
    ) -> None:
        super().__init__(model, **base)
        check_last(inner_steps, last)
        self._init_common(inner_lr=inner_lr, inner_steps=inner_steps,
                          eval_inner_steps=inner_steps if eval_inner_steps is None else eval_inner_steps,
                          inner_optimizer=inner_optimizer, meta_step_size=meta_step_size, meta_step_final=meta_step_final)
        if inner_batch is not None and inner_batch < 1:
            raise ValueError(f"inner_batch must be positive, got {inner_batch}")
        self.inner_batch = inner_batch
        self.gammas = tuple(gammas)
        self.last = last
        self.weight_step = weight_step
        self.criterion = check_criterion(criterion)  # (also on regression, where the teacher scores the loss)
        self.teacher = LazyTeacher(gammas=self.gammas, last=last, weight_grid=weight_step,
                                   criterion=criterion if self.problem == "classification" else "loss")
        self.last_gammas: list[float] = []

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        if dataset == "sine":
            return {"inner_lr": 0.01, "inner_steps": 15, "meta_batch": 25}
        if dataset.startswith("omniglot"):  # Reptile's data: its minibatches of its meta-training tasks
            reptile = Reptile.paper_defaults(dataset=dataset, ways=ways, shots=shots)
            return {"inner_lr": 0.1, "inner_steps": 15, "meta_batch": 5,
                    **{k: reptile[k] for k in ("inner_batch", "train_shots")}}
        return {"inner_lr": 0.01, "inner_steps": 15, "meta_batch": 5}

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        support, rows = tasks.support, None
        if self.inner_batch is not None:
            *support, rows = minibatches(*support, batch=self.inner_batch, steps=self.inner_steps, span=tasks.span)
        checkpoints = student_checkpoints(self, tuple(support), steps=self.inner_steps, lr=self.inner_lr,
                                          keep_last=self.last, optimizer=self.inner_optimizer, rows=rows)
        theta = {k: v.detach() for k, v in self.theta.items()}
        leaps = teacher_leaps(self, self.teacher, theta, checkpoints, tasks.query)
        phis = {k: torch.stack([leap.params[k].detach() for leap in leaps]) for k in theta}
        self.last_gammas = [leap.gamma for leap in leaps]
        eps = self._update_towards(phis, tasks.num_tasks)
        score = sum(leap.score for leap in leaps) / len(leaps)
        key = "accuracy" if self.teacher.criterion == "accuracy" else "loss"
        return {key: score, "gamma": sum(self.last_gammas) / len(self.last_gammas), "step_size": eps}
