"""iMAML: CG against a direct solve, the implicit meta-gradient against a closed form, vmap vs loop, a short run."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.imaml import (
    IMAML,
    conjugate_gradient,
    hessian_vector_product,
    implicit_meta_gradient,
    proximal_adapt,
)
from fewshot.tasks import TaskBatch
from lazyapps.functional import batch_loss, params_of

from ._checks import meta_trains_on_omniglot, sine_mse_drops


def flat(d):
    return torch.cat([v.reshape(-1) for v in d.values()])


def unflat(vec, like):
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i:i + v.numel()].reshape(v.shape)
        i += v.numel()
    return out


def tanh_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def test_cg_solves_regularised_hessian_system_like_a_direct_solve():
    model = tanh_net()
    params = params_of(model, detach=True)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g, dtype=torch.float64)
    rhs = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
    lam = 2.0

    def loss_of_flat(vec):
        return batch_loss(model, unflat(vec, params), {}, F.mse_loss, (x, y))

    hessian = torch.autograd.functional.hessian(loss_of_flat, flat(params))
    n = hessian.shape[0]
    matrix = torch.eye(n, dtype=torch.float64) + hessian / lam
    assert torch.linalg.eigvalsh(matrix).min() > 0  # CG needs SPD; the test problem must be one
    direct = torch.linalg.solve(matrix, flat(rhs))

    def matvec(v):
        hv = hessian_vector_product(model, params, {}, F.mse_loss, (x, y), v)
        return {k: v[k] + hv[k] / lam for k in v}

    # The HVP itself against the explicit Hessian.
    torch.testing.assert_close(flat(matvec(rhs)), matrix @ flat(rhs))
    # CG is exact after n steps (in exact arithmetic; float64 here).
    torch.testing.assert_close(flat(conjugate_gradient(matvec, rhs, steps=n)), direct, rtol=1e-7, atol=1e-9)
    # Few steps give an approximation that improves the residual over x = 0.
    few = flat(conjugate_gradient(matvec, rhs, steps=3))
    assert (matrix @ few - flat(rhs)).norm() < 0.5 * flat(rhs).norm()


def _linear_regression_task(*, seed: int):
    """A bias-free linear model (float64), its weights, and one task's support (6) and query (5) points."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(1, 6, 3, generator=g, dtype=torch.float64), torch.randn(1, 6, 1, generator=g, dtype=torch.float64)
    query = torch.randn(1, 5, 3, generator=g, dtype=torch.float64), torch.randn(1, 5, 1, generator=g, dtype=torch.float64)
    return model, params_of(model, detach=True), support, query


