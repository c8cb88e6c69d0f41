"""Checks every few-shot learner's tests make: it learns sine waves, and it meta-trains on real Omniglot."""
from __future__ import annotations

import math

import torch


def sine_mse_drops(learner, *, iterations: int, meta_batch: int, factor: float) -> None:
    """A short sine-wave meta-training lowers the held-out query MSE below ``factor`` × its starting value."""
    from fewshot.datasets import SineTasks

    held_out = SineTasks(shots=5, queries=20).fixed_tasks(100, seed=7, batch_size=100)
    before = learner.evaluate(held_out).mean
    learner.meta_train(SineTasks(shots=5, queries=10, seed=0), iterations=iterations, meta_batch=meta_batch)
    after = learner.evaluate(held_out).mean
    assert after < factor * before, (before, after)


def meta_trains_on_omniglot(learner, omniglot_tasks) -> None:
    """Two meta-iterations on real Omniglot tasks change the learner and give finite losses and valid accuracies."""
    train, test = omniglot_tasks
    before = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    history = learner.meta_train(train, iterations=2, meta_batch=2)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) and 0 <= h["accuracy"] <= 100 for h in history)
    assert any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())
    result = learner.evaluate(test.fixed_tasks(4, seed=3))
    assert result.metric == "accuracy" and result.tasks == 4 and 0 <= result.mean <= 100
