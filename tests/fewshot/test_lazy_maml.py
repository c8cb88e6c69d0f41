"""Lazy MAML (Algorithm 1 of Jamal et al.) against a slow, obvious re-implementation with plain autograd."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot import LazyMAML, LazyReptile
from fewshot.tasks import TaskBatch


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _tasks(num_tasks: int = 3) -> TaskBatch:
    g = torch.Generator().manual_seed(4)
    labels = lambda n: torch.arange(3).repeat_interleave(n).expand(num_tasks, -1).clone()  # noqa: E731
    return TaskBatch(torch.randn(num_tasks, 6, 12, generator=g, dtype=torch.float64), labels(2),
                     torch.randn(num_tasks, 9, 12, generator=g, dtype=torch.float64), labels(3))


def _reference(model: nn.Module, tasks: TaskBatch, *, steps: int, lr: float, gammas: tuple[float, ...]):
    """Per task: k SGD steps by hand, γ̂ = the grid value with the best query accuracy (first on ties),
    φ = γ̂θ + (1−γ̂)φ_k, and the meta-gradient of the mean query loss, d/dθ = mean_t γ̂_t ∇L_t(φ_t)."""
    theta = [p.detach().clone() for p in model.parameters()]

    def run(params, x):
        w1, b1, w2, b2 = params
        return torch.tanh(x.flatten(1) @ w1.T + b1) @ w2.T + b2

    grads = [torch.zeros_like(p) for p in theta]
    chosen = []
    for t in range(tasks.num_tasks):
        phi = [p.clone() for p in theta]
        for _ in range(steps):
            phi = [p.requires_grad_() for p in phi]
            loss = F.cross_entropy(run(phi, tasks.support_x[t]), tasks.support_y[t])
            phi = [(p - lr * g).detach() for p, g in zip(phi, torch.autograd.grad(loss, phi))]
        accs = []
        for gamma in gammas:
            mix = [gamma * a + (1 - gamma) * b for a, b in zip(theta, phi)]
            accs.append(float((run(mix, tasks.query_x[t]).argmax(-1) == tasks.query_y[t]).double().mean()))
        gamma = gammas[accs.index(max(accs))]
        chosen.append(gamma)
        leap = [(gamma * a + (1 - gamma) * b).requires_grad_() for a, b in zip(theta, phi)]
        loss = F.cross_entropy(run(leap, tasks.query_x[t]), tasks.query_y[t])
        for acc, g in zip(grads, torch.autograd.grad(loss, leap)):
            acc += gamma * g / tasks.num_tasks
    return grads, chosen


@pytest.mark.parametrize("vectorize", [True, False])
def test_meta_gradient_is_the_leap_gradient_of_a_hand_written_student_and_teacher(vectorize: bool) -> None:
    model, tasks = _net(), _tasks()
    gammas = (0.75, 0.8, 0.85, 0.9, 0.95)
    learner = LazyMAML(model, inner_steps=12, inner_lr=0.5, gammas=gammas, vectorize=vectorize)
    _, grads, _, leaps = learner.meta_gradient(tasks)
    ref_grads, ref_gammas = _reference(model, tasks, steps=12, lr=0.5, gammas=gammas)
    assert [leap.gamma for leap in leaps] == ref_gammas
    for (name, g), ref in zip(grads.items(), ref_grads):
        torch.testing.assert_close(g, ref, msg=name)
    assert len(set(ref_gammas)) > 1 or ref_gammas[0] != gammas[0]  # the search actually chose something


def test_meta_step_applies_adam_to_the_meta_gradient_and_adapt_is_the_k_step_student() -> None:
    model, tasks = _net(), _tasks()
    learner = LazyMAML(model, inner_steps=11, inner_lr=0.5, gammas=(0.9,), meta_lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    ref_grads, _ = _reference(model, tasks, steps=11, lr=0.5, gammas=(0.9,))
    metrics = learner.meta_step(tasks)
    assert metrics["gamma"] == 0.9
    for old, new, g in zip(before, model.parameters(), ref_grads):
        # Adam's first step moves every coordinate by lr·sign(g) (where g is not ~0).
        big = g.abs() > 1e-6
        torch.testing.assert_close((new.detach() - old)[big], -0.01 * torch.sign(g)[big], atol=1e-6, rtol=1e-4)
    fast = learner.adapt(tasks.support)
    assert {k: v.shape[0] for k, v in fast.items()} == {k: 3 for k in fast}
    # adapt = the student's plain k steps (no leap at meta-test): compare task 0 with a hand loop.
    theta = [p.detach().clone() for p in model.parameters()]
    phi = theta
    for _ in range(11):
        phi = [p.requires_grad_() for p in phi]
        out = torch.tanh(tasks.support_x[0] @ phi[0].T + phi[1]) @ phi[2].T + phi[3]
        phi = [(p - 0.5 * g).detach() for p, g in zip(phi, torch.autograd.grad(F.cross_entropy(out, tasks.support_y[0]), phi))]
    for v, ref in zip(fast.values(), phi):
        torch.testing.assert_close(v[0], ref)


def test_the_logged_gamma_is_the_mean_of_the_tasks_chosen_gammas() -> None:
    model, tasks = _net(), _tasks()
    gammas = (0.75, 0.8, 0.85, 0.9, 0.95)
    _, ref_gammas = _reference(model, tasks, steps=12, lr=0.5, gammas=gammas)
    assert len(set(ref_gammas)) > 1  # (a mean, not the first task's)
    metrics = LazyMAML(model, inner_steps=12, inner_lr=0.5, gammas=gammas).meta_step(tasks)
    assert metrics["gamma"] == pytest.approx(sum(ref_gammas) / len(ref_gammas))


def test_last_three_mixes_the_final_checkpoints_and_rejects_too_few_steps() -> None:
    model, tasks = _net(), _tasks(1)
    learner = LazyMAML(model, inner_steps=12, inner_lr=0.5, last=3, weight_step=0.5)
    _, _, _, leaps = learner.meta_gradient(tasks)
    weights = leaps[0].weights
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-9 and all(w in (0.0, 0.5, 1.0) for w in weights)
    assert len(leaps[0].scores) == 6 * 5  # 6 simplex points with spacing 0.5 for 3 checkpoints × 5 gammas
    with pytest.raises(ValueError, match="inner_steps .* must be >= last"):
        LazyMAML(_net(), inner_steps=2, last=3)


@pytest.mark.parametrize("cls", [LazyMAML, LazyReptile])
def test_on_regression_the_teacher_picks_the_leap_of_least_query_mse(cls) -> None:
    """Regression has no accuracy: whatever ``criterion`` says, the teacher minimises the query MSE of
    γθ + (1−γ)φ_k (maximising it, as "accuracy" does, would pick the worst leap on every task)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    gammas = (0.1, 0.5, 0.9)
    learner = cls(model, problem="regression", inner_lr=0.1, inner_steps=4, gammas=gammas)
    assert learner.criterion == "accuracy" and learner.teacher.criterion == "loss"
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 11, 1, generator=g, dtype=torch.float64) * 10 - 5
    y = 2 * torch.sin(x + torch.rand(4, 1, 1, generator=g, dtype=torch.float64))
    tasks = TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    phi = learner.adapt(tasks.support)  # the k-step SGD student (eval_inner_steps defaults to k): its last checkpoint
    learner.meta_step(tasks)
    best, worst = [], []
    for t in range(4):
        mses = []
        for gamma in gammas:
            mix = {k: gamma * v + (1 - gamma) * phi[k][t] for k, v in theta.items()}
            mses.append(float(F.mse_loss(torch.func.functional_call(model, mix, (tasks.query_x[t],)), tasks.query_y[t])))
        best.append(gammas[mses.index(min(mses))])
        worst.append(gammas[mses.index(max(mses))])
    assert learner.last_gammas == best
    assert best != worst  # the tasks tell minimising from maximising