def test_implicit_gradient_matches_closed_form_for_quadratic_inner_problem():
    # Linear regression: L_train is quadratic, so φ*(θ) = (XᵀX·2/n + λI)⁻¹(λθ + 2Xᵀy/n) exactly,
    # and d L_test(φ*(θ))/dθ can be differentiated through torch.linalg.solve as a reference.
    model, theta, (xs, ys), (xq, yq) = _linear_regression_task(seed=2)
    lam = 0.7

    def phi_star(w):  # w: (1, 3) weight
        x, y = xs[0], ys[0]
        a = 2 * x.T @ x / x.shape[0] + lam * torch.eye(3, dtype=torch.float64)
        b = lam * w.reshape(3, 1) + 2 * x.T @ y / x.shape[0]
        return torch.linalg.solve(a, b).reshape(1, 3)

    w = theta["weight"].clone().requires_grad_()
    test_loss = F.mse_loss(xq[0] @ phi_star(w).T, yq[0])
    (expected,) = torch.autograd.grad(test_loss, w)

    # The inner GD converges (well-conditioned problem), CG is exact in 3 steps.
    result = implicit_meta_gradient(model, theta, {}, F.mse_loss, (xs, ys), (xq, yq),
                                    lam=lam, inner_steps=400, inner_lr=0.2, cg_steps=3)
    torch.testing.assert_close(result.grads["weight"], expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(result.loss, test_loss.detach(), rtol=1e-6, atol=1e-9)
    # And the inner solver reaches the closed-form minimiser.
    phi = proximal_adapt(model, theta, {}, F.mse_loss, (xs[0], ys[0]), lam=lam, steps=400, lr=0.2)
    torch.testing.assert_close(phi["weight"], phi_star(theta["weight"]))


def test_damped_system_matches_a_direct_solve():
    """cg_damping/hessian_damping (the authors' code): v = ((1 + c)·I + H/(λ + d))⁻¹ ∇L_test(φ), H the exact
    Hessian of the quadratic training loss, solved directly; the undamped solve differs."""
    model, theta, (xs, ys), (xq, yq) = _linear_regression_task(seed=4)
    lam, c, d = 0.5, 1.0, 10.0
    kw = dict(lam=lam, inner_steps=400, inner_lr=0.2, cg_steps=3)
    damped = implicit_meta_gradient(model, theta, {}, F.mse_loss, (xs, ys), (xq, yq), cg_damping=c, hessian_damping=d, **kw)
    phi = proximal_adapt(model, theta, {}, F.mse_loss, (xs[0], ys[0]), lam=lam, steps=400, lr=0.2)["weight"]
    w = phi.clone().requires_grad_()
    (g_test,) = torch.autograd.grad(F.mse_loss(xq[0] @ w.T, yq[0]), w)
    hessian = 2 * xs[0].T @ xs[0] / xs.shape[1]
    expected = torch.linalg.solve((1 + c) * torch.eye(3, dtype=torch.float64) + hessian / (lam + d), g_test.reshape(3))
    torch.testing.assert_close(damped.grads["weight"].reshape(3), expected, rtol=1e-6, atol=1e-9)
    # The learner's dampings (Omniglot's paper_defaults) reach the meta-gradient its meta_step applies.
    learner = IMAML(model, problem="regression", cg_damping=c, hessian_damping=d, **kw)
    applied = {}
    learner.apply_meta_gradient = lambda grads, params=None: applied.update(grads)
    learner.meta_step(TaskBatch(xs, ys, xq, yq))
    torch.testing.assert_close(applied["weight"].reshape(3), expected, rtol=1e-6, atol=1e-9)
    plain = implicit_meta_gradient(model, theta, {}, F.mse_loss, (xs, ys), (xq, yq), **kw)
    assert not torch.allclose(plain.grads["weight"], damped.grads["weight"], rtol=1e-2)
    with pytest.raises(ValueError, match="must be >= 0"):
        implicit_meta_gradient(model, theta, {}, F.mse_loss, (xs, ys), (xq, yq), cg_damping=-1.0, **kw)


def test_meta_batch_gradient_and_loss_are_the_means_of_the_tasks_own():
    """The meta-gradient of a meta-batch is the mean over its tasks of each task's implicit gradient (as computed
    for that task alone), and so is the loss: a sum would scale Adam's input with the meta-batch size."""
    model = tanh_net(1)
    theta = params_of(model, detach=True)
    g = torch.Generator().manual_seed(11)
    s = (torch.randn(3, 5, 2, generator=g, dtype=torch.float64), torch.randn(3, 5, 1, generator=g, dtype=torch.float64))
    q = (torch.randn(3, 6, 2, generator=g, dtype=torch.float64), torch.randn(3, 6, 1, generator=g, dtype=torch.float64))
    kw = dict(lam=1.5, inner_steps=4, inner_lr=0.1, cg_steps=3)
    batch = implicit_meta_gradient(model, theta, {}, F.mse_loss, s, q, **kw)
    alone = [implicit_meta_gradient(model, theta, {}, F.mse_loss, tuple(t[i:i + 1] for t in s), tuple(t[i:i + 1] for t in q), **kw)
             for i in range(3)]
    for k in theta:
        torch.testing.assert_close(batch.grads[k], torch.stack([a.grads[k] for a in alone]).mean(0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(batch.task_losses, torch.cat([a.task_losses for a in alone]))
    torch.testing.assert_close(batch.loss, torch.stack([a.loss for a in alone]).mean())


def test_defaults_are_the_papers_equation_and_omniglot_the_authors_released_run():
    """Class defaults: the paper's undamped system with λ = 2, 16 GD steps of 0.1, 5 CG steps, Adam 1e-3. Omniglot:
    the authors' released 5-way run (aravindr93/imaml_dev), whose CG system is damped (cg_damping 1, hessian 10)."""
    learner = IMAML(tanh_net())
    assert (learner.lam, learner.inner_steps, learner.inner_lr, learner.cg_steps, learner.meta_lr) == (2.0, 16, 0.1, 5, 1e-3)
    assert (learner.cg_damping, learner.hessian_damping) == (0.0, 0.0)
    assert learner.meta_optimizer.defaults["lr"] == 1e-3
    for ways in (5, 20):
        assert IMAML.paper_defaults(dataset="omniglot", ways=ways, shots=1) == {
            "lam": 2.0, "inner_steps": 16, "inner_lr": 0.1, "cg_steps": 5, "cg_damping": 1.0, "hessian_damping": 10.0,
            "meta_batch": 32}


def test_proximal_term_pulls_towards_theta():
    model = tanh_net()
    theta = params_of(model, detach=True)
    x, y = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    far = proximal_adapt(model, theta, {}, F.mse_loss, (x, y), lam=1e-3, steps=50, lr=0.1)
    near = proximal_adapt(model, theta, {}, F.mse_loss, (x, y), lam=50.0, steps=50, lr=0.01)
    dist = lambda p: (flat(p) - flat(theta)).norm()  # noqa: E731
    assert dist(near) < 0.2 * dist(far)
    assert all(not v.requires_grad for v in far.values())


def test_vmap_and_loop_give_the_same_meta_gradient():
    model = tanh_net()
    theta = params_of(model, detach=True)
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(3, 5, 2, generator=g, dtype=torch.float64), torch.randn(3, 5, 1, generator=g, dtype=torch.float64))
    q = (torch.randn(3, 7, 2, generator=g, dtype=torch.float64), torch.randn(3, 7, 1, generator=g, dtype=torch.float64))
    kw = dict(lam=1.0, inner_steps=3, inner_lr=0.1, cg_steps=4)
    a = implicit_meta_gradient(model, theta, {}, F.mse_loss, s, q, vectorize=True, **kw)
    b = implicit_meta_gradient(model, theta, {}, F.mse_loss, s, q, vectorize=False, **kw)
    for k in a.grads:
        torch.testing.assert_close(a.grads[k], b.grads[k])
    torch.testing.assert_close(a.task_losses, b.task_losses)


def test_hvp_modes_match_explicit_hessian_with_batchnorm_and_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).double()
    params = params_of(model, detach=True)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 1, 6, 6, generator=g, dtype=torch.float64), torch.arange(3).repeat(2)
    v = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
    hessian = torch.autograd.functional.hessian(
        lambda vec: batch_loss(model, unflat(vec, params), {}, F.cross_entropy, (x, y)), flat(params))
    expected = hessian @ flat(v)
    for mode in ("forward", "reverse", "auto"):
        got = hessian_vector_product(model, params, {}, F.cross_entropy, (x, y), v, mode=mode)
        torch.testing.assert_close(flat(got), expected)
    # Under vmap over tasks (what the meta-batch does) BatchNorm needs forward mode; auto picks it.
    xs, ys, vs = torch.stack([x, x.flip(0)]), torch.stack([y, y.flip(0)]), {k: t.expand(2, *t.shape) for k, t in v.items()}
    batched = torch.func.vmap(lambda a, b, c: hessian_vector_product(model, params, {}, F.cross_entropy, (a, b), c))(xs, ys, vs)
    torch.testing.assert_close(flat({k: t[0] for k, t in batched.items()}), expected)


