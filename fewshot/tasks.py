"""Few-shot tasks: batches of N-way K-shot episodes and the samplers that draw them.

A task (episode) has a *support* set (K labelled examples of each of N classes)
to adapt on and a *query* set (Q more examples of the same classes) to score
the adapted model on (Vinyals et al. 2016; Finn et al. 2017). Tasks travel in
batches, :class:`TaskBatch`, stacked on a leading task dim so a meta-batch can
be adapted with one ``torch.func.vmap``.

Class shuffling: by default every task assigns the labels 0..N-1 to its N
classes in a fresh random order, so no class keeps a label across tasks. With
``shuffle_classes=False`` the labels follow one global class order (the N
drawn classes are labelled by their rank in the dataset's class order), the
non-mutually-exclusive "memorization" setting of Yin et al., "Meta-Learning
without Memorization" (ICLR 2020), used in the lazy paper's experiments.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from lazyapps.errors import LazyAppsError


class TooFewExamplesError(LazyAppsError):
    """A class of ``name`` has fewer examples than ``shots + queries``; ``smallest`` is the smallest class's size.

    The message names the sampler's own arguments. A command names its own options instead (``--train-shots``
    for meta-training tasks, only ``--queries`` where the checkpoint fixes the shots): :meth:`explain`.
    """

    def __init__(self, *, name: str, shots: int, queries: int, smallest: int) -> None:
        self.name, self.shots, self.queries, self.smallest = name, shots, queries, smallest
        super().__init__(self.explain("shots", "lower shots or queries"))

    def explain(self, what: str, fix: str, *, shots: int | None = None) -> str:
        """The sum that does not fit, with ``what`` naming the shots (and ``shots`` their count, default the
        sampler's) and ``fix`` the remedy, e.g. ``explain("train-shots", "lower --train-shots or --queries")``."""
        shots = self.shots if shots is None else shots
        return (f"{what} + queries = {shots} + {self.queries} = {shots + self.queries} examples per class are needed, "
                f"but the smallest class of {self.name} has {self.smallest}; {fix}")


class TooFewClassesError(LazyAppsError):
    """``name`` has fewer classes than ``ways`` (the message names ``--ways``, which ``fewshot train`` takes)."""

    def __init__(self, *, name: str, ways: int, classes: int) -> None:
        self.name, self.ways, self.classes = name, ways, classes
        super().__init__(f"--ways {ways} is larger than the {classes} classes {name} has; use --ways {classes} or fewer")


class TaskSource(Protocol):
    """What a learner trains and evaluates on: :class:`EpisodeSampler` or :class:`fewshot.datasets.SineTasks`."""

    problem: str  # "classification" or "regression"

    def sample(self, num_tasks: int, *, generator: torch.Generator | None = None) -> TaskBatch: ...

    def fixed_tasks(self, num_tasks: int, *, seed: int, batch_size: int = 25) -> list[TaskBatch]: ...


def fixed_task_batches(source: TaskSource, num_tasks: int, *, seed: int, batch_size: int = 25) -> list[TaskBatch]:
    """A fixed, seeded set of ``num_tasks`` evaluation tasks of ``source`` (same ``seed`` → same tasks), in batches.

    Draws from a generator of its own, so it neither depends on nor advances the
    training draw.
    """
    gen = torch.Generator().manual_seed(seed)
    out, left = [], num_tasks
    while left > 0:
        n = min(batch_size, left)
        out.append(source.sample(n, generator=gen))
        left -= n
    return out


@dataclass(frozen=True)
class TaskBatch:
    """``T`` tasks stacked on dim 0.

    Classification: ``support_x`` is ``(T, N·K, C, H, W)`` float images,
    ``support_y`` ``(T, N·K)`` int64 labels in 0..N-1; ``query_x``/``query_y``
    the same with N·Q rows. Regression (sine): ``(T, K, 1)`` float inputs and
    targets. Rows are ordered class by class (all K shots of label 0 first).
    ``classes`` (optional, ``(T, N)`` int64) names the sampler's global class
    index (0..num_classes-1) behind each task label, for learners that
    pre-train on global labels (the ``finetune`` baseline); ``None`` when the
    tasks have no global classes (sine, hand-made batches). ``span`` is
    ``(first, total)`` when these are tasks ``first, first + 1, ...`` of a
    batch of ``total`` (what :meth:`select` cuts, e.g. a rank's share of the
    meta-batch under torchrun), so random draws per task can be made for the
    whole batch, as one process makes them; ``None``: the whole batch.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None
    span: tuple[int, int] | None = None

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of the support sets (a batch in :mod:`lazyapps.functional`'s convention)."""
        return self.support_x, self.support_y

    @property
    def query(self) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of the query sets."""
        return self.query_x, self.query_y

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.support_x.device

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> TaskBatch:
        """On ``device``; the floating tensors (inputs, regression targets) also in ``dtype`` when given."""
        def move(t: Tensor) -> Tensor:
            return t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)

        return TaskBatch(*(move(t) for t in (self.support_x, self.support_y, self.query_x, self.query_y)),
                         classes=None if self.classes is None else self.classes.to(device), span=self.span)

    def check(self, problem: str) -> None:
        """:class:`ValueError` naming the part of these tasks that a learner cannot use.

        Every part must hold the same number (>= 1) of tasks, every task >= 1 support and query row with
        one target per row; for classification the labels are class numbers 0..N-1 of the task and the
        query labels among the support's (a query label no support row has could never be predicted).
        """
        parts = {"support_x": self.support_x, "support_y": self.support_y, "query_x": self.query_x, "query_y": self.query_y}
        counts = {name: int(t.shape[0]) if t.dim() else 0 for name, t in parts.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"the parts of a task batch hold different numbers of tasks: {counts}")
        if self.num_tasks < 1:
            raise ValueError("the task batch holds no tasks")
        for side in ("support", "query"):
            x, y = parts[f"{side}_x"], parts[f"{side}_y"]
            if x.dim() < 2 or y.dim() < 2 or x.shape[1] != y.shape[1]:
                raise ValueError(f"{side}_x {tuple(x.shape)} and {side}_y {tuple(y.shape)} must be (tasks, rows, ...) "
                                 f"with one target per row")
            if x.shape[1] < 1:
                raise ValueError(f"the {side} sets are empty")
        if problem == "classification":
            for name in ("support_y", "query_y"):
                if parts[name].is_floating_point():
                    raise ValueError(f"{name} must hold integer class labels, got {parts[name].dtype}")
            lowest = int(torch.minimum(self.support_y.min(), self.query_y.min()))
            if lowest < 0:
                raise ValueError(f"class labels must be >= 0, got {lowest}")
            classes = int(torch.maximum(self.support_y.max(), self.query_y.max())) + 1
            support_y, query_y = self.support_y.reshape(self.num_tasks, -1), self.query_y.reshape(self.num_tasks, -1)
            present = torch.zeros(self.num_tasks, classes, dtype=torch.bool, device=support_y.device)
            present.scatter_(1, support_y, True)  # per task, the labels its support set has
            unseen = ~present.gather(1, query_y)
            if bool(unseen.any()):
                task, row = (int(i) for i in unseen.nonzero()[0])
                labels = present[task].nonzero().flatten().tolist()
                raise ValueError(f"query label {int(query_y[task, row])} of task {task} is not among its support labels "
                                 f"{labels}; an N-way task labels its classes 0..N-1 in both sets")

    def select(self, index: int | slice) -> TaskBatch:
        """The tasks at ``index`` (an int keeps a task dim of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        start, _, step = index.indices(self.num_tasks)
        first, total = self.span or (0, self.num_tasks)
        return TaskBatch(self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index],
                         classes=None if self.classes is None else self.classes[index],
                         span=(first + start, total) if step == 1 else None)

    def chunks(self, size: int) -> Iterator[TaskBatch]:
        """Consecutive batches of at most ``size`` tasks."""
        for start in range(0, self.num_tasks, size):
            yield self.select(slice(start, start + size))

    @staticmethod
    def cat(batches: Sequence[TaskBatch]) -> TaskBatch:
        classes = [b.classes for b in batches]
        return TaskBatch(*(torch.cat([getattr(b, f) for b in batches]) for f in ("support_x", "support_y", "query_x", "query_y")),
                         classes=None if any(c is None for c in classes) else torch.cat(classes))


class EpisodeSampler:
    """Draws N-way K-shot tasks with Q queries per class from a labelled image set.

    ``images`` is ``(M, C, H, W)`` (uint8 in 0..255 or float); ``labels`` is
    ``(M,)`` with any integer class ids, or, with ``index``, one label per
    entry of ``index`` (entry ``i`` is image ``images[index[i]]``, so one
    image can serve several classes without copies). Each task picks ``ways`` distinct
    classes uniformly, then ``shots + queries`` distinct examples of each
    (without replacement), split into support and query. ``transform`` maps a
    class id and its image batch to new images (Omniglot's rotations are extra
    classes whose images are rotated on the fly, see
    :mod:`fewshot.datasets`); by default uint8 images become floats in [0, 1].

    Sampling uses its own ``torch.Generator`` (``seed``), so a sampler is
    reproducible and independent of the global RNG. Raises
    :class:`LazyAppsError` when the data cannot supply such tasks.
    """

    problem = "classification"

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        ways: int,
        shots: int,
        queries: int,
        shuffle_classes: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        class_transform: Callable[[int, Tensor], Tensor] | None = None,
        index: Tensor | None = None,
        name: str = "dataset",
    ) -> None:
        if ways < 1 or shots < 1 or queries < 1:
            raise LazyAppsError(f"ways, shots and queries must be >= 1, got ways={ways} shots={shots} queries={queries}")
        labels = torch.as_tensor(labels).long().cpu()
        self.index = None if index is None else torch.as_tensor(index).long().cpu()
        if len(labels) != (len(images) if self.index is None else len(self.index)):
            raise ValueError("labels need one entry per image (or per entry of index)")
        self.images, self.labels = images, labels
        self.class_ids, inverse = torch.unique(labels, sorted=True, return_inverse=True)
        counts = torch.bincount(inverse, minlength=len(self.class_ids))
        if ways > len(self.class_ids):
            raise TooFewClassesError(name=name, ways=ways, classes=len(self.class_ids))
        if shots + queries > int(counts.min()):
            raise TooFewExamplesError(name=name, shots=shots, queries=queries, smallest=int(counts.min()))
        order = torch.argsort(inverse, stable=True)
        self._members = list(torch.split(order, counts.tolist()))  # positions of each class's examples
        self.ways, self.shots, self.queries = ways, shots, queries
        self.shuffle_classes = shuffle_classes
        self.device = torch.device(device)
        self.class_transform = class_transform
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def _images(self, cls: int, positions: Tensor) -> Tensor:
        x = self.images[positions if self.index is None else self.index[positions]]
        if self.class_transform is not None:
            return self.class_transform(int(self.class_ids[cls]), x)
        return x.float().div(255) if x.dtype == torch.uint8 else x.float()

    def sample_classes(self, generator: torch.Generator) -> Tensor:
        """``ways`` distinct class indices, in label order (label i goes to entry i)."""
        chosen = torch.randperm(self.num_classes, generator=generator)[: self.ways]
        # Shuffled: the random draw order is the label order. Global order: labels follow the class order.
        return chosen if self.shuffle_classes else chosen.sort().values

    def sample(self, num_tasks: int, *, generator: torch.Generator | None = None) -> TaskBatch:
        """``num_tasks`` tasks as one :class:`TaskBatch` on the sampler's device."""
        gen = self.generator if generator is None else generator
        k, q = self.shots, self.queries
        sx, sy, qx, qy, drawn = [], [], [], [], []
        for _ in range(num_tasks):
            xs_s, xs_q = [], []
            chosen = self.sample_classes(gen)
            drawn.append(chosen)
            for cls in chosen.tolist():
                members = self._members[cls]
                pick = members[torch.randperm(len(members), generator=gen)[: k + q]]
                x = self._images(cls, pick)
                xs_s.append(x[:k])
                xs_q.append(x[k:])
            sx.append(torch.cat(xs_s))
            qx.append(torch.cat(xs_q))
            labels = torch.arange(self.ways)
            sy.append(labels.repeat_interleave(k))
            qy.append(labels.repeat_interleave(q))
        return TaskBatch(torch.stack(sx), torch.stack(sy), torch.stack(qx), torch.stack(qy), classes=torch.stack(drawn)).to(self.device)

    def fixed_tasks(self, num_tasks: int, *, seed: int, batch_size: int = 25) -> list[TaskBatch]:
        """A fixed, seeded set of evaluation tasks (:func:`fixed_task_batches`)."""
        return fixed_task_batches(self, num_tasks, seed=seed, batch_size=batch_size)

    def __iter__(self) -> Iterator[TaskBatch]:
        while True:
            yield self.sample(1)
