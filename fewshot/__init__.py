"""Few-shot learning: the MAML family, the lazy learners, iMAML, Meta-SGD, the meta-learner LSTM and TURTLE.

One API for every algorithm (:class:`fewshot.base.Learner`)::

    import models_zoo, fewshot
    from fewshot.datasets import task_source

    train = task_source("omniglot", split="train", ways=5, shots=1, queries=15)
    test = task_source("omniglot", split="test", ways=5, shots=1, queries=15)
    model = models_zoo.create("conv4", num_classes=5, in_channels=1, image_size=28)
    learner = fewshot.LazyMAML(model, inner_steps=15, gammas=(0.75, 0.8, 0.85, 0.9, 0.95))
    learner.meta_train(train, iterations=1000, meta_batch=32)
    print(learner.evaluate(test.fixed_tasks(1000, seed=0)))   # accuracy mean ± 95% CI

Learner classes are also reachable by algorithm name: ``fewshot.create_learner("maml", model)``.
"""
from __future__ import annotations

from typing import Any

from .base import LEARNERS, Evaluation, Learner, available, create_learner, get_learner, register
from .learners.baselines import Finetune, Scratch
from .learners.lazy_maml import LazyMAML
from .learners.maml import FOMAML, MAML
from .learners.reptile import LazyReptile, Reptile
from .tasks import EpisodeSampler, TaskBatch

__all__ = ["LEARNERS", "Evaluation", "Learner", "available", "create_learner", "get_learner", "register", "EpisodeSampler",
           "TaskBatch", "MAML", "FOMAML", "LazyMAML", "Reptile", "LazyReptile", "Scratch", "Finetune"]


def __getattr__(name: str) -> Any:
    # The other learners (IMAML, MetaSGD, MetaLSTM, Turtle, ...) by class name, from the registry.
    for cls in LEARNERS.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
