"""Tests for lazyapps.functional: functional forward, inner loops, vmap vs loop, MAML meta-gradients."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lazyapps.functional import (
    adapt_tasks,
    buffers_of,
    forward,
    maml_meta_gradient,
    map_tasks,
    params_of,
    sgd_adapt,
)

from .._models import TwoInputs, WithUnused


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)).to(dtype)


def manual_mlp(p, x):
    """The same network written out by hand, independent of functional_call."""
    h = torch.tanh(x @ p["0.weight"].T + p["0.bias"])
    return h @ p["2.weight"].T + p["2.bias"]


def tasks(n_tasks=3, n=5, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tasks, n, 2, generator=g, dtype=dtype)
    y = torch.randn(n_tasks, n, 2, generator=g, dtype=dtype)
    return x, y


def test_params_forward_and_buffers():
    model = mlp()
    x = torch.randn(4, 2)
    p = params_of(model, detach=True)
    assert all(not v.requires_grad for v in p.values())
    assert all(v.requires_grad for v in params_of(model).values())
    torch.testing.assert_close(forward(model, p, buffers_of(model), x), model(x))
    shifted = {k: v + 1 for k, v in p.items()}
    torch.testing.assert_close(forward(model, shifted, {}, x), manual_mlp(shifted, x))


@pytest.mark.parametrize("per_param_lr", [False, True])
def test_sgd_adapt_matches_manual_loop(per_param_lr):
    model = mlp()
    (x, y), theta = tasks(1), params_of(model, detach=True)
    lr = {k: torch.full_like(v, 0.1 + 0.05 * i) for i, (k, v) in enumerate(theta.items())} if per_param_lr else 0.2
    before = {k: v.clone() for k, v in theta.items()}
    got = sgd_adapt(model, theta, {}, F.mse_loss, (x[0], y[0]), steps=3, lr=lr)

    ref = copy.deepcopy(model)
    for _ in range(3):
        loss = F.mse_loss(ref(x[0]), y[0])
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        with torch.no_grad():
            for (k, p), g in zip(ref.named_parameters(), grads):
                p -= (lr[k] if per_param_lr else lr) * g
    torch.testing.assert_close(got, dict(ref.named_parameters()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(theta, before, rtol=0, atol=0)  # input untouched


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("per_param_lr", [False, True])
def test_adapt_tasks_vmap_equals_loop(create_graph, per_param_lr, device):
    model = mlp().to(device)
    x, y = (t.to(device) for t in tasks(4))
    theta = {k: v.detach().requires_grad_() for k, v in params_of(model).items()}
    lr = {k: torch.full_like(v, 0.3) for k, v in theta.items()} if per_param_lr else 0.3
    kw = dict(steps=3, lr=lr, create_graph=create_graph)
    vec = adapt_tasks(model, theta, {}, F.mse_loss, (x, y), vectorize=True, **kw)
    loop = adapt_tasks(model, theta, {}, F.mse_loss, (x, y), vectorize=False, **kw)
    for k, v in theta.items():
        assert vec[k].shape == (4, *v.shape)
        assert not torch.allclose(vec[k][0], vec[k][1])  # tasks really differ
    torch.testing.assert_close(vec, loop, rtol=1e-5, atol=1e-5)
    # each slice is that task's own adaptation
    one = sgd_adapt(model, theta, {}, F.mse_loss, (x[2], y[2]), **kw)
    torch.testing.assert_close({k: v[2] for k, v in vec.items()}, one, rtol=1e-5, atol=1e-5)


def test_adapt_tasks_with_classification_and_multiple_inputs():
    torch.manual_seed(0)
    model = TwoInputs()
    u, v = torch.randn(2, 6, 2), torch.randn(2, 6, 2)
    y = torch.randint(0, 3, (2, 6))
    theta = params_of(model, detach=True)
    vec = adapt_tasks(model, theta, {}, F.cross_entropy, (u, v, y), steps=2, lr=0.5)
    loop = adapt_tasks(model, theta, {}, F.cross_entropy, (u, v, y), steps=2, lr=0.5, vectorize=False)
    torch.testing.assert_close(vec, loop, rtol=1e-5, atol=1e-5)


def test_batchnorm_running_stats_falls_back_to_loop_with_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    x, y = tasks(3)
    theta = params_of(model, detach=True)
    bufs_a = {k: v.clone() for k, v in buffers_of(model).items()}
    bufs_b = {k: v.clone() for k, v in buffers_of(model).items()}
    with pytest.warns(RuntimeWarning, match="falling back to a Python loop over tasks"):
        vec = adapt_tasks(model, theta, bufs_a, F.mse_loss, (x, y), steps=2, lr=0.1, vectorize=True)
    loop = adapt_tasks(model, theta, bufs_b, F.mse_loss, (x, y), steps=2, lr=0.1, vectorize=False)
    torch.testing.assert_close(vec, loop)
    torch.testing.assert_close(bufs_a, bufs_b)
    with pytest.warns(RuntimeWarning, match="falling back"):
        vec = maml_meta_gradient(model, theta, bufs_a, F.mse_loss, (x, y), (y, x), steps=2, lr=0.1)
    loop = maml_meta_gradient(model, theta, bufs_b, F.mse_loss, (x, y), (y, x), steps=2, lr=0.1, vectorize=False)
    torch.testing.assert_close(vec.grads, loop.grads)
    torch.testing.assert_close(bufs_a, bufs_b)


def test_bad_batches_raise():
    model = mlp()
    theta = params_of(model, detach=True)
    x, y = tasks(3)
    with pytest.raises(ValueError, match="inputs, targets"):
        sgd_adapt(model, theta, {}, F.mse_loss, (x[0],), steps=1, lr=0.1)
    with pytest.raises(ValueError, match="same leading task dim"):
        adapt_tasks(model, theta, {}, F.mse_loss, (x, y[:2]), steps=1, lr=0.1, vectorize=False)
    with pytest.raises(ValueError, match="keys of params"):
        sgd_adapt(model, theta, {}, F.mse_loss, (x[0], y[0]), steps=1, lr={"0.weight": torch.tensor(0.1)})


def reference_meta_loss(theta, support, query, steps, lr):
    """Mean query loss after plain SGD on each task, by hand (autograd per step, no torch.func)."""
    losses = []
    for t in range(support[0].shape[0]):
        p = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
        for _ in range(steps):
            loss = F.mse_loss(manual_mlp(p, support[0][t]), support[1][t])
            grads = torch.autograd.grad(loss, list(p.values()))
            p = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(p.items(), grads)}
        losses.append(F.mse_loss(manual_mlp(p, query[0][t]), query[1][t]).detach())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("vectorize", [True, False])
def test_maml_meta_gradient_matches_central_finite_differences(vectorize):
    dt = torch.float64
    model = mlp(dt)
    theta = params_of(model, detach=True)
    support, query = tasks(2, dtype=dt, seed=3), tasks(2, dtype=dt, seed=4)
    steps, lr, h = 3, 0.4, 1e-6
    res = maml_meta_gradient(model, theta, {}, F.mse_loss, support, query, steps=steps, lr=lr, vectorize=vectorize)
    torch.testing.assert_close(res.loss, reference_meta_loss(theta, support, query, steps, lr))
    assert res.task_losses.shape == (2,) and res.outputs.shape == (2, 5, 2) and res.lr_grads is None
    for k, v in theta.items():
        fd = torch.zeros_like(v)
        for i in range(v.numel()):
            plus = {n: w.clone() for n, w in theta.items()}
            minus = {n: w.clone() for n, w in theta.items()}
            plus[k].view(-1)[i] += h
            minus[k].view(-1)[i] -= h
            fd.view(-1)[i] = (reference_meta_loss(plus, support, query, steps, lr)
                              - reference_meta_loss(minus, support, query, steps, lr)) / (2 * h)
        torch.testing.assert_close(res.grads[k], fd, rtol=1e-6, atol=1e-8)


def test_first_order_maml_is_query_gradient_at_adapted_params():
    dt = torch.float64
    model = mlp(dt)
    theta = params_of(model, detach=True)
    support, query = tasks(2, dtype=dt, seed=3), tasks(2, dtype=dt, seed=4)
    fo = maml_meta_gradient(model, theta, {}, F.mse_loss, support, query, steps=2, lr=0.4, first_order=True)
    so = maml_meta_gradient(model, theta, {}, F.mse_loss, support, query, steps=2, lr=0.4)
    ref = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in range(2):
        p = sgd_adapt(model, theta, {}, F.mse_loss, (support[0][t], support[1][t]), steps=2, lr=0.4)
        p = {k: v.detach().requires_grad_() for k, v in p.items()}
        grads = torch.autograd.grad(F.mse_loss(manual_mlp(p, query[0][t]), query[1][t]) / 2, list(p.values()))
        for k, g in zip(p, grads):
            ref[k] += g
    torch.testing.assert_close(fo.grads, ref)
    assert not torch.allclose(so.grads["0.weight"], fo.grads["0.weight"])  # second-order terms matter


def test_meta_sgd_learning_rate_gradients_match_finite_differences():
    dt = torch.float64
    model = mlp(dt)
    theta = params_of(model, detach=True)
    support, query = tasks(2, dtype=dt, seed=3), tasks(2, dtype=dt, seed=4)
    lr = {k: torch.full_like(v, 0.3) for k, v in theta.items()}
    res = maml_meta_gradient(model, theta, {}, F.mse_loss, support, query, steps=2, lr=lr)

    def meta_loss(lrs):
        adapted = adapt_tasks(model, theta, {}, F.mse_loss, support, steps=2, lr=lrs)
        return torch.stack([F.mse_loss(manual_mlp({k: v[t] for k, v in adapted.items()}, query[0][t]), query[1][t])
                            for t in range(2)]).mean()

    h = 1e-6
    for k in ("0.bias", "2.weight"):
        for i in range(lr[k].numel()):
            plus = {n: w.clone() for n, w in lr.items()}
            minus = {n: w.clone() for n, w in lr.items()}
            plus[k].view(-1)[i] += h
            minus[k].view(-1)[i] -= h
            fd = (meta_loss(plus) - meta_loss(minus)) / (2 * h)
            torch.testing.assert_close(res.lr_grads[k].view(-1)[i], fd, rtol=1e-6, atol=1e-9)


def test_map_tasks_falls_back_when_vmap_fails():
    x = torch.randn(3, 4)
    fn = lambda row: row * float(row.sum())  # noqa: E731 - .item()-style code cannot be vmapped
    with pytest.warns(RuntimeWarning, match="vmap over tasks failed"):
        got = map_tasks(fn, x)
    torch.testing.assert_close(got, x * x.sum(1, keepdim=True))
    torch.testing.assert_close(map_tasks(lambda r: (r.sum(), {"d": 2 * r}), x)[1]["d"], 2 * x)


def test_map_tasks_raises_the_callers_error_without_blaming_vmap():
    import warnings

    x = torch.randn(3, 4)
    targets = torch.tensor([0, 1, 7])  # class 7 of 4: an error of the data, not of vmap

    def fn(row, t):
        return torch.nn.functional.cross_entropy(row.unsqueeze(0), t.unsqueeze(0))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "vmap failed" warning before the real error
        with pytest.raises(IndexError, match="out of bounds"):
            map_tasks(fn, x, targets)


def test_map_tasks_passes_randomness_to_vmap():
    x = torch.ones(3, 64)
    drop = lambda row: F.dropout(row, 0.5, training=True)  # noqa: E731
    torch.manual_seed(0)
    same = map_tasks(drop, x, randomness="same")
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])
    different = map_tasks(drop, x, randomness="different")
    assert not torch.equal(different[0], different[1])


def test_batchnorm_in_eval_mode_is_vectorised_without_warning():
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    x, y = tasks(3)
    theta = params_of(model, detach=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # running statistics are only read: vmap can run it, no fallback
        vec = adapt_tasks(model, theta, buffers_of(model), F.mse_loss, (x, y), steps=2, lr=0.1)
    loop = adapt_tasks(model, theta, buffers_of(model), F.mse_loss, (x, y), steps=2, lr=0.1, vectorize=False)
    torch.testing.assert_close(vec, loop)


def test_sgd_adapt_takes_zero_steps_as_the_identity_and_refuses_negative_steps():
    model = mlp()
    (x, y), theta = tasks(1), params_of(model, detach=True)
    same = sgd_adapt(model, theta, {}, F.mse_loss, (x[0], y[0]), steps=0, lr=0.5)
    torch.testing.assert_close(same, theta, rtol=0, atol=0)
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        sgd_adapt(model, theta, {}, F.mse_loss, (x[0], y[0]), steps=-1, lr=0.5)


def test_map_tasks_loop_handles_a_single_task():
    x = torch.randn(1, 4)
    doubled, extra = map_tasks(lambda r: (2 * r, {"s": r.sum()}), x, vectorize=False)
    torch.testing.assert_close(doubled, 2 * x)
    torch.testing.assert_close(extra["s"], x.sum(1))


def test_loop_fallback_warns_only_when_vmap_was_tried_and_names_the_callers_line():
    import warnings

    x, y = tasks(3)
    plain = mlp().train()  # train mode, but nothing updates running statistics: vmap runs
    norm = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    unvmappable = lambda row: row * float(row.sum())  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapt_tasks(plain, params_of(plain, detach=True), {}, F.mse_loss, (x, y), steps=1, lr=0.1)
        adapt_tasks(norm, params_of(norm, detach=True), buffers_of(norm), F.mse_loss, (x, y), steps=1, lr=0.1,
                    vectorize=False)  # "vectorize=False to silence this"
        map_tasks(unvmappable, x[:, :, 0], vectorize=False)
    # the warnings that do come point at the line that called the engine (stacklevel), not into functional.py
    with pytest.warns(RuntimeWarning, match="vmap over tasks failed") as caught:
        map_tasks(unvmappable, x[:, :, 0])
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(RuntimeWarning, match="falling back to a Python loop over tasks") as caught:
        adapt_tasks(norm, params_of(norm, detach=True), buffers_of(norm), F.mse_loss, (x, y), steps=1, lr=0.1)
    assert [w.filename for w in caught] == [__file__]


def dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.5), nn.Linear(16, 2)).train()


def test_randomness_reaches_every_vmap_of_adapt_tasks_and_maml_meta_gradient():
    import warnings

    model = dropout_net()
    x, y = tasks(1)
    x, y = x.expand(3, -1, -1), y.expand(3, -1, -1)  # three identical tasks: only dropout masks can differ
    theta = params_of(model, detach=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # vmap runs the dropout itself: no loop fallback
        same = adapt_tasks(model, theta, {}, F.mse_loss, (x, y), steps=1, lr=0.5, randomness="same")
        different = adapt_tasks(model, theta, {}, F.mse_loss, (x, y), steps=1, lr=0.5, randomness="different")
        meta = maml_meta_gradient(model, theta, {}, F.mse_loss, (x, y), (x, y), steps=1, lr=0.5, randomness="same")
    assert torch.equal(same["0.weight"][0], same["0.weight"][1]) and torch.equal(same["0.weight"][1], same["0.weight"][2])
    assert not torch.allclose(different["0.weight"][0], different["0.weight"][1])
    assert torch.equal(meta.task_losses[0], meta.task_losses[1]) and torch.equal(meta.task_losses[1], meta.task_losses[2])


def test_maml_meta_gradient_with_vectorize_false_never_tries_vmap():
    import warnings

    def loss_fn(out, target):  # reads a value into Python: vmap cannot run it, a loop can
        return F.mse_loss(out, target) * (1.0 + 0.0 * float(target.sum()))

    dt = torch.float64
    model = mlp(dt)
    theta = params_of(model, detach=True)
    support, query = tasks(2, dtype=dt, seed=3), tasks(2, dtype=dt, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        looped = maml_meta_gradient(model, theta, {}, loss_fn, support, query, steps=2, lr=0.4, vectorize=False)
    reference = maml_meta_gradient(model, theta, {}, F.mse_loss, support, query, steps=2, lr=0.4)
    torch.testing.assert_close(looped.grads, reference.grads)




def test_maml_meta_gradient_of_a_two_input_model_matches_a_per_task_reference():
    torch.manual_seed(0)
    model = TwoInputs().double()
    g = torch.Generator().manual_seed(5)
    support = (torch.randn(2, 6, 2, generator=g, dtype=torch.float64), torch.randn(2, 6, 2, generator=g, dtype=torch.float64),
               torch.randint(0, 3, (2, 6), generator=g))
    query = (torch.randn(2, 4, 2, generator=g, dtype=torch.float64), torch.randn(2, 4, 2, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (2, 4), generator=g))
    theta = {k: v.detach().requires_grad_() for k, v in params_of(model).items()}
    res = maml_meta_gradient(model, theta, {}, F.cross_entropy, support, query, steps=2, lr=0.5)
    # reference: second-order autograd through each task's adaptation, written out by hand
    losses = []
    for t in range(2):
        p = dict(theta)
        for _ in range(2):
            out = p["a.weight"] @ support[0][t].T + p["b.weight"] @ support[1][t].T
            loss = F.cross_entropy(out.T + p["a.bias"] + p["b.bias"], support[2][t])
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            p = {k: v - 0.5 * gr for (k, v), gr in zip(p.items(), grads)}
        out = (p["a.weight"] @ query[0][t].T + p["b.weight"] @ query[1][t].T).T + p["a.bias"] + p["b.bias"]
        losses.append(F.cross_entropy(out, query[2][t]))
    want = torch.stack(losses).mean()
    torch.testing.assert_close(res.loss, want.detach())
    torch.testing.assert_close(res.grads, dict(zip(theta, torch.autograd.grad(want, list(theta.values())))))


def test_maml_meta_gradients_of_a_parameter_the_model_ignores_are_zero_tensors():
    torch.manual_seed(0)
    model = WithUnused(2, 2, 3)
    theta = params_of(model, detach=True)
    lr = {k: torch.full_like(v, 0.3) for k, v in theta.items()}
    res = maml_meta_gradient(model, theta, {}, F.mse_loss, tasks(2), tasks(2, seed=2), steps=2, lr=lr)
    torch.testing.assert_close(res.grads["unused"], torch.zeros(3), rtol=0, atol=0)
    torch.testing.assert_close(res.lr_grads["unused"], torch.zeros(3), rtol=0, atol=0)
    assert res.grads["lin.weight"].abs().max() > 0


def test_maml_meta_gradient_returns_detached_results_and_leaves_params_and_lr_alone():
    model = mlp()
    theta = params_of(model, detach=True)
    lr = {k: torch.full_like(v, 0.3) for k, v in theta.items()}
    res = maml_meta_gradient(model, theta, {}, F.mse_loss, tasks(2), tasks(2, seed=2), steps=2, lr=lr)
    returned = [res.loss, res.task_losses, res.outputs, *res.grads.values(), *res.lr_grads.values()]
    assert all(not t.requires_grad and t.grad_fn is None for t in returned)  # no graph kept alive per meta-step
    assert not any(t.requires_grad for t in (*theta.values(), *lr.values()))  # the caller's tensors are not flagged


def test_maml_meta_gradient_refuses_a_query_without_targets():
    model = mlp()
    x, y = tasks(2)
    with pytest.raises(ValueError, match="inputs, targets"):
        maml_meta_gradient(model, params_of(model, detach=True), {}, F.mse_loss, (x, y), (x,), steps=1, lr=0.1)


def test_maml_meta_gradient_scores_the_query_with_the_given_buffers():
    """BatchNorm in eval mode normalises the query with the caller's running statistics, not the module's own."""
    dt = torch.float64
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).to(dt).eval()
    theta = params_of(model, detach=True)
    bufs = {k: v.clone() for k, v in buffers_of(model).items()}
    bufs["1.running_mean"] += 0.5
    bufs["1.running_var"] *= 4.0
    support, query = tasks(2, dtype=dt, seed=3), tasks(2, dtype=dt, seed=4)
    res = maml_meta_gradient(model, theta, bufs, F.mse_loss, support, query, steps=0, lr=0.1)
    ref = copy.deepcopy(model)
    ref.load_state_dict({**theta, **bufs})
    want = torch.stack([F.mse_loss(ref(query[0][t]), query[1][t]) for t in range(2)]).mean()
    torch.testing.assert_close(res.loss, want.detach())
    torch.testing.assert_close(res.grads, dict(zip(theta, torch.autograd.grad(want, list(ref.parameters())))))
