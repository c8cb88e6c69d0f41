"""Functional building blocks over :mod:`torch.func`, shared by every product.

A model's weights are handled as a :data:`Params` dict (name -> tensor) and run
with :func:`forward` (``torch.func.functional_call``), so inner loops never touch
the module's own parameters and can be vectorised over tasks with ``vmap``.

Inner-loop losses follow one convention throughout: a *batch* is a tuple
``(*inputs, targets)``; the model is called as ``model(*inputs)`` and the loss is
``loss_fn(outputs, targets)`` (e.g. ``torch.nn.functional.cross_entropy``). For the
task-batched functions every tensor of the batch carries a leading task dim.

These implement the "exact" second-order MAML baseline the lazy teacher is
compared with in Jamal, Wang, Gong, "A Lazy Approach to Long-Horizon
Gradient-Based Meta-Learning" (its memory grows with the number of inner steps,
which is what the lazy teacher avoids).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

Params = dict[str, Tensor]
"""Model weights (or buffers) by name, as returned by ``named_parameters``."""

Batch = Sequence[Tensor]
"""``(*inputs, targets)``; stacked on a leading task dim for the ``*_tasks`` functions."""

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, targets) -> scalar``; must be vmappable for ``vectorize=True``."""


def params_of(model: nn.Module, *, detach: bool = False) -> Params:
    """The model's parameters as a dict; ``detach=True`` gives graph-free aliases (no copy)."""
    return {k: (v.detach() if detach else v) for k, v in model.named_parameters()}


def buffers_of(model: nn.Module) -> Params:
    """The model's buffers (e.g. BatchNorm running statistics) as a dict."""
    return dict(model.named_buffers())


def forward(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], *args: Any) -> Any:
    """Run ``model(*args)`` with the given params and buffers instead of its own."""
    return functional_call(model, (dict(params), dict(buffers)), args)


def _check_batch(batch: Batch) -> None:
    if len(batch) < 2:
        raise ValueError(f"a batch is a tuple (*inputs, targets) of at least 2 tensors, got {len(batch)}")


def _lr_of(lr: float | Mapping[str, Tensor], name: str) -> float | Tensor:
    return lr[name] if isinstance(lr, Mapping) else lr


def batch_loss(model: nn.Module, params: Params, buffers: Params, loss_fn: LossFn, batch: Batch) -> Tensor:
    """``loss_fn(model(*inputs), targets)`` for one ``batch = (*inputs, targets)``."""
    _check_batch(batch)
    return loss_fn(forward(model, params, buffers, *batch[:-1]), batch[-1])


