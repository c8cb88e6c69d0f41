"""MAML and first-order MAML.

Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML 2017. Each task adapts θ by a few SGD steps on its support
set; the meta-objective is the query loss of the adapted weights, minimised
with Adam over θ. ``maml`` differentiates through the inner steps (second
order); ``fomaml`` treats the inner gradients as constants (first order). The
inner loop and meta-gradient are :func:`lazyapps.functional.maml_meta_gradient`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lazyapps.functional import Params, adapt_tasks, maml_meta_gradient

from ..base import Learner, metric_name, register, task_scores
from ..tasks import TaskBatch


def finn_defaults(*, dataset: str, ways: int, shots: int) -> dict[str, Any]:
    """Finn et al. (2017) settings: Omniglot 5-way lr 0.4, 1 step (3 at test), meta-batch 32;
    20-way lr 0.1, 5 steps, meta-batch 16; sine lr 0.01, 1 step (10 at test), meta-batch 25;
    MiniImageNet-style (CIFAR-FS, mini/tiered) lr 0.01, 5 steps (10 at test), meta-batch 4 (2 for 5-shot)."""
    if dataset == "sine":
        return {"inner_lr": 0.01, "inner_steps": 1, "eval_inner_steps": 10, "meta_lr": 1e-3, "meta_batch": 25, "iterations": 70000}
    if dataset.startswith("omniglot"):
        if ways >= 20:
            return {"inner_lr": 0.1, "inner_steps": 5, "eval_inner_steps": 5, "meta_lr": 1e-3, "meta_batch": 16, "iterations": 60000}
        return {"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3, "meta_lr": 1e-3, "meta_batch": 32, "iterations": 60000}
    return {"inner_lr": 0.01, "inner_steps": 5, "eval_inner_steps": 10, "meta_lr": 1e-3, "meta_batch": 4 if shots == 1 else 2, "iterations": 60000}


@register("maml")
class MAML(Learner):
    """Second-order MAML (Finn et al. 2017).

    ``inner_lr``/``inner_steps``: the SGD adaptation during meta-training;
    ``eval_inner_steps``: steps at meta-test (default: ``inner_steps``);
    ``meta_lr``: Adam's learning rate for θ. Defaults are Finn et al.'s 5-way
    Omniglot settings; :meth:`paper_defaults` gives the others.
    """

    first_order = False

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        meta_lr: float = 1e-3,
        **base: Any,
    ) -> None:
        super().__init__(model, **base)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.meta_lr = meta_lr
        self.meta_optimizer = torch.optim.Adam(self.model.parameters(), lr=meta_lr)

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        return finn_defaults(dataset=dataset, ways=ways, shots=shots)

    def meta_gradient(self, tasks: TaskBatch):
        """The meta-gradient of the mean query loss over ``tasks`` (does not step)."""
        return maml_meta_gradient(
            self.model, {k: v.detach() for k, v in self.theta.items()}, self.buffers, self.loss_fn,
            tasks.support, tasks.query, steps=self.inner_steps, lr=self.inner_lr,
            first_order=self.first_order, vectorize=self.vectorize,
        )

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        mg = self.meta_gradient(tasks)
        self.apply_meta_gradient(mg.grads)
        score = task_scores(self.problem, mg.outputs, tasks.query_y).mean()
        return {"loss": float(mg.loss), metric_name(self.problem): float(score)}

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        theta = {k: v.detach() for k, v in self.theta.items()}
        fast = adapt_tasks(self.model, theta, self.buffers, self.loss_fn, support,
                           steps=self.eval_inner_steps, lr=self.inner_lr, vectorize=self.vectorize)
        return {k: v.detach() for k, v in fast.items()}


@register("fomaml")
class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, Sec. 5.2): the inner gradients are treated as constants."""

    first_order = True