def test_short_sine_run_lowers_query_mse():
    from models_zoo.fewshot_nets import SineMLP

    torch.manual_seed(0)
    # The sine settings of IMAML.paper_defaults (λ = 10), fewer steps and a larger meta lr for a short run.
    learner = IMAML(SineMLP(hidden=20), problem="regression", lam=10.0, inner_steps=5, inner_lr=0.02, cg_steps=3,
                    meta_lr=5e-3)
    sine_mse_drops(learner, iterations=50, meta_batch=5, factor=0.85)


def test_runs_on_conv4_omniglot(omniglot_tasks):
    from models_zoo.fewshot_nets import Conv4

    torch.manual_seed(0)
    meta_trains_on_omniglot(IMAML(Conv4(num_classes=5, hidden=8), inner_steps=2, cg_steps=2), omniglot_tasks)


def test_forward_mode_hvp_keeps_torchs_own_jit_deprecation_warning_out_of_the_python_api():
    # torch's forward-mode AD scripts its decompositions and torch.jit.script warns about its own deprecation:
    # nothing an iMAML user can act on. The CLI filters it process-wide; the Python API must not show it either.
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    params = params_of(model, detach=True)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    v = {k: torch.ones_like(p) for k, p in params.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hessian_vector_product(model, params, {}, F.cross_entropy, (x, y), v, mode="forward")
        warnings.warn("an unrelated FutureWarning", FutureWarning)  # the filter is narrow: others still show
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "torch.jit.script" in m]
    assert "an unrelated FutureWarning" in messages


