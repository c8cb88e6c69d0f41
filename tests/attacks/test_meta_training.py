"""Meta-training: held-out MSE drops (reptile, lazy-reptile), the MAML family lowers the adapted MSE; one step of
lazy-reptile, maml and lazy-maml equals the update by hand."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attacks.meta_attacker import MetaAttacker
from attacks.meta_training import meta_train, mse, split_task
from lazyapps.teacher import LazyTeacher

ADAM = torch.optim.Adam  # the real one, for the references below (a test may patch torch.optim.Adam)


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


def _with_params(net, params):
    probe = copy.deepcopy(net)
    with torch.no_grad():
        for k, p in probe.named_parameters():
            p.copy_(params[k])
    return probe


def _adam_student(net, x, g, *, steps, lr):
    """φ_k of a plain ``torch.optim.Adam`` student on one task's pairs (the reference for the engine's student)."""
    student = copy.deepcopy(net)
    opt = ADAM(student.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(student(x), g).backward()
        opt.step()
    return {k: v.detach() for k, v in student.named_parameters()}


def _teacher_by_hand(net, theta, phi_k, xv, gv, gammas=(0.75, 0.80, 0.85, 0.90, 0.95)):
    """(γ̂, γ̂θ + (1 − γ̂)φ_k): the grid's (default: the default grid's) γ with the lowest validation MSE (the first
    on ties)."""
    best = None
    for gamma in gammas:
        cand = {k: gamma * theta[k] + (1 - gamma) * phi_k[k] for k in theta}
        with torch.no_grad():
            score = F.mse_loss(_with_params(net, cand)(xv), gv).item()
        if best is None or score < best[0]:
            best = (score, gamma, cand)
    return best[1], best[2]


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
        _, leap = _teacher_by_hand(net, theta, _adam_student(net, x, g, steps=steps, lr=lr), xv, gv)
        leaps.append(leap)
    expected = {k: theta[k] - beta * sum(theta[k] - phi[k] for phi in leaps) for k in theta}
    for k in theta:
        torch.testing.assert_close(result.params[k], expected[k], atol=1e-5, rtol=1e-5)


def _adapted_mse(net, params, tasks, *, steps, lr, optimizer):
    """Mean validation MSE after the student's steps on each task's training pairs: what the MAML family minimises."""
    total = 0.0
    for task in tasks:
        (x, g), (xv, gv) = split_task(task)
        probe = _with_params(net, params)
        opt = optimizer(probe.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(probe(x), g).backward()
            opt.step()
        with torch.no_grad():
            total += F.mse_loss(probe(xv), gv).item()
    return total / len(tasks)


@pytest.mark.parametrize("method", ["maml", "lazy-maml"])
def test_maml_family_lowers_the_adapted_validation_mse(method):
    torch.manual_seed(0)
    net = MetaAttacker(1, (8, 16))
    tasks = _tasks()
    init = {k: v.detach().clone() for k, v in net.named_parameters()}
    result = meta_train(net, tasks, method=method, iterations=30, batch_size=16, meta_lr=1e-2,
                        generator=torch.Generator().manual_seed(0))
    # each method's own student: maml's SGD (5 steps, lr 0.1), lazy-maml's Adam (8 steps, lr 1e-2)
    student = dict(steps=5, lr=0.1, optimizer=torch.optim.SGD) if method == "maml" else dict(steps=8, lr=1e-2, optimizer=torch.optim.Adam)
    before = _adapted_mse(net, init, tasks, **student)
    after = _adapted_mse(net, result.params, tasks, **student)
    assert after < 0.8 * before
    assert all(torch.equal(v, init[k]) for k, v in net.named_parameters())
    assert all(not v.requires_grad for v in result.params.values())
    assert (len(result.gammas) == 30 * 3) == (method == "lazy-maml")


def _maml_meta_gradient_by_hand(net, theta, tasks, *, steps, lr):
    """Second-order MAML: the mean over ``(x, g, xv, gv)`` tasks of d/dθ MSE_val after ``steps`` SGD steps in the graph."""
    total = 0.0
    for x, g, xv, gv in tasks:
        phi = dict(theta)
        for _ in range(steps):
            loss = F.mse_loss(torch.func.functional_call(net, phi, (x,)), g)
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
            phi = {k: v - lr * d for (k, v), d in zip(phi.items(), grads)}
        total = total + F.mse_loss(torch.func.functional_call(net, phi, (xv,)), gv)
    return dict(zip(theta, torch.autograd.grad(total / len(tasks), list(theta.values()))))


@pytest.fixture
def sgd_meta_step(monkeypatch):
    """meta_train's Adam replaced by plain SGD, so one iteration moves θ by exactly −meta_lr × the meta-gradient.

    (Adam's first step is about meta_lr × the gradient's sign, which would hide a wrongly scaled meta-gradient.)
    """
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr: torch.optim.SGD(params, lr=lr))


@pytest.mark.parametrize("sizes", [(20, 20), (20, 12)], ids=["vmapped", "unequal-tasks-looped"])
def test_one_maml_step_equals_second_order_maml_by_hand(sizes, sgd_meta_step):
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = [_tasks(n_tasks=2, n=n, seed=i)[i] for i, n in enumerate(sizes)]
    steps, lr, meta_lr = 2, 0.3, 1.0  # with the SGD meta-step, θ moves by minus the meta-gradient itself
    # batches cover each task's pairs whole (in order), so the sampled pairs are known
    result = meta_train(net, tasks, method="maml", iterations=1, inner_steps=steps, inner_lr=lr, meta_lr=meta_lr,
                        batch_size=64, val_batch=64)
    theta = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    meta_grads = _maml_meta_gradient_by_hand(net, theta, [(*a, *b) for a, b in map(split_task, tasks)], steps=steps, lr=lr)
    for k in theta:
        torch.testing.assert_close(result.params[k] - theta[k].detach(), -meta_lr * meta_grads[k], atol=1e-7, rtol=1e-4)


def test_one_lazy_maml_step_equals_the_leap_gradient_by_hand(sgd_meta_step):
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=2, n=20)
    steps, lr, meta_lr = 3, 1e-2, 1.0
    result = meta_train(net, tasks, method="lazy-maml", iterations=1, inner_steps=steps, inner_lr=lr, meta_lr=meta_lr,
                        batch_size=64, val_batch=64)
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    task_grads = []
    for task in tasks:
        (x, g), (xv, gv) = split_task(task)
        gamma, params = _teacher_by_hand(net, theta, _adam_student(net, x, g, steps=steps, lr=lr), xv, gv)
        leap = _with_params(net, params)
        F.mse_loss(leap(xv), gv).backward()  # d/dθ of MSE(γθ + (1 − γ)φ_k) = γ · ∇MSE at the leap
        task_grads.append({k: gamma * p.grad for k, p in leap.named_parameters()})
    mean = {k: sum(t[k] for t in task_grads) / len(task_grads) for k in theta}
    for k in theta:
        torch.testing.assert_close(result.params[k] - theta[k], -meta_lr * mean[k], atol=1e-7, rtol=1e-4)


def test_unknown_method_and_empty_tasks_are_errors():
    net = MetaAttacker(1, (4,))
    with pytest.raises(ValueError, match="unknown meta-training method"):
        meta_train(net, _tasks(1), method="nope", iterations=1)
    with pytest.raises(ValueError, match="at least one task"):
        meta_train(net, [], iterations=1)


def test_split_task_holds_out_the_last_pairs_without_overlap():
    images, maps = torch.arange(20.0).view(20, 1, 1, 1), -torch.arange(20.0).view(20, 1, 1, 1)
    (x, g), (xv, gv) = split_task((images, maps), val_fraction=0.25)
    assert x.flatten().tolist() == list(range(15)) and xv.flatten().tolist() == list(range(15, 20))
    assert torch.equal(g, -x) and torch.equal(gv, -xv)
    (x, _), (xv, _) = split_task((images[:3], maps[:3]))  # at least one pair validates
    assert x.flatten().tolist() == [0, 1] and xv.flatten().tolist() == [2]


def test_default_meta_step_and_history_are_means_over_tasks():
    from attacks.meta_training import default_meta_step

    assert default_meta_step("reptile", 4) == 0.125 and default_meta_step("lazy-reptile", 4) == 0.5
    torch.manual_seed(0)
    net = MetaAttacker(1, (2,))
    tasks = [(torch.rand(10, 1, 4, 4), torch.randn(10, 1, 4, 4) * s) for s in (1.0, 3.0)]
    result = meta_train(net, tasks, method="reptile", iterations=0)
    theta = dict(net.named_parameters())
    expected = sum(mse(net, theta, *split_task(t)[1]) for t in tasks) / 2
    assert result.history == [(0, pytest.approx(expected))]


def test_split_task_rounds_the_validation_share_and_refuses_too_few_pairs():
    images = torch.arange(19.0).view(19, 1, 1, 1)
    (x, _), (xv, _) = split_task((images, -images))  # 10 % of 19 is 1.9: the last 2 pairs
    assert x.flatten().tolist() == list(range(17)) and xv.flatten().tolist() == [17, 18]
    with pytest.raises(ValueError, match="needs more than 1 pairs to hold out 1 for validation, got 1"):
        split_task((images[:1], images[:1]))


def test_mse_is_the_mean_over_every_entry_of_every_map():
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    x, g = _tasks(n_tasks=1, n=10)[0]
    with torch.no_grad():
        expected = F.mse_loss(net(x), g).item()
    assert mse(net, dict(net.named_parameters()), x, g, batch_size=3) == pytest.approx(expected, rel=1e-5)


def _differs(a, b) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("method", "steps", "lr"), [("lazy-reptile", 8, 1e-2), ("maml", 5, 0.1)])
def test_the_default_student_is_the_documented_mnist_one(method, steps, lr, sgd_meta_step):
    """Without inner_steps / inner_lr: lazy-reptile's student takes Algorithm 3's k = 8 Adam steps at 1e-2 (MNIST),
    maml's 5 SGD steps at 0.1."""
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=1, n=20)

    def run(**kw):
        return meta_train(net, tasks, method=method, iterations=1, batch_size=64, val_batch=64, **kw).params

    default = run()
    assert not _differs(default, run(inner_steps=steps, inner_lr=lr))
    assert _differs(default, run(inner_steps=steps + 2, inner_lr=lr)) and _differs(default, run(inner_steps=steps, inner_lr=lr / 2))


