"""TURTLE: a stateless feed-forward meta-network that outputs the inner updates.

Huisman, Plaat, van Rijn, "Stateless Neural Meta-Learning using Second-Order
Gradients", Machine Learning 111 (2022). The paper shows the meta-learner LSTM
subsumes MAML, then drops its recurrent state: a small feed-forward network m
applied to every parameter coordinate (weights shared by all coordinates) maps
the coordinate's gradient ∇_t and its moving average
a_t = β·a_{t−1} + (1 − β)·∇_t (β = 0.9, a_0 = 0), optionally with the time step
t/T, to an update, scaled by a learned learning rate per parameter:

    θ_t = θ_{t−1} − α ⊙ m([∇_t, a_t (, t/T)])

m has 5 hidden layers of 20 ReLU units and a linear output. The meta-parameters
(initial weights θ_0, α, m) are trained with Adam by backpropagating the query
loss through the whole unrolled inner loop including the gradients' dependence
on θ (second order, the paper's key ingredient; ``first_order=True`` detaches
them). Tasks of a meta-batch run under ``vmap`` when possible (the inner loop
is pure ``torch.func``), with a per-task loop otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad

from lazyapps.functional import Batch, LossFn, Params, batch_loss, map_tasks

from ..base import Learner, register
from ..tasks import TaskBatch
from .maml import finn_defaults
from .meta_lstm import flatten_params, unflatten_params

__all__ = ["Turtle", "UpdateNetwork", "turtle_adapt", "update_network_forward"]


class UpdateNetwork(nn.Module):
    """The coordinate-wise meta-network m: ``in_features`` → ``hidden`` (ReLU) ×L → 1.

    ``init="gradient"`` (default) starts m at exactly the raw gradient, input 0
    (m(x) = relu(x₀) − relu(−x₀) carried through two units of every layer),
    with the remaining units at PyTorch's default initialisation and zero
    weight into the output: meta-training then starts from Meta-SGD-like
    gradient descent with rates α and can grow the other units from there.
    ``init="random"`` keeps PyTorch's default initialisation everywhere, whose
    update ignores the gradient's scale at first (fine for sine waves, stuck
    at chance on Omniglot in our short runs).
    """

    def __init__(self, *, in_features: int = 2, hidden: Sequence[int] = (20,) * 5, init: str = "gradient") -> None:
        super().__init__()
        if init not in ("gradient", "random"):
            raise ValueError(f"unknown init {init!r}; valid: gradient, random")
        if init == "gradient" and min(hidden, default=0) < 2:
            raise ValueError("init='gradient' needs at least 2 units per hidden layer")
        sizes = [in_features, *hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        if init == "gradient":
            self._init_as_gradient()

    @torch.no_grad()
    def _init_as_gradient(self) -> None:
        first, *middle, last = self.layers
        first.weight[:2] = 0.0
        first.weight[0, 0], first.weight[1, 0] = 1.0, -1.0  # units 0/1: relu(∇), relu(−∇)
        first.bias[:2] = 0.0
        for layer in middle:  # pass units 0/1 through unchanged (ReLU of a non-negative value)
            layer.weight[:2] = 0.0
            layer.weight[0, 0], layer.weight[1, 1] = 1.0, 1.0
            layer.bias[:2] = 0.0
        last.weight.zero_()
        last.weight[0, 0], last.weight[0, 1] = 1.0, -1.0
        last.bias.zero_()

    def forward(self, features: Tensor) -> Tensor:
        return update_network_forward(dict(self.named_parameters()), features)


def update_network_forward(weights: Mapping[str, Tensor], features: Tensor) -> Tensor:
    """m(features) for ``features`` of shape (..., in) → (...), from :class:`UpdateNetwork`'s weights by name.

    Written out (not ``functional_call``) so it is one obvious function of the
    weights, usable inside ``vmap``.
    """
    n = sum(1 for k in weights if k.endswith(".weight"))
    x = features
    for layer in range(n):
        x = x @ weights[f"layers.{layer}.weight"].T + weights[f"layers.{layer}.bias"]
        if layer < n - 1:
            x = torch.relu(x)
    return x.squeeze(-1)


def turtle_adapt(
    model: nn.Module,
    init: Mapping[str, Tensor],
    buffers: Params,
    loss_fn: LossFn,
    batch: Batch,
    network: Mapping[str, Tensor],
    learning_rates: Mapping[str, Tensor],
    *,
    steps: int,
    beta: float = 0.9,
    time_input: bool = False,
    first_order: bool = False,
) -> Params:
    """``steps`` TURTLE updates of one task from ``init`` on its support ``batch``.

    ``network``: :class:`UpdateNetwork` weights by name; ``learning_rates``: α
    per parameter (shapes of ``init``). Second order unless ``first_order``
    (then each gradient is taken at detached params). Pure ``torch.func``.
    """
    theta = flatten_params(init)
    alpha = flatten_params(learning_rates)
    average = torch.zeros_like(theta)

    def support_loss(flat: Tensor) -> Tensor:
        return batch_loss(model, unflatten_params(flat, init), buffers, loss_fn, batch)

    for t in range(1, steps + 1):
        g = grad(support_loss)(theta.detach() if first_order else theta)
        average = beta * average + (1 - beta) * g
        inputs = [g, average] + ([torch.full_like(g, t / steps)] if time_input else [])
        theta = theta - alpha * update_network_forward(network, torch.stack(inputs, dim=-1))
    return unflatten_params(theta, init)


@register("turtle")
class Turtle(Learner):
    """TURTLE (Huisman et al. 2022) as a :class:`~fewshot.base.Learner`.

    ``inner_steps`` updates per task on the full support set, ``beta`` the
    gradient moving-average rate, ``time_input`` adds t/T as an input,
    ``hidden`` the meta-network's layer widths, ``network_init`` its
    initialisation (see :class:`UpdateNetwork`), ``lr_init`` the initial α
    (:meth:`paper_defaults` sets it to MAML's inner learning rate for the
    benchmark), ``meta_lr`` Adam's learning rate for all meta-parameters,
    ``grad_clip`` a bound on the meta-gradient's global norm (None: unbounded,
    as the paper describes it). On 5-shot sine the unbounded meta-training
    diverged after about 3,600 iterations in our runs; bounded at 0.25 (the
    meta-learner LSTM's bound) or 1.0 it kept improving to 5,400 / 6,000
    (docs/fewshot.md).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_steps: int = 5,
        beta: float = 0.9,
        time_input: bool = False,
        hidden: tuple[int, ...] = (20, 20, 20, 20, 20),
        lr_init: float = 0.01,
        network_init: str = "gradient",
        meta_lr: float = 1e-3,
        first_order: bool = False,
        grad_clip: float | None = None,
        **base: Any,
    ) -> None:
        super().__init__(model, **base)
        if not 0 <= beta < 1:  # the moving average's decay: 1 would freeze it at its start
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.inner_steps, self.beta, self.time_input = inner_steps, beta, time_input
        self.hidden, self.lr_init, self.network_init = tuple(hidden), lr_init, network_init
        self.meta_lr, self.first_order, self.grad_clip = meta_lr, first_order, grad_clip
        ref = next(model.parameters())
        self.update_network = UpdateNetwork(
            in_features=3 if time_input else 2, hidden=self.hidden, init=network_init
        ).to(ref.device, ref.dtype)
        self._names = list(self.theta)
        self.learning_rates = nn.ParameterList(
            nn.Parameter(torch.full_like(p.detach(), lr_init)) for p in self.theta.values()
        )
        self.meta_optimizer = torch.optim.Adam(self.parameters(), lr=meta_lr)

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        # α starts at MAML's inner learning rate for the benchmark, with MAML's meta-batch size.
        maml = finn_defaults(dataset=dataset, ways=ways, shots=shots)
        return {"lr_init": maml["inner_lr"], "meta_batch": maml["meta_batch"]}

    @property
    def alpha(self) -> Params:
        """The per-parameter learning rates α by parameter name (live tensors)."""
        return dict(zip(self._names, self.learning_rates))

    def _adapt_fn(self, theta: Params, network: Params, alpha: Params):
        model, buffers, loss_fn = self.model, self.buffers, self.loss_fn

        def one(*support: Tensor) -> Params:
            return turtle_adapt(model, theta, buffers, loss_fn, support, network, alpha, steps=self.inner_steps,
                                beta=self.beta, time_input=self.time_input, first_order=self.first_order)

        return one

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        adapt_one = self._adapt_fn(self.theta, dict(self.update_network.named_parameters()), self.alpha)
        return self.backprop_meta_step(adapt_one, tasks, grad_clip=self.grad_clip)

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        theta = {k: v.detach() for k, v in self.theta.items()}
        network = {k: v.detach() for k, v in self.update_network.named_parameters()}
        alpha = {k: v.detach() for k, v in self.alpha.items()}
        with torch.enable_grad():
            fast = map_tasks(self._adapt_fn(theta, network, alpha), *support, vectorize=self.vectorize)
        return {k: v.detach() for k, v in fast.items()}
