"""Meta-SGD: learning-rate init, the α meta-gradient against finite differences, vmap vs loop."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.meta_sgd import MetaSGD, init_learning_rates
from fewshot.tasks import TaskBatch

from ._checks import meta_trains_on_omniglot, sine_mse_drops


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double()


def manual_net(p, x):
    """The same network written out by hand (independent of functional_call)."""
    return torch.tanh(x @ p["0.weight"].T + p["0.bias"]) @ p["2.weight"].T + p["2.bias"]


def regression_tasks(n_tasks=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(r(n_tasks, 4, 1), r(n_tasks, 4, 1), r(n_tasks, 6, 1), r(n_tasks, 6, 1))


def query_loss_reference(theta, alpha, tasks, steps):
    """Mean query loss after ``steps`` Meta-SGD steps, by hand with torch.autograd."""
    losses = []
    for t in range(tasks.num_tasks):
        p = dict(theta)
        for _ in range(steps):
            loss = F.mse_loss(manual_net(p, tasks.support_x[t]), tasks.support_y[t])
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            p = {k: v - alpha[k] * g for (k, v), g in zip(p.items(), grads)}
        losses.append(F.mse_loss(manual_net(p, tasks.query_x[t]), tasks.query_y[t]))
    return torch.stack(losses).mean()


def test_learning_rates_have_param_shapes_and_paper_range():
    params = dict(nn.Linear(5, 7).named_parameters())
    alpha = init_learning_rates(params, generator=torch.Generator().manual_seed(0))
    assert {k: v.shape for k, v in alpha.items()} == {k: v.shape for k, v in params.items()}
    allv = torch.cat([v.flatten() for v in alpha.values()])
    assert allv.min() >= 0.005 and allv.max() <= 0.1 and allv.std() > 0.01


def test_meta_step_applies_second_order_gradients_of_theta_and_alpha():
    for steps in (1, 2):
        learner = MetaSGD(tiny_net(), problem="regression", inner_steps=steps, meta_lr=1e-3)
        tasks = regression_tasks()
        theta = {k: v.detach().clone().requires_grad_() for k, v in learner.theta.items()}
        alpha = {k: v.detach().clone().requires_grad_() for k, v in learner.alpha.items()}
        ref_loss = query_loss_reference(theta, alpha, tasks, steps)
        ref = torch.autograd.grad(ref_loss, [*theta.values(), *alpha.values()])

        # Central finite differences of the loss w.r.t. α (float64) confirm the reference's α-gradient.
        eps = 1e-6
        ref_alpha = dict(zip(alpha, ref[len(theta):]))
        with torch.no_grad():
            for name in ("0.weight", "2.bias"):
                for i in range(alpha[name].numel()):
                    bump = torch.zeros_like(alpha[name]).view(-1).index_fill_(0, torch.tensor(i), eps).view_as(alpha[name])
                    with torch.enable_grad():
                        up = query_loss_reference(theta, {**alpha, name: alpha[name] + bump}, tasks, steps)
                        down = query_loss_reference(theta, {**alpha, name: alpha[name] - bump}, tasks, steps)
                    fd = float((up - down) / (2 * eps))
                    assert abs(fd - float(ref_alpha[name].view(-1)[i])) < 1e-7 * max(1.0, abs(fd))

        # meta_step applies exactly these gradients (plain SGD with lr 1 makes the step -g).
        learner.meta_optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
        before = {**{k: v.detach().clone() for k, v in learner.theta.items()},
                  **{f"lr:{k}": v.detach().clone() for k, v in learner.alpha.items()}}
        metrics = learner.meta_step(tasks)
        assert abs(metrics["loss"] - float(ref_loss.detach())) < 1e-10
        after = {**learner.theta, **{f"lr:{k}": v for k, v in learner.alpha.items()}}
        for (name, old), g in zip(before.items(), ref):
            torch.testing.assert_close(after[name].detach() - old, -g)


def test_vmap_and_loop_meta_steps_agree():
    tasks = regression_tasks(n_tasks=3)
    a = MetaSGD(tiny_net(), problem="regression", vectorize=True)
    b = MetaSGD(tiny_net(), problem="regression", vectorize=False)
    b.load_state_dict(a.state_dict())
    ma, mb = a.meta_step(tasks), b.meta_step(tasks)
    assert abs(ma["loss"] - mb["loss"]) < 1e-12
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb)
    fast_a, fast_b = a.adapt(tasks.support), b.adapt(tasks.support)
    for k in fast_a:
        torch.testing.assert_close(fast_a[k], fast_b[k])


def test_short_sine_run_lowers_query_mse():
    from models_zoo.fewshot_nets import SineMLP

    torch.manual_seed(0)
    learner = MetaSGD(SineMLP(), problem="regression")
    sine_mse_drops(learner, iterations=150, meta_batch=10, factor=0.8)


def test_runs_on_conv4_omniglot(omniglot_tasks):
    from models_zoo.fewshot_nets import Conv4

    torch.manual_seed(0)
    meta_trains_on_omniglot(MetaSGD(Conv4(num_classes=5, hidden=8)), omniglot_tasks)


def test_learner_starts_its_learning_rates_in_the_paper_range():
    from models_zoo.fewshot_nets import SineMLP

    torch.manual_seed(0)
    learner = MetaSGD(SineMLP(), problem="regression")
    assert learner.lr_init == (0.005, 0.1)
    assert {k: v.shape for k, v in learner.alpha.items()} == {k: v.shape for k, v in learner.theta.items()}
    allv = torch.cat([v.detach().flatten() for v in learner.alpha.values()])  # 1,761 draws from U[0.005, 0.1]
    assert allv.min() >= 0.005 and allv.max() <= 0.1
    assert allv.min() < 0.01 and allv.max() > 0.095 and abs(float(allv.mean()) - 0.0525) < 0.005


def test_default_meta_optimizer_learns_alpha_too():
    learner = MetaSGD(tiny_net(), problem="regression", meta_lr=1e-2)
    before = {k: v.detach().clone() for k, v in learner.alpha.items()}
    learner.meta_step(regression_tasks())
    assert all(not torch.equal(before[k], v.detach()) for k, v in learner.alpha.items())


def test_adapt_takes_inner_steps_steps_with_the_learned_rates():
    tasks = regression_tasks()
    learner = MetaSGD(tiny_net(), problem="regression", inner_steps=2)
    fast = learner.adapt(tasks.support)
    alpha = {k: v.detach() for k, v in learner.alpha.items()}
    for t in range(tasks.num_tasks):
        p = {k: v.detach().clone().requires_grad_() for k, v in learner.theta.items()}
        for _ in range(2):
            loss = F.mse_loss(manual_net(p, tasks.support_x[t]), tasks.support_y[t])
            grads = torch.autograd.grad(loss, list(p.values()))
            p = {k: (v - alpha[k] * g).detach().requires_grad_() for (k, v), g in zip(p.items(), grads)}
        for k in p:
            torch.testing.assert_close(fast[k][t].detach(), p[k].detach())


def test_init_learning_rates_defaults_to_the_papers_range_reproducibly_and_checks_its_bounds():
    params = dict(nn.Linear(50, 40).named_parameters())  # 2,040 draws
    alpha = init_learning_rates(params, generator=torch.Generator().manual_seed(1))
    allv = torch.cat([v.flatten() for v in alpha.values()])
    # U[0.005, 0.1] (Li et al.): the draws reach down to 0.005 and average 0.0525
    assert float(allv.min()) >= 0.005 and float(allv.min()) < 0.006 and float(allv.max()) <= 0.1
    assert abs(float(allv.mean()) - 0.0525) < 0.0015
    again = init_learning_rates(params, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(alpha[k], again[k]) for k in alpha)  # the generator makes the draw reproducible
    fixed = init_learning_rates(params, low=0.05, high=0.05)  # equal bounds: one fixed rate
    assert all(torch.equal(v, torch.full_like(v, 0.05)) for v in fixed.values())
    assert float(torch.cat([v.flatten() for v in init_learning_rates(params, low=0.0, high=0.01).values()]).min()) >= 0.0
    for low, high in ((0.2, 0.1), (-0.1, 0.1)):
        with pytest.raises(ValueError, match="need 0 <= low <= high"):
            init_learning_rates(params, low=low, high=high)


def test_paper_defaults_are_one_step_with_maml_batch_sizes_and_adam_at_1e_3():
    # Li et al.: one adaptation step, Adam with learning rate 1e-3; Finn et al.'s meta-batches and iterations
    assert MetaSGD.paper_defaults(dataset="omniglot", ways=5, shots=1) == {"inner_steps": 1, "meta_batch": 32, "iterations": 60000}
    assert MetaSGD.paper_defaults(dataset="omniglot", ways=20, shots=1) == {"inner_steps": 1, "meta_batch": 16, "iterations": 60000}
    assert MetaSGD.paper_defaults(dataset="sine", ways=1, shots=5) == {"inner_steps": 1, "meta_batch": 25, "iterations": 70000}
    assert MetaSGD(tiny_net(), problem="regression").meta_optimizer.param_groups[0]["lr"] == 1e-3


def test_first_order_meta_step_treats_the_inner_gradient_as_a_constant_but_still_learns_alpha():
    # By hand: φ = θ − α ⊙ g with g = ∇L_support(θ) detached; the meta-gradient is d L_query(φ) / d(θ, α).
    learner = MetaSGD(tiny_net(), problem="regression", first_order=True)
    tasks = regression_tasks()
    theta = {k: v.detach().clone().requires_grad_() for k, v in learner.theta.items()}
    alpha = {k: v.detach().clone().requires_grad_() for k, v in learner.alpha.items()}
    losses = []
    for t in range(tasks.num_tasks):
        g = torch.autograd.grad(F.mse_loss(manual_net(theta, tasks.support_x[t]), tasks.support_y[t]), list(theta.values()))
        phi = {k: v - alpha[k] * gk for (k, v), gk in zip(theta.items(), g)}
        losses.append(F.mse_loss(manual_net(phi, tasks.query_x[t]), tasks.query_y[t]))
    ref = torch.autograd.grad(torch.stack(losses).mean(), [*theta.values(), *alpha.values()])
    second = torch.autograd.grad(query_loss_reference(theta, alpha, tasks, 1), list(theta.values()))
    assert max(float((a - b).abs().max()) for a, b in zip(ref, second)) > 1e-4  # the two orders differ here
    learner.meta_optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    learner.meta_step(tasks)
    after = [*learner.theta.values(), *learner.alpha.values()]
    for old, new, g in zip([*theta.values(), *alpha.values()], after, ref):
        torch.testing.assert_close(new.detach() - old.detach(), -g)


def test_defaults_adapt_by_one_step_and_report_the_mean_query_mse():
    tasks = regression_tasks(n_tasks=3)
    learner = MetaSGD(tiny_net(), problem="regression")
    assert learner.inner_steps == 1  # Li et al.: one adaptation step
    fast = learner.adapt(tasks.support)
    for t in range(3):
        p = {k: v.detach().clone().requires_grad_() for k, v in learner.theta.items()}
        g = torch.autograd.grad(F.mse_loss(manual_net(p, tasks.support_x[t]), tasks.support_y[t]), list(p.values()))
        for (k, v), gk in zip(p.items(), g):
            torch.testing.assert_close(fast[k][t], (v - learner.alpha[k] * gk).detach())
    per_task = [float(F.mse_loss(manual_net({k: v[t] for k, v in fast.items()}, tasks.query_x[t]), tasks.query_y[t]))
                for t in range(3)]
    metrics = learner.meta_step(tasks)
    assert metrics["mse"] == pytest.approx(sum(per_task) / 3, rel=1e-10) and max(per_task) - min(per_task) > 1e-3


def test_learning_rates_follow_the_parameters_dtype_and_the_random_stream():
    params = dict(nn.Linear(3, 2).double().named_parameters())
    drawn = init_learning_rates(params, generator=torch.Generator().manual_seed(0))
    assert all(v.dtype == torch.float64 for v in drawn.values())
    alphas = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)  # a learner draws its rates from the global stream, as it draws θ
        alphas.append(torch.cat([v.detach().flatten() for v in MetaSGD(nn.Linear(3, 2), problem="regression").alpha.values()]))
    assert torch.equal(alphas[0], alphas[1]) and not torch.equal(alphas[0], alphas[2])