def test_a_task_of_exactly_one_batch_is_used_whole():
    """18 training pairs and batch_size 18: every step uses all of them, as a larger batch_size does (no resampling)."""
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=2, n=20)
    exact = meta_train(net, tasks, method="reptile", iterations=2, batch_size=18).params
    whole = meta_train(net, tasks, method="reptile", iterations=2, batch_size=64).params
    assert not _differs(exact, whole)


def test_the_generator_alone_decides_the_minibatches():
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=2, n=20)

    def run(seed):
        return meta_train(net, tasks, method="reptile", iterations=2, batch_size=4,
                          generator=torch.Generator().manual_seed(seed)).params

    torch.manual_seed(1)
    first = run(0)
    torch.manual_seed(2)  # the global stream plays no part
    assert not _differs(first, run(0))
    assert _differs(first, run(1))


def test_history_is_recorded_every_eval_every_iterations_and_at_the_end():
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=2, n=20)
    seen = []
    result = meta_train(net, tasks, method="reptile", iterations=5, eval_every=2, batch_size=4,
                        on_eval=lambda it, value: seen.append((it, value)))
    assert [it for it, _ in result.history] == [0, 2, 4, 5] and seen == result.history
    final = sum(mse(net, result.params, *split_task(t)[1]) for t in tasks) / 2
    assert result.history[-1][1] == pytest.approx(final)


