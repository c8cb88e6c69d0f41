"""A short real meta-training run: MAML on real Omniglot must beat its untrained start."""
from __future__ import annotations

import torch

import models_zoo
from fewshot import create_learner
from fewshot.datasets import task_source


def test_maml_on_omniglot_improves_query_accuracy_within_a_few_dozen_iterations(data_root, session_cache) -> None:
    common = {"ways": 5, "shots": 1, "queries": 2, "root": data_root, "cache_dir": session_cache}
    train = task_source("omniglot", split="train", seed=0, **common)
    test = task_source("omniglot", split="test", **common).fixed_tasks(20, seed=0)
    torch.manual_seed(0)
    model = models_zoo.create("conv4", num_classes=5, in_channels=1, image_size=28, hidden=16)  # conv4, slimmed for speed
    # Finn et al.'s 5-way settings (inner lr 0.4, 1 step, 3 at test) with a faster meta lr for a short run.
    learner = create_learner("maml", model, meta_lr=3e-3)
    before = learner.evaluate(test)
    history = learner.meta_train(train, iterations=20, meta_batch=4)
    after = learner.evaluate(test)
    assert learner.iteration == 20 and len(history) == 20
    assert after.mean > 30.0 and after.mean > before.mean + 8.0, (before, after)
