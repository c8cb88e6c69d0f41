"""Meta-SGD: meta-learn the initialisation and a learning rate for every parameter.

Li, Zhou, Chen, Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning", arXiv:1707.09835 (2017). A task adapts by

    φ = θ − α ⊙ ∇L_support(θ)

(one step in the paper; ``inner_steps`` allows more), where α has the shape of
θ and is meta-learned with θ by backpropagating the query loss through the
step (second order). α is initialised uniformly in [0.005, 0.1] as in the
paper; θ and α are meta-trained with Adam (learning rate 1e-3). The inner loop
and the meta-gradient (including d/dα) are the engine's
:func:`lazyapps.functional.maml_meta_gradient` with a per-parameter learning
rate dict, vmapped over the tasks of a meta-batch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lazyapps.functional import Params, adapt_tasks, maml_meta_gradient

from ..base import Learner, metric_name, register, task_scores
from ..tasks import TaskBatch
from .maml import finn_defaults

__all__ = ["MetaSGD", "init_learning_rates"]


def init_learning_rates(
    params: Mapping[str, Tensor], *, low: float = 0.005, high: float = 0.1, generator: torch.Generator | None = None
) -> Params:
    """Per-parameter learning rates of θ's shapes, drawn uniformly from [low, high] (Li et al. 2017)."""
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low} high={high}")
    out = {}
    for name, p in params.items():
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype) if generator is not None else torch.rand_like(p)
        out[name] = (low + (high - low) * u).to(p.device)
    return out


@register("meta-sgd")
class MetaSGD(Learner):
    """Meta-SGD (Li et al. 2017) as a :class:`~fewshot.base.Learner`.

    ``inner_steps`` SGD steps with the learned per-parameter rates α
    (``learning_rates``, one tensor per model parameter, initialised in
    ``lr_init``); ``first_order=True`` drops the second-order terms (α still
    gets its gradient through the step). Tasks run under ``vmap`` when
    ``vectorize``, else in a loop.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_steps: int = 1,
        lr_init: tuple[float, float] = (0.005, 0.1),
        meta_lr: float = 1e-3,
        first_order: bool = False,
        **base: Any,
    ) -> None:
        super().__init__(model, **base)
        self.inner_steps, self.meta_lr, self.first_order = inner_steps, meta_lr, first_order
        self.lr_init = tuple(lr_init)
        self._names = list(self.theta)
        low, high = self.lr_init
        alphas = init_learning_rates(self.theta, low=low, high=high)
        # A ParameterList in named_parameters order: ParameterDict keys may not contain dots.
        self.learning_rates = nn.ParameterList(nn.Parameter(alphas[k].detach()) for k in self._names)
        self.meta_optimizer = torch.optim.Adam(
            [*self.model.parameters(), *self.learning_rates.parameters()], lr=meta_lr
        )

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        # One adaptation step everywhere (Li et al.); MAML's meta-batch sizes and iteration counts.
        maml = finn_defaults(dataset=dataset, ways=ways, shots=shots)
        return {"inner_steps": 1, "meta_batch": maml["meta_batch"], "iterations": maml["iterations"]}

    @property
    def alpha(self) -> Params:
        """The per-parameter learning rates α by parameter name (live tensors)."""
        return dict(zip(self._names, self.learning_rates))

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        result = maml_meta_gradient(
            self.model, self.theta, self.buffers, self.loss_fn, tasks.support, tasks.query,
            steps=self.inner_steps, lr=self.alpha, first_order=self.first_order, vectorize=self.vectorize,
        )
        assert result.lr_grads is not None
        grads = {**result.grads, **{f"lr:{k}": g for k, g in result.lr_grads.items()}}
        params = {**self.theta, **{f"lr:{k}": a for k, a in self.alpha.items()}}
        self.apply_meta_gradient(grads, params)
        score = task_scores(self.problem, result.outputs, tasks.query_y).mean()
        return {"loss": float(result.loss), metric_name(self.problem): float(score)}

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        theta = {k: v.detach() for k, v in self.theta.items()}
        alpha = {k: v.detach() for k, v in self.alpha.items()}
        with torch.enable_grad():
            return adapt_tasks(self.model, theta, self.buffers, self.loss_fn, support,
                               steps=self.inner_steps, lr=alpha, vectorize=self.vectorize)