def test_a_given_teacher_is_used_with_its_last_checkpoints():
    """lazy-reptile, one task, β = 1, a teacher that leaps all the way (γ = 0) to the first of its last=2 of 3
    checkpoints: θ lands on the student after 2 Adam steps."""
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=1, n=20)
    teacher = LazyTeacher(gammas=(0.0,), last=2, weight_grid=[(1.0, 0.0)])
    result = meta_train(net, tasks, method="lazy-reptile", iterations=1, inner_steps=3, inner_lr=1e-2, meta_step=1.0,
                        batch_size=64, val_batch=64, teacher=teacher)
    (x, g), _ = split_task(tasks[0])
    expected = _adam_student(net, x, g, steps=2, lr=1e-2)
    assert result.gammas == [0.0]
    for k in expected:
        torch.testing.assert_close(result.params[k], expected[k], atol=1e-5, rtol=1e-5)


def test_maml_meta_objective_sees_val_batch_validation_pairs(sgd_meta_step):
    """val_batch = 1 of each task's 2 validation pairs: the meta-gradient is that of one pair per task (which one
    is the generator's choice), not of both."""
    import itertools

    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=2, n=20)  # 18 training pairs (whole batches), 2 validation pairs
    result = meta_train(net, tasks, method="maml", iterations=1, inner_steps=2, inner_lr=0.3, meta_lr=1.0,
                        batch_size=64, val_batch=1)
    theta = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    splits = [split_task(t) for t in tasks]
    moved = {k: result.params[k] - theta[k].detach() for k in theta}

    def matches(picks) -> bool:
        grads = _maml_meta_gradient_by_hand(
            net, theta, [(x, g, xv[p], gv[p]) for ((x, g), (xv, gv)), p in zip(splits, picks)], steps=2, lr=0.3)
        return all(torch.allclose(moved[k], -grads[k], atol=1e-7, rtol=1e-4) for k in theta)

    assert any(matches(([i], [j])) for i, j in itertools.product(range(2), repeat=2))
    assert not matches(([0, 1], [0, 1]))  # both validation pairs: what val_batch >= 2 gives


def test_the_lazy_teacher_chooses_on_val_batch_validation_pairs():
    """val_batch = 1 of the task's 2 validation pairs: γ̂ is the best on one pair (which one is the generator's
    choice), not on both (a fine γ grid, so the choices differ)."""
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    tasks = _tasks(n_tasks=1, n=20)
    gammas = tuple(i / 20 for i in range(21))
    result = meta_train(net, tasks, method="lazy-reptile", iterations=1, inner_steps=5, inner_lr=5e-2,
                        batch_size=64, val_batch=1, teacher=LazyTeacher(gammas=gammas))
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}
    (x, g), (xv, gv) = split_task(tasks[0])
    phi = _adam_student(net, x, g, steps=5, lr=5e-2)
    one_pair = {_teacher_by_hand(net, theta, phi, xv[[i]], gv[[i]], gammas)[0] for i in range(2)}
    assert result.gammas[0] in one_pair
    assert _teacher_by_hand(net, theta, phi, xv, gv, gammas)[0] not in one_pair