def test_defaults_are_the_lazy_papers_with_mamls_meta_batches() -> None:
    """docs/fewshot.md: a student of k = 15 SGD steps of 0.1 (also at test), the γ grid 0.75…0.95, b = 1 checkpoint,
    a 0.1 simplex grid, validation accuracy, Adam 1e-3; per benchmark MAML's meta-batch size and the student of
    lazy Reptile."""
    from fewshot import MAML

    learner = LazyMAML(_net())
    assert (learner.inner_steps, learner.inner_lr, learner.eval_inner_steps) == (15, 0.1, 15)
    assert (learner.gammas, learner.last, learner.weight_step, learner.criterion) == ((0.75, 0.8, 0.85, 0.9, 0.95), 1, 0.1, "accuracy")
    assert learner.meta_optimizer.defaults["lr"] == 1e-3
    for dataset, ways, shots in (("omniglot", 5, 1), ("omniglot", 20, 1), ("sine", 1, 5), ("cifar-fs", 5, 1), ("cifar-fs", 5, 5)):
        ours = LazyMAML.paper_defaults(dataset=dataset, ways=ways, shots=shots)
        assert ours["meta_batch"] == MAML.paper_defaults(dataset=dataset, ways=ways, shots=shots)["meta_batch"], dataset
        student = LazyReptile.paper_defaults(dataset=dataset, ways=ways, shots=shots)
        assert ours["inner_steps"] == 15 and (ours["inner_lr"], ours["inner_steps"]) == (student["inner_lr"], student["inner_steps"])
