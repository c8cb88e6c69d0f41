"""The learner API every few-shot algorithm implements, and the registry of learners.

A :class:`Learner` owns a model (its parameters are the meta-parameters θ),
any extra meta-parameters (learning rates, a meta-network) as submodules or
``nn.Parameter`` attributes, and its meta-optimiser. Subclasses implement two
methods:

* :meth:`Learner.meta_step` — one meta-iteration on a :class:`~fewshot.tasks.TaskBatch`
  (update the meta-parameters, return metrics such as the query loss);
* :meth:`Learner.adapt` — fast weights for each task of a batch from its
  support set (stacked on a leading task dim).

The base class provides :meth:`meta_train`, :meth:`predict` (with or without
transductive BatchNorm), :meth:`evaluate` (mean ± 95% confidence interval),
checkpoint state and hyperparameter metadata.

Conventions for subclasses (so checkpoints can rebuild a learner):

* ``__init__(self, model, *, <hyperparameters with the papers' defaults>, **base)``
  passes ``problem``, ``vectorize``, ``transductive`` on to ``Learner.__init__``;
* each keyword hyperparameter is stored as an attribute of the same name
  (:meth:`hparams` reads them back; values must be JSON-able);
* register with ``@register("algo-name")``; ``paper_defaults`` may return the
  published settings for a dataset/ways/shots combination.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazyapps.errors import DivergedError, LazyAppsError, UnknownNameError
from lazyapps.functional import Params, buffers_of, forward, map_tasks, params_of

from .tasks import TaskBatch, TaskSource

PROBLEMS = ("classification", "regression")


def task_loss(problem: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss of one task's outputs: cross-entropy (classification) or MSE (regression, Finn et al.)."""
    return F.cross_entropy if problem == "classification" else F.mse_loss


def task_scores(problem: str, outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-task metric of stacked outputs ``(T, Q, ...)``: accuracy in percent or mean squared error.

    A task with a non-finite output scores NaN in both: its MSE is non-finite anyway, and the argmax of NaN logits
    is class 0, a chance-level accuracy that would hide a diverged adaptation (the CLI's warning counts NaN tasks;
    the lazy teacher never picks a NaN-scoring leap).
    """
    if problem == "classification":
        accuracy = (outputs.argmax(-1) == targets).float().mean(-1) * 100
        return accuracy.masked_fill(~outputs.isfinite().flatten(1).all(-1), math.nan)
    return ((outputs - targets) ** 2).flatten(1).mean(-1)


def metric_name(problem: str) -> str:
    return "accuracy" if problem == "classification" else "mse"


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether some BatchNorm layer normalises by the statistics of its input batch at evaluation.

    Those are the layers without running statistics (as PyTorch decides: ``running_mean is None``). A layer that
    keeps running statistics (``--arch resnet18``, ``timm:*``, conv4 with ``track_running_stats=True``) uses them in
    eval mode, so how the queries are batched changes nothing and (non-)transductive evaluation does not apply.
    """
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in model.modules())


class _BatchStatNorm:
    """BatchNorm with batch statistics written with elementary ops.

    Why: under ``torch.func.vmap``, the second derivative of PyTorch's fused
    ``batch_norm`` is wrong (measured: second-order MAML meta-gradients of a
    conv-BN net differ from the per-task loop and from finite differences by up
    to 1e-1, torch 2.x), while the same function built from mean/var/sqrt
    differentiates correctly. Same parameters, same state dict, same values.
    The variance is the mean of the centred squares: on a CPU ``Tensor.var``
    over (N, H, W) of an NCHW batch took twice as long as the rest of the
    layer (8 of 12 ms on 25x64x28x28).
    """

    def forward(self, x: Tensor) -> Tensor:
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - x.mean(dims, keepdim=True)
        var = (centred * centred).mean(dims, keepdim=True)
        y = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class BatchStatNorm1d(_BatchStatNorm, nn.BatchNorm1d):
    pass


class BatchStatNorm2d(_BatchStatNorm, nn.BatchNorm2d):
    pass