def _tanh_task(seed=1, n=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2 * n, 2, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True) * 2)
    return (x[:, :n], y[:, :n]), (x[:, n:], y[:, n:])


def _proximal_by_hand(model, theta, x, y, *, lam, steps, lr):
    p = {k: v.detach().clone() for k, v in theta.items()}
    for _ in range(steps):
        leaf = {k: v.requires_grad_() for k, v in p.items()}
        g = torch.autograd.grad(F.mse_loss(torch.func.functional_call(model, leaf, (x,)), y), list(leaf.values()))
        p = {k: (v - lr * (gk + lam * (v - theta[k]))).detach() for (k, v), gk in zip(leaf.items(), g)}
    return p


def test_learner_takes_cg_steps_conjugate_gradient_steps_and_adapts_with_the_proximal_term():
    model = tanh_net(3)
    support, query = _tanh_task()
    lam, kw = 0.5, dict(inner_steps=6, inner_lr=0.1)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    phi = _proximal_by_hand(model, theta, support[0][0], support[1][0], lam=lam, steps=6, lr=0.1)
    # Reference: one CG step from 0 on (I + H/λ) v = g is (gᵀg / gᵀAg) g, with H the explicit support Hessian at φ.
    names = list(phi)
    vec = flat(phi)

    def support_loss(v):
        return F.mse_loss(torch.func.functional_call(model, unflat(v, phi), (support[0][0],)), support[1][0])

    def query_loss(v):
        return F.mse_loss(torch.func.functional_call(model, unflat(v, phi), (query[0][0],)), query[1][0])

    hess = torch.autograd.functional.hessian(support_loss, vec)
    a = torch.eye(len(vec), dtype=torch.float64) + hess / lam
    g = torch.autograd.functional.jacobian(query_loss, vec)
    one_step = (g @ g) / (g @ a @ g) * g
    exact = torch.linalg.solve(a, g)
    assert not torch.allclose(one_step, exact, atol=1e-4)  # one CG step is not yet the solution

    applied = {}
    for cg_steps, expected in ((1, one_step), (len(vec), exact)):
        learner = IMAML(tanh_net(3), problem="regression", lam=lam, cg_steps=cg_steps, **kw)
        learner.apply_meta_gradient = lambda grads, params=None: applied.update(grads)
        learner.meta_step(TaskBatch(*support, *query))
        torch.testing.assert_close(flat({k: applied[k] for k in names}), expected, rtol=1e-6, atol=1e-8)

    # test-time adaptation: the same proximal GD steps from θ
    fast = IMAML(tanh_net(3), problem="regression", lam=lam, **kw).adapt(support)
    for k in phi:
        torch.testing.assert_close(fast[k][0], phi[k], rtol=1e-9, atol=1e-10)


