"""Meta-training: held-out MSE drops (reptile, lazy-reptile); one lazy step equals the update by hand."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attacks.meta_attacker import MetaAttacker
from attacks.meta_training import meta_train, mse, split_task


def _tasks(n_tasks: int = 3, n: int = 96, seed: int = 0):
    """Learnable synthetic gradient sets: each task's map is a task-scaled blur of the image, std-normalised."""
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.ones(1, 1, 3, 3) / 9
    tasks = []
    for t in range(n_tasks):
        x = torch.rand(n, 1, 8, 8, generator=gen)
        g = (1.0 + 0.3 * t) * F.conv2d(x - 0.5, kernel, padding=1) + 0.2 * t * (x - 0.5)
        tasks.append((x, g / g.flatten(1).std(dim=1).view(-1, 1, 1, 1)))
    return tasks


@pytest.mark.parametrize("method", ["reptile", "lazy-reptile"])
def test_meta_training_reduces_held_out_mse(method):
    torch.manual_seed(0)
    net = MetaAttacker(1, (8, 16))
    tasks = _tasks()
    held_out = _tasks(n_tasks=3, n=48, seed=1)  # new images, same task family
    init = {k: v.detach().clone() for k, v in net.named_parameters()}
    result = meta_train(net, tasks, method=method, iterations=25, batch_size=16, eval_every=5,
                        generator=torch.Generator().manual_seed(0))
    before = sum(mse(net, init, *t) for t in held_out) / 3
    after = sum(mse(net, result.params, *t) for t in held_out) / 3
    assert after < 0.8 * before
    assert result.history[-1][1] < result.history[0][1]
    assert all(torch.equal(v, init[k]) for k, v in net.named_parameters())  # the module itself is untouched
    if method == "lazy-reptile":
        assert len(result.gammas) == 25 * 3 and set(result.gammas) <= {0.75, 0.8, 0.85, 0.9, 0.95}


def test_one_lazy_reptile_step_equals_the_update_by_hand():
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=2, n=20)  # split: 18 train / 2 val pairs; batches cover them whole -> deterministic
    steps, lr, beta = 3, 1e-2, 0.4
    result = meta_train(net, tasks, method="lazy-reptile", iterations=1, inner_steps=steps, inner_lr=lr,
                        meta_step=beta, batch_size=64, val_batch=64)
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    leaps = []
    for task in tasks:
        (x, g), (xv, gv) = split_task(task)
        student = copy.deepcopy(net)
        opt = torch.optim.Adam(student.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(student(x), g).backward()
            opt.step()
        phi_k = {k: v.detach() for k, v in student.named_parameters()}
        best = None
        for gamma in (0.75, 0.80, 0.85, 0.90, 0.95):
            cand = {k: gamma * theta[k] + (1 - gamma) * phi_k[k] for k in theta}
            probe = copy.deepcopy(net)
            with torch.no_grad():
                for k, p in probe.named_parameters():
                    p.copy_(cand[k])
                score = F.mse_loss(probe(xv), gv).item()
            if best is None or score < best[0]:
                best = (score, cand)
        leaps.append(best[1])
    expected = {k: theta[k] - beta * sum(theta[k] - phi[k] for phi in leaps) for k in theta}
    for k in theta:
        torch.testing.assert_close(result.params[k], expected[k], atol=1e-5, rtol=1e-5)


def test_unknown_method_and_empty_tasks_are_errors():
    net = MetaAttacker(1, (4,))
    with pytest.raises(ValueError, match="unknown meta-training method"):
        meta_train(net, _tasks(1), method="nope", iterations=1)
    with pytest.raises(ValueError, match="at least one task"):
        meta_train(net, [], iterations=1)
