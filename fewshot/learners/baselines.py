"""Baselines without meta-learning: ``scratch`` and ``finetune``.

``scratch`` adapts to a test task by plain SGD on its support set from the
untrained, randomly initialised model and never meta-trains. ``finetune`` is
the standard transfer baseline (Chen et al. 2019's "Baseline"): an ordinary
classifier pre-trained over all meta-training classes, whose head is replaced
by a fresh N-way head trained on each test task's support set.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lazyapps.errors import LazyAppsError
from lazyapps.functional import Params, adapt_tasks, forward, map_tasks

from ..base import Learner, last_linear, metric_name, register, task_scores
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
    """Transfer baseline: pre-train an ordinary classifier over all meta-training classes, fine-tune a fresh N-way head.

    The "Baseline" of Chen, Liu, Kira, Wang, Huang, "A Closer Look at Few-shot
    Classification", ICLR 2019 (also the "pretrained" baseline of Finn et al.
    2017). Pre-training (each :meth:`meta_step`): the network with its head
    swapped for a head over the ``pretrain_classes`` global meta-training
    classes (4,800 for Omniglot with rotations), Adam (``meta_lr``) on the
    cross-entropy of the meta-batch's images (support + query) under their
    *global* labels (:attr:`~fewshot.tasks.TaskBatch.classes`); the episodes
    serve only as class-balanced minibatches, each task's images in their own
    forward pass so BatchNorm sees task-sized batches as at test time.
    ``pretrain_classes`` is read from the task source by :meth:`prepare`.

    Test time (:meth:`adapt`): the global head is dropped and a fresh N-way
    head, initialised to zero (deterministic; a linear softmax head needs no
    random init since each class's gradient differs), is trained on the
    support set for ``eval_inner_steps`` gradient steps of ``inner_lr``. With
    ``freeze_body`` (Chen et al.'s Baseline; the default for classification)
    only the head learns, on features computed once; ``freeze_body=False``
    fine-tunes the whole network (Finn et al.).

    Regression (sine) has no classes: the network is pre-trained on all tasks
    jointly (Finn et al.'s sine "pretrained" baseline) and fine-tuned whole
    (``freeze_body`` is False there; True is refused).
    The head is the model's last ``nn.Linear`` (``head`` in conv4); its weight
    and bias are swapped functionally, so no module is copied or changed.
    """

    inapplicable_hparams: ClassVar[frozenset[str]] = frozenset({"zero_head"})

    def __init__(self, model: nn.Module, *, inner_lr: float = 0.1, eval_inner_steps: int = 100, meta_lr: float = 1e-3,
                 pretrain_classes: int | None = None, freeze_body: bool | None = None, **base: Any) -> None:
        if base.get("zero_head"):
            raise ValueError("finetune starts every test head at zero already and trains a head of its own; zero_head does not apply")
        super().__init__(model, inner_lr=inner_lr, eval_inner_steps=eval_inner_steps, **base)
        if freeze_body and self.problem != "classification":
            raise ValueError("freeze_body is for classification (a fresh N-way head on a frozen body); the regression "
                             "baseline fine-tunes the whole pre-trained network (Finn et al. 2017): leave freeze_body out")
        self.meta_lr = meta_lr
        self.freeze_body = self.problem == "classification" if freeze_body is None else freeze_body
        self.meta_optimizer = torch.optim.Adam(self.model.parameters(), lr=meta_lr)
        self.pretrain_classes: int | None = None
        self.pretrain_head: nn.Linear | None = None
        self.head_name = last_linear(self.model) if self.problem == "classification" else None
        if pretrain_classes is not None and self.head_name is not None:
            self._build_head(int(pretrain_classes))

    @classmethod
    def recorded_hparams(cls, stored: Mapping[str, Any], *, problem: str) -> dict[str, Any]:
        out = super().recorded_hparams(stored, problem=problem)
        if problem != "classification" and out.get("freeze_body") is True:
            del out["freeze_body"]  # older versions recorded the default True for sine, which fine-tuned the whole network
        return out

    @classmethod
    def paper_defaults(cls, *, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        # Sine: Finn et al. fine-tune the jointly pre-trained regressor with MAML's inner lr and test-time steps.
        return {"inner_lr": 0.01, "eval_inner_steps": 10} if dataset == "sine" else {}

    def _build_head(self, classes: int) -> None:
        if classes < 2:
            raise ValueError(f"pretrain_classes must be >= 2, got {classes}")
        head = self.model.get_submodule(self.head_name)
        self.pretrain_head = nn.Linear(head.in_features, classes).to(self.device)
        self.pretrain_classes = classes
        # Its own parameter group, added the same way whether built here or on resume, so optimiser states load.
        self.meta_optimizer.add_param_group({"params": list(self.pretrain_head.parameters())})

    def prepare(self, source: Any) -> None:
        if self.head_name is None:
            return
        classes = getattr(source, "num_classes", None)
        if classes is None:
            raise LazyAppsError("finetune pre-trains a classifier over the meta-training classes, but this task source has no classes")
        if self.pretrain_head is None:
            self._build_head(int(classes))
        elif self.pretrain_classes != classes and self.iteration == 0:  # nothing pre-trained: the count was given
            raise LazyAppsError(f"pretrain_classes={self.pretrain_classes} does not match the meta-training tasks' "
                                f"{classes} classes; give pretrain_classes={classes} or leave it out (it is read from the tasks)")
        elif self.pretrain_classes != classes:
            raise LazyAppsError(f"this finetune learner was pre-trained on {self.pretrain_classes} classes, "
                                f"but the meta-training tasks have {classes}; use the dataset it was trained on")

    def _with_head(self, weight: Tensor, bias: Tensor, theta: Params | None = None) -> Params:
        """The model's parameters with the head's weight and bias replaced (so its output has ``len(bias)`` units)."""
        params = dict(self.theta if theta is None else theta)
        params[f"{self.head_name}.weight"], params[f"{self.head_name}.bias"] = weight, bias
        return params

    def meta_step(self, tasks: TaskBatch) -> dict[str, float]:
        x = torch.cat([tasks.support_x, tasks.query_x], 1)
        y = torch.cat([tasks.support_y, tasks.query_y], 1)
        params = self.theta
        if self.head_name is not None:
            if self.pretrain_head is None:
                raise RuntimeError("call prepare(source) before meta_step: the global head is built from the task source's classes")
            if tasks.classes is None:
                raise LazyAppsError("finetune pre-trains on global class labels; these tasks carry none (TaskBatch.classes)")
            y = tasks.classes.gather(1, y)  # task label -> global class
            params = self._with_head(self.pretrain_head.weight, self.pretrain_head.bias)
        buffers, model = self.buffers, self.model

        def task_out(xt: Tensor) -> Tensor:
            return forward(model, params, buffers, xt)

        outputs = map_tasks(task_out, x, vectorize=self.vectorize)
        loss = self.loss_fn(outputs.flatten(0, 1), y.flatten(0, 1))
        self.meta_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.meta_optimizer.step()
        return {"loss": float(loss.detach()), metric_name(self.problem): float(task_scores(self.problem, outputs.detach(), y).mean())}

    def adapt(self, support: tuple[Tensor, Tensor]) -> Params:
        if self.head_name is None:
            return super().adapt(support)
        theta = {k: v.detach() for k, v in self.theta.items()}
        head_w = torch.zeros_like(theta[f"{self.head_name}.weight"])
        head_b = torch.zeros_like(theta[f"{self.head_name}.bias"])
        start = self._with_head(head_w, head_b, theta)
        if not self.freeze_body:
            fast = adapt_tasks(self.model, start, self.buffers, self.loss_fn, support,
                               steps=self.eval_inner_steps, lr=self.inner_lr, vectorize=self.vectorize)
            return {k: v.detach() for k, v in fast.items()}
        x, y = support
        d = head_w.shape[1]
        # The head's input: the network with an identity head (same BatchNorm batch as every later forward of the support set).
        probe = self._with_head(torch.eye(d, device=x.device, dtype=head_w.dtype), torch.zeros(d, device=x.device, dtype=head_b.dtype), theta)
        buffers, model = self.buffers, self.model
        with torch.no_grad():
            feats = map_tasks(lambda xt: forward(model, probe, buffers, xt), x, vectorize=self.vectorize)
        w, b = fit_linear_heads(feats, y, classes=head_w.shape[0], steps=self.eval_inner_steps, lr=self.inner_lr)
        tasks = x.shape[0]
        fast = {k: v.expand(tasks, *v.shape) for k, v in theta.items()}
        fast[f"{self.head_name}.weight"], fast[f"{self.head_name}.bias"] = w, b
        return fast


def fit_linear_heads(features: Tensor, labels: Tensor, *, classes: int, steps: int, lr: float) -> tuple[Tensor, Tensor]:
    """Per-task softmax classifiers ``(T, N, D)``, ``(T, N)`` from zero by ``steps`` full-batch SGD steps.

    ``features`` is ``(T, S, D)``, ``labels`` ``(T, S)``: the engine's inner loop
    (:func:`lazyapps.functional.adapt_tasks`) on a linear layer over the features,
    each task on its own mean cross-entropy, all tasks at once.
    """
    head = nn.Linear(features.shape[-1], classes).to(device=features.device, dtype=features.dtype)
    zero = {k: torch.zeros_like(v) for k, v in head.named_parameters()}
    with torch.enable_grad():
        fitted = adapt_tasks(head, zero, {}, F.cross_entropy, (features, labels), steps=steps, lr=lr)
    return fitted["weight"].detach(), fitted["bias"].detach()