def make_vmap_safe(model: nn.Module) -> nn.Module:
    """Swap (in place) every BatchNorm without running statistics for :class:`_BatchStatNorm`'s equivalent.

    Only modules that always use batch statistics (``track_running_stats=False``)
    are swapped, so the model computes exactly what it did before.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            if type(module) is nn.BatchNorm2d:
                module.__class__ = BatchStatNorm2d
            elif type(module) is nn.BatchNorm1d:
                module.__class__ = BatchStatNorm1d
    return model


@dataclass
class Evaluation:
    """Result of :meth:`Learner.evaluate`.

    ``mean`` ± ``ci95`` (1.96·std/√n over tasks) of ``metric`` (accuracy in
    percent, or MSE); ``values`` holds the per-task metric. ``batchnorm`` is
    how the model's BatchNorm normalised the queries: ``"batch"`` (by batch
    statistics; ``transductive`` then says which batch: the whole query set, or
    the support set plus one query), ``"running"`` (by running statistics, so
    queries are scored independently whatever the learner's ``transductive``
    flag) or ``None`` (no BatchNorm). ``transductive`` is ``None`` unless
    ``batchnorm`` is ``"batch"``: it reports the mode used, not the flag.
    """

    metric: str
    mean: float
    ci95: float
    tasks: int
    transductive: bool | None
    values: list[float] = field(repr=False, default_factory=list)
    batchnorm: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mean": self.mean, "ci95": self.ci95, "tasks": self.tasks,
                "transductive": self.transductive, "batchnorm": self.batchnorm}

    @property
    def bn_label(self) -> str:
        """The "transductive BN" cell of a result table: yes, no, or n/a (and why, for running statistics)."""
        if self.transductive is not None:
            return "yes" if self.transductive else "no"
        return "n/a (running stats)" if self.batchnorm == "running" else "n/a"

    def __str__(self) -> str:
        unit = "%" if self.metric == "accuracy" else ""
        return f"{self.metric} {self.mean:.2f}{unit} ± {self.ci95:.2f}{unit} (95% CI, {self.tasks} tasks)"


def confidence_interval(values: Tensor) -> tuple[float, float]:
    """Mean and 95% half-width 1.96·std/√n (std with Bessel's correction; 0 for one value)."""
    values = values.double().flatten()
    n = values.numel()
    std = float(values.std()) if n > 1 else 0.0
    return float(values.mean()), 1.96 * std / math.sqrt(n)


class Learner(nn.Module):
    """Base class of few-shot meta-learners (see the module docstring for the contract).

    ``problem`` is ``"classification"`` (cross-entropy, accuracy) or
    ``"regression"`` (MSE). ``vectorize`` runs a meta-batch's tasks under
    ``torch.func.vmap`` (with a per-task loop fallback in
    :func:`lazyapps.functional.map_tasks`); ``False`` always loops.
    ``transductive``: at evaluation the queries of a task are classified in one
    batch, so BatchNorm uses the query batch's statistics (what MAML's code
    does); ``False`` classifies each query example on its own in a batch made
    of the support set plus that one example (Nichol et al.'s non-transductive
    protocol), so no information flows between query examples.
    ``zero_head`` (classification): the zeroing trick of Kao, Chiu, Chen,
    "MAML is a Noisy Contrastive Learner in Classification" (ICLR 2022):
    the output layer (the model's last ``nn.Linear``) is set to zero at the start
    and after every meta-update, so every task adapts from a zero head. With
    classes relabelled per task a meta-learned head carries no class order
    worth keeping; from zero, the first inner step sets each class's weights to
    lr/N times the mean of its support features minus the mean of all support
    features (N balanced classes), a nearest-mean classifier. Off by default
    (the papers' setting).
    """

    name: ClassVar[str] = ""
    #: whether meta-training changes the model (False for ``scratch``); informs the CLI.
    meta_learns: ClassVar[bool] = True
    #: options of this base class that a learner does not take (``finetune``: ``zero_head``): left out of its
    #: hyperparameters (:meth:`hparam_names`, :meth:`hparams`, ``fewshot algos``), so a command line refuses them.
    inapplicable_hparams: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every learner's keyword hyperparameters are checked as the class declares them (check_hparams) before its
        # __init__ runs, from Python as from the command line: MetaLSTM(grad_clip=-1.0) or MAML(inner_steps=-1)
        # fail at once, naming the hyperparameter, instead of flipping a gradient or failing at the first step.
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls) and not getattr(cls.__init__, "_checks_hparams", False):
            init = cls.__init__

            @functools.wraps(init)
            def checked(self: Learner, model: nn.Module, *args: Any, **hparams: Any) -> None:
                init(self, model, *args, **type(self).check_hparams(hparams))

            checked._checks_hparams = True  # type: ignore[attr-defined]
            cls.__init__ = checked  # type: ignore[method-assign]

    def __init__(self, model: nn.Module, *, problem: str = "classification", vectorize: bool = True, transductive: bool = True,
                 zero_head: bool = False) -> None:
        super().__init__()
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
        if not isinstance(zero_head, bool):
            raise ValueError(f"zero_head must be true or false, got {zero_head!r}")
        if zero_head and problem != "classification":
            raise ValueError("zero_head is for classification: a regression output layer has no per-task class labels to forget")
        self.model = make_vmap_safe(model)
        self.problem = problem
        self.vectorize = vectorize
        self.transductive = transductive
        self.zero_head = zero_head
        self._head = last_linear(self.model) if zero_head else None
        self.reset_head()
        self.loss_fn = task_loss(problem)
        self.iteration = 0  # meta-iterations done (kept in checkpoints; schedules read it)
        self.total_iterations = 0  # set by meta_train, for annealed schedules
        self.meta_optimizer: torch.optim.Optimizer | None = None

    # -- what subclasses implement -------------------------------------------------
    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        """One meta-iteration on ``tasks``; returns float metrics (e.g. ``loss``, ``accuracy`` on the queries)."""
        raise NotImplementedError

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        """Fast weights for every task of ``support = (x, y)`` (leading task dim), stacked per task, detached."""
        raise NotImplementedError

    def prepare(self, source: TaskSource) -> None:
        """Set up what depends on the meta-training tasks (e.g. a head over their classes) before the first meta-step.

        :meth:`meta_train` calls it; code that calls :meth:`meta_step` itself calls it once first. No-op by default.
        """

    @classmethod
    def recorded_hparams(cls, stored: Mapping[str, Any], *, problem: str) -> dict[str, Any]:
        """A checkpoint's recorded hyperparameters (``problem`` left out) as this version's ``__init__`` takes them.

        Older versions also recorded the :attr:`inapplicable_hparams`, always at their default; they are dropped.
        """
        return {k: v for k, v in stored.items() if k != "problem" and k not in cls.inapplicable_hparams}

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        """The published hyperparameters for this setting (overrides of ``__init__``'s defaults)."""
        return {}

    # -- shared machinery ----------------------------------------------------------
    def train_step(self, tasks: TaskBatch) -> dict[str, float]:
        """One meta-iteration as training runs it: :meth:`meta_step`, then the zeroing trick if on, then the count.

        Raises :class:`~lazyapps.errors.DivergedError` when the meta-loss is not finite: the step has then
        filled the parameters with inf/nan, and training on would only hide where it went wrong.
        """
        from lazyapps import distributed

        tasks.check(self.problem)
        self.train()
        metrics = self.meta_step(tasks)
        self.reset_head()
        self.iteration += 1
        if not distributed.is_distributed():  # under torchrun meta_train checks the loss averaged over ranks
            self.check_finite(metrics)
        return metrics

    def check_finite(self, metrics: Mapping[str, float]) -> None:
        """Raise :class:`~lazyapps.errors.DivergedError` if the step just taken diverged.

        Judged by the meta-loss where the learner reports one, else (Reptile and lazy Reptile report a
        distance and a step size) by whether the meta-parameters are still finite.
        """
        loss = metrics.get("loss")
        if loss is not None:
            if math.isfinite(loss):
                return
            what = f"the meta-loss is {loss}"
        else:
            if bool(torch.stack([p.isfinite().all() for p in self.parameters()]).all()):
                return
            what = "the meta-parameters are no longer finite"
        steps = [n for n in ("meta_lr", "meta_step_size", "inner_lr", "lr_init") if n in self.hparam_names()]
        hint = "smaller step sizes (" + ", ".join(f"--hp {n}=..." for n in steps) + ")"
        if hasattr(self, "grad_clip"):
            hint += " or a bound on the meta-gradient's norm (--hp grad_clip=...)"
        raise DivergedError(f"{self.name} meta-training diverged at iteration {self.iteration}: {what}, "
                            f"so the parameters are no longer usable; try {hint}")

    def reset_head(self) -> None:
        """Set the output layer to zero (``zero_head``; see the class docstring). No-op when the trick is off."""
        if self._head is not None:
            with torch.no_grad():
                for p in self.model.get_submodule(self._head).parameters():
                    p.zero_()

    @property
    def theta(self) -> Params:
        """The model's parameters (the meta-parameters θ) by name; live tensors, not copies."""
        return params_of(self.model)

    @property
    def buffers(self) -> Params:
        return buffers_of(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating type of the model's parameters; tasks are cast to it (a float64 model gets float64 tasks)."""
        return next(self.model.parameters()).dtype

    def hparams(self) -> dict[str, Any]:
        """The keyword hyperparameters of ``__init__`` with their current values (JSON-able)."""
        out: dict[str, Any] = {}
        for name in type(self)._declared_hparams():
            if hasattr(self, name):
                value = getattr(self, name)
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def _declared_hparams(cls) -> dict[str, tuple[Any, type]]:
        """Name -> (declared type, declaring class) of every keyword hyperparameter (the most derived class's)."""
        out: dict[str, tuple[Any, type]] = {}
        for klass in cls.__mro__:
            if klass is nn.Module or not issubclass(klass, Learner):
                continue
            try:
                hints = typing.get_type_hints(klass.__init__)
            except (NameError, TypeError):  # e.g. a user's learner annotated with a type local to a function
                hints = {}
            for name, param in inspect.signature(klass.__init__).parameters.items():
                if param.kind is inspect.Parameter.KEYWORD_ONLY and name not in out and name not in cls.inapplicable_hparams:
                    out[name] = (hints.get(name, Any), klass)
        return out

    @classmethod
    def hparam_types(cls) -> dict[str, Any]:
        """Name -> the type ``__init__`` declares, for every keyword hyperparameter (``Any`` where it cannot be read)."""
        return {name: hint for name, (hint, _) in cls._declared_hparams().items()}

    @classmethod
    def check_hparams(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` as the types ``__init__`` declares, range-checked; :class:`ValueError` names the first that is not.

        A command line hands over what it parsed (``"false"``, ``3.0`` for a count, a list for a tuple) and Python
        code numpy scalars or 0-d tensors; this makes ``first_order="False"`` an error or ``False``, never a truthy
        string. For the hyperparameters of this package's learners, numbers must also be finite and >= 0 (the names
        in :data:`POSITIVE_HPARAMS` > 0) and counts >= 1 (``eval_inner_steps`` >= 0); a user's own learner gets the
        type conversion only.
        """
        declared = cls._declared_hparams()
        out = {}
        for k, v in values.items():
            if k not in declared:
                out[k] = v
                continue
            hint, klass = declared[k]
            out[k] = _coerce_hparam(k, v, hint, ranges=klass.__module__.split(".")[0] == "fewshot")
        return out

    @classmethod
    def hparam_names(cls) -> set[str]:
        """The keyword hyperparameters of ``__init__`` (this class's and its bases')."""
        return set(cls._declared_hparams())

    def apply_meta_gradient(self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor] | None = None) -> None:
        """Write ``grads`` (by name) into ``.grad`` of ``params`` (default: the model's) and step the meta-optimiser."""
        params = self.theta if params is None else params
        assert self.meta_optimizer is not None, "this learner has no meta-optimizer"
        self.meta_optimizer.zero_grad(set_to_none=True)
        for name, g in grads.items():
            params[name].grad = g.detach().to(params[name].dtype)
        self.meta_optimizer.step()

    def backprop_meta_step(self, adapt_one: Callable[..., Params], tasks: TaskBatch, *, grad_clip: float | None = None) -> dict[str, float]:
        """One meta-step by backpropagating the mean query loss through ``adapt_one`` (support tensors -> fast params).

        For learners whose inner loop is itself meta-learned (meta-LSTM, TURTLE): the graph through the
        adaptation reaches both θ and the update rule's parameters; ``grad_clip`` bounds the global norm of the
        meta-gradient of the whole meta-batch (under torchrun: of the gradient averaged over ranks).
        """
        from lazyapps import distributed

        model, buffers, loss_fn = self.model, self.buffers, self.loss_fn
        n_support = len(tasks.support)

        def per_task(*task: Tensor) -> tuple[Tensor, Tensor]:
            fast = adapt_one(*task[:n_support])
            out = forward(model, fast, buffers, *task[n_support:-1])
            return loss_fn(out, task[-1]), out

        self.meta_optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            task_losses, outputs = map_tasks(per_task, *tasks.support, *tasks.query, vectorize=self.vectorize)
            loss = task_losses.mean()
            loss.backward()
        if grad_clip is not None:
            # Under torchrun the bound applies to the whole meta-batch's gradient, as in one process: average it
            # over ranks now (the meta-optimiser's step then does not average again), then clip.
            distributed.sync_gradients(self.meta_optimizer)
            nn.utils.clip_grad_norm_(self.parameters(), grad_clip)
        self.meta_optimizer.step()
        score = task_scores(self.problem, outputs.detach(), tasks.query_y).mean()
        return {"loss": float(loss.detach()), metric_name(self.problem): float(score)}

    def predict(self, params: Params, support_x: Tensor, query_x: Tensor) -> Tensor:
        """Outputs ``(T, Q, ...)`` of the per-task ``params`` (stacked) on ``query_x``.

        Transductive (or a model whose BatchNorm, if any, uses running statistics:
        see :func:`uses_batch_statistics`): one forward pass of each task's query
        set. Non-transductive: each query example is run in a batch with the
        task's support set and only its own output is kept.
        """
        buffers = self.buffers
        model = self.model
        if self.transductive or not uses_batch_statistics(model):  # (running statistics: the same outputs, one pass)
            def run(p: Params, q: Tensor) -> Tensor:
                return forward(model, p, buffers, q)
            return map_tasks(run, params, query_x, vectorize=self.vectorize)

        def run_one(p: Params, s: Tensor, q: Tensor) -> Tensor:
            def one(example: Tensor) -> Tensor:
                return forward(model, p, buffers, torch.cat([s, example.unsqueeze(0)]))[-1]
            return map_tasks(one, q, vectorize=self.vectorize)

        return map_tasks(run_one, params, support_x, query_x, vectorize=self.vectorize)

    def evaluate(self, tasks: TaskBatch | Iterable[TaskBatch]) -> Evaluation:
        """Adapt on each task's support set and score its query set: mean ± 95% CI over tasks.

        Under torchrun the batches are split across ranks and the scores gathered in order (every rank must call
        this); each batch is scored as one process scores it, so the result is the same.
        """
        from lazyapps import distributed

        if not isinstance(tasks, TaskBatch) and callable(getattr(tasks, "sample", None)):
            # A task source (EpisodeSampler iterates forever): list() would never return.
            raise TypeError(f"evaluate takes a TaskBatch or a list of them, not a task source ({type(tasks).__name__}), "
                            "which draws tasks without end; pass source.fixed_tasks(num_tasks, seed=...)")
        batches = [tasks] if isinstance(tasks, TaskBatch) else list(tasks)
        if not batches:
            raise ValueError("evaluate needs at least one task batch")
        for batch in batches:
            batch.check(self.problem)
        was_training = self.training
        self.eval()
        values = []
        try:
            for batch in distributed.shard(batches):
                batch = batch.to(self.device, self.dtype)
                fast = self.adapt(batch.support)
                with torch.no_grad():
                    out = self.predict(fast, batch.support_x, batch.query_x)
                    values.append(task_scores(self.problem, out, batch.query_y).cpu())
        finally:
            self.train(was_training)
        allv = torch.cat([v for part in distributed.all_gather_object(values) for v in part])
        mean, ci = confidence_interval(allv)
        batch_stats = uses_batch_statistics(self.model)
        batchnorm = "batch" if batch_stats else "running" if has_batchnorm(self.model) else None
        return Evaluation(metric_name(self.problem), mean, ci, allv.numel(), self.transductive if batch_stats else None,
                          allv.tolist(), batchnorm=batchnorm)

    def meta_train(
        self,
        source: TaskSource,
        *,
        iterations: int,
        meta_batch: int,
        callback: Callable[[int, dict[str, float]], None] | None = None,
        progress: bool = False,
    ) -> list[dict[str, float]]:
        """Meta-train until :attr:`iteration` reaches ``iterations`` (so a resumed learner continues).

        Each step draws ``meta_batch`` tasks from ``source`` and calls
        :meth:`meta_step`; ``callback(iteration, metrics)`` runs after each step
        (logging, periodic validation, checkpoints). Returns the metrics per step.
        """
        from lazyapps import distributed
        from lazyapps.progress import progress as bar

        for name, value, least in (("iterations", iterations, 0), ("meta_batch", meta_batch, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
        source_problem = getattr(source, "problem", self.problem)
        if source_problem != self.problem:
            raise ValueError(f"the task source poses {source_problem} tasks, but this learner was built for "
                             f"{self.problem}; build it with problem={source_problem!r}")
        self.total_iterations = iterations
        history = []
        steps = range(self.iteration, iterations)
        # Under torchrun every rank draws the same meta-batch (the source has its own seeded generator) and
        # meta-learns on its share of the tasks; the meta-optimiser's step first averages the meta-gradients over
        # ranks weighted by task count: the mean over the whole meta-batch, as in one process.
        share, local = distributed.shard(meta_batch), distributed.local_count(meta_batch, what="--meta-batch")
        self.prepare(source)  # before the broadcast and the optimiser hook: it may add parameters
        distributed.broadcast_module(self)
        sync = distributed.sync_optimizer(self.meta_optimizer, weight=local) if self.meta_optimizer is not None else None
        try:
            for _ in (bar(steps, desc=f"meta-train {self.name}") if progress else steps):
                tasks = source.sample(meta_batch).select(share).to(self.device, self.dtype)
                metrics = distributed.mean_metrics(self.train_step(tasks), weight=local)
                self.check_finite(metrics)  # (the same on every rank: a rank's nan makes the mean nan)
                history.append(metrics)
                if callback is not None:
                    callback(self.iteration, metrics)
        finally:
            if sync is not None:
                sync.remove()
        return history

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume: learner state dict, meta-optimiser state, iteration."""
        return {
            "learner": self.state_dict(),
            "optimizer": self.meta_optimizer.state_dict() if self.meta_optimizer is not None else {},
            "iteration": self.iteration,
        }

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state["learner"])
        if self.meta_optimizer is not None and state.get("optimizer"):
            self.meta_optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state.get("iteration", 0))


def last_linear(model: nn.Module) -> str:
    """Name of the model's last ``nn.Linear`` (its output layer in every classification architecture of the zoo)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise LazyAppsError("this model has no nn.Linear layer, but finetune and zero_head act on the output layer, which must be one")
    return names[-1]


#: Hyperparameters that must be > 0 (step sizes, bounds); every other number must be >= 0.
POSITIVE_HPARAMS = frozenset({"inner_lr", "meta_lr", "meta_step_size", "grad_clip", "preprocess_p", "lam", "weight_step"})
#: Counts that may be 0 (no adaptation at test); every other count must be >= 1.
ZERO_COUNTS = frozenset({"eval_inner_steps"})
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce_hparam(name: str, value: Any, hint: Any, *, ranges: bool = True) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1 and value.dim() == 0:
        value = value.item()  # a 0-d tensor as the Python number it holds
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        return _coerce_hparam(name, value, next(a for a in args if a is not type(None)), ranges=ranges)
    if hint is bool:
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)  # (--hp first_order=0 reaches here as the number 0)
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return bool(value)
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, numbers.Integral)
                                           or isinstance(value, numbers.Real) and float(value).is_integer()):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        least = 0 if name in ZERO_COUNTS else 1
        if ranges and int(value) < least:
            raise ValueError(f"{name} must be >= {least}, got {int(value)}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number, got {value!r}")
        value = float(value)
        positive = name in POSITIVE_HPARAMS
        if not math.isfinite(value) or (ranges and (value < 0 or (positive and value == 0))):
            raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} finite number, got {value}")
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ValueError(f"{name} must be a comma-separated list of values, got {value!r}")
        value = list(value)  # (read once: a generator, an array, a tensor)
        if not value:
            raise ValueError(f"{name} must be a comma-separated list of values, got an empty one")
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            raise ValueError(f"{name} must be {len(kinds)} values, got {len(value)}")
        return tuple(_coerce_hparam(name, v, kind, ranges=ranges) for v, kind in zip(value, kinds))
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {value!r}")
    return value


#: algorithm name -> learner class (filled by :func:`register`).
LEARNERS: dict[str, type[Learner]] = {}


def register(name: str) -> Callable[[type[Learner]], type[Learner]]:
    """Class decorator: make a learner available as ``--algo name``."""

    def deco(cls: type[Learner]) -> type[Learner]:
        if name in LEARNERS and LEARNERS[name] is not cls:
            raise ValueError(f"learner name {name!r} is already registered by {LEARNERS[name].__qualname__}")
        cls.name = name
        LEARNERS[name] = cls
        return cls

    return deco


def _load_all() -> None:
    import fewshot.learners  # noqa: F401  (registers every learner)


def available() -> list[str]:
    """Names of the registered learners."""
    _load_all()
    return sorted(LEARNERS)


def get_learner(name: str) -> type[Learner]:
    """The learner class registered as ``name``; :class:`UnknownNameError` lists the valid names."""
    _load_all()
    if name not in LEARNERS:
        raise UnknownNameError("algorithm", name, LEARNERS)
    return LEARNERS[name]


def create_learner(name: str, model: nn.Module, **hparams: Any) -> Learner:
    """An instance of learner ``name`` around ``model``."""
    return get_learner(name)(model, **hparams)