def sgd_adapt(
    model: nn.Module,
    params: Params,
    buffers: Params,
    loss_fn: LossFn,
    batch: Batch,
    *,
    steps: int,
    lr: float | Mapping[str, Tensor],
    create_graph: bool = False,
) -> Params:
    """``steps`` plain gradient-descent steps on one task's support ``batch``.

    ``lr`` is a float or a per-parameter dict of tensors (Meta-SGD); a learning
    rate that requires grad receives gradients through the returned params.
    With ``create_graph=True`` the inner gradients stay in the graph, so a query
    loss on the result differentiates back to ``params`` with second-order terms
    (MAML); with ``False`` each inner gradient is a constant (first-order MAML:
    the result still depends on ``params`` through the identity). Pure
    ``torch.func``, so it runs inside ``vmap``. ``params`` is never mutated;
    ``buffers`` are updated in place as eager PyTorch would (BatchNorm statistics).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(lr, Mapping) and set(lr) != set(params):
        raise ValueError(f"per-parameter lr must have exactly the keys of params; missing {sorted(set(params) - set(lr))}")

    def loss(p: Params, b: Params) -> Tensor:
        return batch_loss(model, p, b, loss_fn, batch)

    for _ in range(steps):
        # First order: take the gradient at detached params so no graph is built for it at all.
        # Buffers go in as an input: torch.func.grad refuses in-place updates of captured tensors.
        g = grad(loss)(params if create_graph else {k: v.detach() for k, v in params.items()}, buffers)
        params = {k: v - _lr_of(lr, k) * g[k] for k, v in params.items()}
    return params


def _index(tree: Any, t: int) -> Any:
    if isinstance(tree, Tensor):
        return tree[t]
    if isinstance(tree, Mapping):
        return {k: _index(v, t) for k, v in tree.items()}
    return type(tree)(_index(v, t) for v in tree)


def _stack(trees: list[Any]) -> Any:
    first = trees[0]
    if isinstance(first, Tensor):
        return torch.stack(trees)
    if isinstance(first, Mapping):
        return {k: _stack([tr[k] for tr in trees]) for k in first}
    return type(first)(_stack(list(parts)) for parts in zip(*trees))


def _leaves(tree: Any) -> list[Tensor]:
    if isinstance(tree, Tensor):
        return [tree]
    return [leaf for v in (tree.values() if isinstance(tree, Mapping) else tree) for leaf in _leaves(v)]


def _num_tasks(tree: Any) -> int:
    sizes = {t.shape[0] for t in _leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"all task-batched tensors need the same leading task dim, got sizes {sorted(sizes)}")
    return sizes.pop()


def map_tasks(fn: Callable[..., Any], *per_task: Any, vectorize: bool = True, randomness: str = "error") -> Any:
    """``fn`` applied to each task's slice of ``per_task`` (pytrees with a leading task dim), outputs stacked.

    ``vectorize=True`` uses ``torch.func.vmap``; ``False`` is a Python loop over
    tasks with the same result. vmap cannot run code that updates captured
    tensors in place (BatchNorm in train mode with ``track_running_stats=True``,
    which :func:`adapt_tasks` and :func:`maml_meta_gradient` detect up front) or
    reads tensor values into Python (``.item()``). When vmap fails we fall back
    to the loop, and warn once the loop has run: if the loop fails too, the
    error is the caller's (a label out of range, a dtype mismatch) and is raised
    as the loop meets it, without a warning that would blame vmap.
    """
    vmap_error = None
    if vectorize:
        try:
            return vmap(fn, randomness=randomness)(*per_task)
        except RuntimeError as err:
            vmap_error = err
    n = _num_tasks(per_task)
    out = _stack([fn(*_index(per_task, t)) for t in range(n)])
    if vmap_error is not None:
        warnings.warn(
            f"vmap over tasks failed ({str(vmap_error).splitlines()[0]}); fell back to a Python loop "
            "(pass vectorize=False to silence this)",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def _can_vmap(model: nn.Module, vectorize: bool) -> bool:
    """False (with a warning) for models that update running statistics in place, which vmap cannot run.

    Checked up front rather than by catching vmap's error, because a failed vmap
    has already bumped some buffers (e.g. ``num_batches_tracked``).
    """
    if vectorize and any(getattr(m, "track_running_stats", False) and m.training for m in model.modules()):
        warnings.warn(
            "the model updates normalisation running statistics in place (track_running_stats=True in train "
            "mode), which vmap cannot run; falling back to a Python loop over tasks. Use "
            "track_running_stats=False or eval mode to vectorise, or vectorize=False (--no-vectorize on the command line) "
            "to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return vectorize


def adapt_tasks(
    model: nn.Module,
    params: Params,
    buffers: Params,
    loss_fn: LossFn,
    batch: Batch,
    *,
    steps: int,
    lr: float | Mapping[str, Tensor],
    create_graph: bool = False,
    vectorize: bool = True,
    randomness: str = "error",
) -> Params:
    """:func:`sgd_adapt` of every task from the same ``params`` (tasks stacked on dim 0 of ``batch``).

    Returns the adapted params stacked per task (each tensor gains a leading task
    dim). ``vectorize``/``randomness`` as in :func:`map_tasks` (``randomness`` is
    vmap's, for models with dropout).
    """
    _check_batch(batch)

    def adapt(*task_batch: Tensor) -> Params:
        return sgd_adapt(model, params, buffers, loss_fn, task_batch, steps=steps, lr=lr, create_graph=create_graph)

    return map_tasks(adapt, *batch, vectorize=_can_vmap(model, vectorize), randomness=randomness)


class MetaGradient(NamedTuple):
    """Result of :func:`maml_meta_gradient`; every tensor is detached."""

    loss: Tensor  # mean query loss over tasks (the meta-objective)
    grads: Params  # d loss / d params
    task_losses: Tensor  # per-task query losses, shape (tasks,)
    outputs: Tensor  # query outputs of the adapted models, (tasks, ...) e.g. for accuracy
    lr_grads: Params | None  # d loss / d lr for a per-parameter lr dict (Meta-SGD), else None


def maml_meta_gradient(
    model: nn.Module,
    params: Params,
    buffers: Params,
    loss_fn: LossFn,
    support: Batch,
    query: Batch,
    *,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool = False,
    vectorize: bool = True,
    randomness: str = "error",
) -> MetaGradient:
    """The MAML meta-gradient through ``steps`` plain SGD steps, for a batch of tasks.

    Each task adapts from ``params`` on its ``support`` set; the meta-objective is
    the mean over tasks of the query loss of the adapted params, differentiated
    w.r.t. ``params`` (second order unless ``first_order``; the latter is FOMAML).
    Memory grows linearly with ``steps`` -- the cost the lazy teacher removes.
    ``params`` is not modified; with a per-parameter ``lr`` dict, gradients for
    it are returned in ``lr_grads`` (Meta-SGD). The model must return a tensor.
    """
    _check_batch(query)
    vectorize = _can_vmap(model, vectorize)
    lr_leaves: Params | None = None
    if isinstance(lr, Mapping):
        lr_leaves = {k: v.detach().requires_grad_() for k, v in lr.items()}
    with torch.enable_grad():
        theta = {k: v.detach().requires_grad_() for k, v in params.items()}
        adapted = adapt_tasks(
            model, theta, buffers, loss_fn, support, steps=steps, lr=lr_leaves if lr_leaves is not None else lr,
            create_graph=not first_order, vectorize=vectorize, randomness=randomness,
        )

        def query_loss(p: Params, *task_query: Tensor) -> tuple[Tensor, Tensor]:
            out = forward(model, p, buffers, *task_query[:-1])
            return loss_fn(out, task_query[-1]), out

        task_losses, outputs = map_tasks(query_loss, adapted, *query, vectorize=vectorize, randomness=randomness)
        loss = task_losses.mean()
        inputs = list(theta.values()) + (list(lr_leaves.values()) if lr_leaves is not None else [])
        gs = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    grads = dict(zip(theta, gs[: len(theta)]))
    lr_grads = dict(zip(lr_leaves, gs[len(theta):])) if lr_leaves is not None else None
    return MetaGradient(loss.detach(), grads, task_losses.detach(), outputs.detach(), lr_grads)
