"""Baselines without meta-learning: ``scratch`` and ``finetune``.

Both adapt to a test task by plain SGD on its support set (the engine's inner
loop). ``scratch`` starts from the untrained, randomly initialised model and
never meta-trains. ``finetune`` starts from a model pre-trained on all
meta-training tasks jointly (the "pretrained" baseline of Finn et al. 2017,
Sec. 5.2): each meta-iteration is an Adam step on the mean loss of the
meta-batch's support and query examples under the unadapted model.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lazyapps.functional import Params, adapt_tasks, forward, map_tasks

from ..base import Learner, metric_name, register, task_scores
from ..tasks import TaskBatch


class _SGDAdapt(Learner):
    def __init__(self, model: nn.Module, *, inner_lr: float = 0.1, eval_inner_steps: int = 10, **base: Any) -> None:
        super().__init__(model, **base)
        self.inner_lr = inner_lr
        self.eval_inner_steps = eval_inner_steps

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        return {"inner_lr": 0.01} if dataset == "sine" else {}

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        theta = {k: v.detach() for k, v in self.theta.items()}
        fast = adapt_tasks(self.model, theta, self.buffers, self.loss_fn, support,
                           steps=self.eval_inner_steps, lr=self.inner_lr, vectorize=self.vectorize)
        return {k: v.detach() for k, v in fast.items()}


@register("scratch")
class Scratch(_SGDAdapt):
    """Train from the random initialisation on each test task's support set (``eval_inner_steps`` SGD steps)."""

    meta_learns = False

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        return {}


@register("finetune")
class Finetune(_SGDAdapt):
    """Pre-train on all meta-training tasks jointly (Adam, ``meta_lr``), fine-tune on each test task's support set."""

    def __init__(self, model: nn.Module, *, inner_lr: float = 0.1, eval_inner_steps: int = 10, meta_lr: float = 1e-3, **base: Any) -> None:
        super().__init__(model, inner_lr=inner_lr, eval_inner_steps=eval_inner_steps, **base)
        self.meta_lr = meta_lr
        self.meta_optimizer = torch.optim.Adam(self.model.parameters(), lr=meta_lr)

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        x = torch.cat([tasks.support_x, tasks.query_x], 1)
        y = torch.cat([tasks.support_y, tasks.query_y], 1)
        theta, buffers, model = self.theta, self.buffers, self.model

        def task_out(xt: Tensor) -> Tensor:
            return forward(model, theta, buffers, xt)

        outputs = map_tasks(task_out, x, vectorize=self.vectorize)
        loss = self.loss_fn(outputs.flatten(0, 1), y.flatten(0, 1))
        self.meta_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.meta_optimizer.step()
        return {"loss": float(loss), metric_name(self.problem): float(task_scores(self.problem, outputs.detach(), y).mean())}