def test_cg_takes_no_step_once_converged_and_zero_steps_is_x_zero():
    # A = 2I: one CG step solves A x = b exactly (x = b/2, residual exactly 0); the steps after it must keep
    # x (a 0/0 step size is taken as a step of 0), not turn it into nan.
    rhs = {"w": torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64), "b": torch.tensor([3.0], dtype=torch.float64)}
    solved = conjugate_gradient(lambda v: {k: 2 * t for k, t in v.items()}, rhs, steps=4)
    for k in rhs:
        assert torch.equal(solved[k], rhs[k] / 2)
    assert all(torch.equal(t, torch.zeros_like(rhs[k])) for k, t in conjugate_gradient(lambda v: v, rhs, steps=0).items())
    with pytest.raises(ValueError, match="steps must be >= 0"):
        conjugate_gradient(lambda v: v, rhs, steps=-1)


def test_proximal_adapt_with_zero_steps_is_theta_and_bad_arguments_are_refused():
    model, theta, (xs, ys), (xq, yq) = _linear_regression_task(seed=5)
    same = proximal_adapt(model, theta, {}, F.mse_loss, (xs[0], ys[0]), lam=1.0, steps=0, lr=0.1)
    assert torch.equal(same["weight"], theta["weight"])
    with pytest.raises(ValueError, match="steps must be >= 0"):
        proximal_adapt(model, theta, {}, F.mse_loss, (xs[0], ys[0]), lam=1.0, steps=-1, lr=0.1)
    with pytest.raises(ValueError, match="lam must be > 0, got 0"):
        implicit_meta_gradient(model, theta, {}, F.mse_loss, (xs, ys), (xq, yq), lam=0.0, inner_steps=1, inner_lr=0.1, cg_steps=1)
    with pytest.raises(ValueError, match="unknown HVP mode 'sideways'"):
        hessian_vector_product(model, theta, {}, F.mse_loss, (xs[0], ys[0]), theta, mode="sideways")


class _TanhWithoutForwardRule(torch.autograd.Function):
    """tanh with a backward (so double backward works) but no jvp: forward-mode AD has no rule for it."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return g * (1 - t * t)


class _NoForwardRuleNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(2, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.b(_TanhWithoutForwardRule.apply(self.a(x)))


def test_hvp_modes_on_a_model_forward_mode_cannot_differentiate(monkeypatch):
    import fewshot.learners.imaml as imaml_module

    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(5, 1, generator=g, dtype=torch.float64)
    calls = []
    real_jvp = imaml_module.jvp
    monkeypatch.setattr(imaml_module, "jvp", lambda *a, **k: calls.append(1) or real_jvp(*a, **k))

    def fresh():
        model = _NoForwardRuleNet().double()
        params = params_of(model, detach=True)
        v = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
        hessian = torch.autograd.functional.hessian(
            lambda vec: F.mse_loss(torch.func.functional_call(model, unflat(vec, params), (x,)), y), flat(params))
        return model, params, v, hessian @ flat(v)

    def hvp(model, params, v, mode):
        return flat(hessian_vector_product(model, params, {}, F.mse_loss, (x, y), v, mode=mode))

    model, params, v, expected = fresh()
    torch.testing.assert_close(hvp(model, params, v, "reverse"), expected)
    assert calls == []  # reverse mode never tries forward mode
    with pytest.raises(RuntimeError, match="jvp"):
        hvp(model, params, v, "forward")  # forward mode asked for: its failure is the answer, no silent fallback
    model, params, v, expected = fresh()
    torch.testing.assert_close(hvp(model, params, v, "auto"), expected)  # auto falls back to double backward ...
    torch.testing.assert_close(hvp(model, params, v, "auto"), expected)
    assert len(calls) == 2  # ... and remembers the model: one forward-mode try for each of the two models
