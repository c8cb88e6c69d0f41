"""The meta-learner LSTM: an LSTM whose cell state is the learner's parameters.

Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017.
Gradient descent θ_t = θ_{t−1} − α_t ∇_t looks like the LSTM cell update
c_t = f_t ⊙ c_{t−1} + i_t ⊙ c̃_t with c_t = θ_t, c̃_t = −∇_t, f_t = 1, i_t = α_t.
The meta-learner makes the gates learned functions, per parameter coordinate
and with weights shared by all coordinates:

    i_t = σ(W_I·[h_t, θ_{t−1}, i_{t−1}] + b_I)      (a learned step size)
    f_t = σ(W_F·[h_t, θ_{t−1}, f_{t−1}] + b_F)      (a learned shrinkage)
    θ_t = f_t ⊙ θ_{t−1} − i_t ⊙ ∇_t

where h_t is the output of a first, ordinary LSTM layer (hidden size 20, as in
the paper) over the preprocessed gradient and loss [pre(∇_t), pre(L_t)], with
Andrychowicz et al.'s (2016) preprocessing (p = 10). The initial cell state
c_0 = θ_0 is a learned initialisation (the model's parameters here). The
forget bias starts in [4, 6] and the input bias in [−5, −4], so training starts
near gradient descent with f ≈ 1 and a small step size.

``first_order=True`` is the paper's simplification: the loss and gradient fed
to the meta-learner are treated as independent of the meta-parameters (no
second derivatives); ``False`` backpropagates through them too. Meta-training
uses Adam (learning rate 1e-3) with gradient-norm clipping at 0.25 (the paper's
settings). Tasks of a meta-batch run under ``vmap`` when possible (the inner
loop is pure ``torch.func``), with a per-task loop otherwise.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import grad_and_value

from lazyapps.functional import Batch, LossFn, Params, batch_loss, map_tasks

from ..base import Learner, register
from ..tasks import TaskBatch
from .maml import finn_defaults

__all__ = ["MetaLSTM", "MetaLSTMCell", "flatten_params", "meta_lstm_adapt", "meta_lstm_step", "preprocess", "unflatten_params"]


def preprocess(x: Tensor, *, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016) input scaling: ``x`` → two features (last dim).

    (log|x|/p, sign x) if |x| ≥ e^{−p}, else (−1, e^p·x). Keeps magnitudes
    spanning many orders comparable; both features are constants w.r.t. ``x``
    except through x itself.
    """
    big = x.abs() >= math.exp(-p)
    # clamp inside the log so the unused branch never produces -inf (and NaN gradients).
    log_part = torch.where(big, torch.log(x.abs().clamp_min(math.exp(-p))) / p, -torch.ones_like(x))
    sign_part = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([log_part, sign_part], dim=-1)


class MetaLSTMCell(nn.Module):
    """The two-layer, coordinate-wise meta-learner of Ravi & Larochelle (2017).

    Layer 1: a standard LSTM (input 4 = preprocessed gradient and loss,
    ``hidden_size`` units). Layer 2: the gates i, f above. All weights are
    shared across parameter coordinates; the state of one coordinate is
    (h, c) of layer 1 and its previous i, f.
    """

    def __init__(self, *, hidden_size: int = 20, preprocess_p: float = 10.0) -> None:
        super().__init__()
        self.hidden_size, self.preprocess_p = hidden_size, preprocess_p
        h = hidden_size
        self.lstm_input = nn.Parameter(torch.empty(4, 4 * h))
        self.lstm_hidden = nn.Parameter(torch.empty(h, 4 * h))
        self.lstm_bias = nn.Parameter(torch.zeros(4 * h))
        # Gate weights over [h_t, θ_{t−1}, previous gate].
        self.input_gate = nn.Parameter(torch.empty(h + 2))
        self.forget_gate = nn.Parameter(torch.empty(h + 2))
        self.input_bias = nn.Parameter(torch.empty(()))
        self.forget_bias = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)
        for w in (self.lstm_input, self.lstm_hidden):
            nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.lstm_bias)
        for w in (self.input_gate, self.forget_gate):
            nn.init.uniform_(w, -0.01, 0.01)
        # f ≈ 1 (keep θ), i ≈ σ(−4.5) ≈ 0.01 (a small step): start close to plain gradient descent.
        nn.init.uniform_(self.forget_bias, 4.0, 6.0)
        nn.init.uniform_(self.input_bias, -5.0, -4.0)

    def weights(self) -> Params:
        """The meta-learner's weights by name, for the pure functions below."""
        return dict(self.named_parameters())


def flatten_params(params: Mapping[str, Tensor]) -> Tensor:
    """All coordinates of ``params`` as one vector (in the dict's order)."""
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflatten_params(vector: Tensor, like: Mapping[str, Tensor]) -> Params:
    """Inverse of :func:`flatten_params`: ``vector`` cut into tensors named and shaped like ``like``."""
    pieces = vector.split([v.numel() for v in like.values()])
    return {k: piece.reshape(v.shape) for (k, v), piece in zip(like.items(), pieces)}


class CoordinateState(NamedTuple):
    """Per-coordinate meta-learner state over the flattened parameters (n coordinates)."""

    h: Tensor  # layer-1 hidden, (n, hidden)
    c: Tensor  # layer-1 cell, (n, hidden)
    i: Tensor  # previous input gate, (n,)
    f: Tensor  # previous forget gate, (n,)


def initial_state(theta: Tensor, hidden_size: int) -> CoordinateState:
    """Zero state (the paper's i_0 = f_0 = 0, zero LSTM state) for the flat parameters ``theta``."""
    zeros = theta.new_zeros((theta.shape[0], hidden_size))
    gates = torch.zeros_like(theta)
    return CoordinateState(zeros, zeros, gates, gates)


def meta_lstm_step(
    weights: Mapping[str, Tensor],
    theta: Tensor,
    grad: Tensor,
    loss: Tensor,
    state: CoordinateState,
    *,
    preprocess_p: float = 10.0,
) -> tuple[Tensor, CoordinateState]:
    """One meta-learner update of the flat parameters: θ_t = f ⊙ θ_{t−1} − i ⊙ ∇, and the new state.

    ``weights`` are :meth:`MetaLSTMCell.weights`; ``theta``/``grad`` are
    vectors (all coordinates at once); ``loss`` is the scalar support loss at
    θ_{t−1}, shared by every coordinate.
    """
    w = weights
    hidden = w["lstm_hidden"].shape[0]
    loss_features = preprocess(loss.reshape(1), p=preprocess_p).expand(theta.shape[0], 2)
    x = torch.cat([preprocess(grad, p=preprocess_p), loss_features], dim=-1)
    z = x @ w["lstm_input"] + state.h @ w["lstm_hidden"] + w["lstm_bias"]
    zi, zf, zg, zo = z.split(hidden, dim=-1)
    c1 = torch.sigmoid(zf) * state.c + torch.sigmoid(zi) * torch.tanh(zg)
    h1 = torch.sigmoid(zo) * torch.tanh(c1)
    wi, wf = w["input_gate"], w["forget_gate"]
    i = torch.sigmoid(h1 @ wi[:hidden] + theta * wi[hidden] + state.i * wi[hidden + 1] + w["input_bias"])
    f = torch.sigmoid(h1 @ wf[:hidden] + theta * wf[hidden] + state.f * wf[hidden + 1] + w["forget_bias"])
    return f * theta - i * grad, CoordinateState(h1, c1, i, f)


def meta_lstm_adapt(
    model: nn.Module,
    init: Mapping[str, Tensor],
    buffers: Params,
    loss_fn: LossFn,
    batch: Batch,
    weights: Mapping[str, Tensor],
    *,
    steps: int,
    first_order: bool = True,
    preprocess_p: float = 10.0,
) -> Params:
    """``steps`` meta-learner updates of one task from c_0 = ``init`` on its support ``batch``.

    The cell state is the flattened parameter vector. With ``first_order`` the
    gradient and loss are computed at detached params (the paper's
    assumption); otherwise they stay in the graph. Pure ``torch.func``: runs
    under ``vmap``.
    """
    hidden = weights["lstm_hidden"].shape[0]
    theta = flatten_params(init)
    state = initial_state(theta, hidden)

    def support_loss(flat: Tensor) -> Tensor:
        return batch_loss(model, unflatten_params(flat, init), buffers, loss_fn, batch)

    for _ in range(steps):
        g, loss = grad_and_value(support_loss)(theta.detach() if first_order else theta)
        theta, state = meta_lstm_step(weights, theta, g, loss, state, preprocess_p=preprocess_p)
    return unflatten_params(theta, init)


@register("meta-lstm")
class MetaLSTM(Learner):
    """The meta-learner LSTM (Ravi & Larochelle 2017) as a :class:`~fewshot.base.Learner`.

    Meta-parameters: the model's initial weights θ_0 and the
    :class:`MetaLSTMCell` (``meta_learner``). ``inner_steps`` updates per task
    on the full support set; ``grad_clip`` bounds the meta-gradient norm.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_steps: int = 5,
        hidden_size: int = 20,
        first_order: bool = True,
        meta_lr: float = 1e-3,
        grad_clip: float = 0.25,
        preprocess_p: float = 10.0,
        **base: Any,
    ) -> None:
        super().__init__(model, **base)
        self.inner_steps, self.hidden_size, self.first_order = inner_steps, hidden_size, first_order
        self.meta_lr, self.grad_clip, self.preprocess_p = meta_lr, grad_clip, preprocess_p
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.meta_learner = MetaLSTMCell(hidden_size=hidden_size, preprocess_p=preprocess_p).to(device, dtype)
        self.meta_optimizer = torch.optim.Adam(self.parameters(), lr=meta_lr)

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        # Ravi & Larochelle only report miniImageNet; elsewhere MAML's meta-batch sizes.
        return {"meta_batch": finn_defaults(dataset=dataset, ways=ways, shots=shots)["meta_batch"]}

    def _adapt_fn(self, theta: Params, weights: Params):
        model, buffers, loss_fn = self.model, self.buffers, self.loss_fn

        def one(*support: Tensor) -> Params:
            return meta_lstm_adapt(model, theta, buffers, loss_fn, support, weights, steps=self.inner_steps,
                                   first_order=self.first_order, preprocess_p=self.preprocess_p)

        return one

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        adapt_one = self._adapt_fn(self.theta, self.meta_learner.weights())
        return self.backprop_meta_step(adapt_one, tasks, grad_clip=self.grad_clip)

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        theta = {k: v.detach() for k, v in self.theta.items()}
        weights = {k: v.detach() for k, v in self.meta_learner.weights().items()}
        with torch.enable_grad():
            fast = map_tasks(self._adapt_fn(theta, weights), *support, vectorize=self.vectorize)
        return {k: v.detach() for k, v in fast.items()}
