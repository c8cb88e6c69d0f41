"""Meta-learner LSTM: preprocessing, the cell update against nn.LSTMCell and by hand, first vs second order."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.meta_lstm import (
    MetaLSTM,
    MetaLSTMCell,
    flatten_params,
    initial_state,
    meta_lstm_adapt,
    meta_lstm_step,
    preprocess,
    unflatten_params,
)
from fewshot.tasks import TaskBatch
from lazyapps.functional import params_of

from ._checks import meta_trains_on_omniglot, sine_mse_drops


def test_preprocessing_matches_closed_form():
    x = torch.tensor([1.0, -0.5, 3.0, 1e-5, -2e-6, 0.0], dtype=torch.float64)
    p = 10.0
    expected = torch.tensor([
        [0.0, 1.0],
        [math.log(0.5) / p, -1.0],
        [math.log(3.0) / p, 1.0],
        [-1.0, math.exp(p) * 1e-5],  # below e^-10 ≈ 4.5e-5: the linear branch
        [-1.0, -math.exp(p) * 2e-6],
        [-1.0, 0.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(preprocess(x, p=p), expected)
    # p sets the threshold: with p = 2 (e^-2 ≈ 0.135) 0.1 is "small".
    torch.testing.assert_close(preprocess(torch.tensor([0.1]), p=2.0), torch.tensor([[-1.0, math.exp(2.0) * 0.1]]))
    # No NaN gradients from the branch that is not taken (log at 0).
    x = torch.tensor([0.0, 1e-7, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(preprocess(x).sum(), x)
    assert torch.isfinite(g).all()


def test_step_matches_lstmcell_and_gate_equations():
    torch.manual_seed(0)
    cell = MetaLSTMCell(hidden_size=5).double()
    with torch.no_grad():
        for w in cell.parameters():
            w.uniform_(-0.5, 0.5)
    w = cell.weights()
    g = torch.Generator().manual_seed(1)
    n = 10
    theta, grad = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    grad[3] = 1e-6  # exercise the small-gradient branch of the preprocessing
    loss = torch.tensor(0.7, dtype=torch.float64)
    state = initial_state(theta, 5)
    assert state.h.shape == (n, 5) and state.i.shape == (n,) and float(state.f.abs().sum()) == 0.0
    state = state._replace(i=torch.rand(n, generator=g, dtype=torch.float64), f=torch.rand(n, generator=g, dtype=torch.float64),
                           h=torch.randn(n, 5, generator=g, dtype=torch.float64), c=torch.randn(n, 5, generator=g, dtype=torch.float64))
    new, new_state = meta_lstm_step(w, theta, grad, loss, state)

    # Reference: torch's LSTMCell for layer 1, then the gate equations of the paper written out.
    ref = nn.LSTMCell(4, 5).double()
    with torch.no_grad():
        ref.weight_ih.copy_(w["lstm_input"].T)
        ref.weight_hh.copy_(w["lstm_hidden"].T)
        ref.bias_ih.copy_(w["lstm_bias"])
        ref.bias_hh.zero_()
    x = torch.cat([preprocess(grad), preprocess(loss.reshape(1)).expand(n, 2)], dim=1)
    h1, c1 = ref(x, (state.h, state.c))
    wi, wf = w["input_gate"], w["forget_gate"]
    i = torch.sigmoid(torch.cat([h1, theta[:, None], state.i[:, None]], 1) @ wi + w["input_bias"])
    f = torch.sigmoid(torch.cat([h1, theta[:, None], state.f[:, None]], 1) @ wf + w["forget_bias"])
    torch.testing.assert_close(new, f * theta - i * grad)
    torch.testing.assert_close(new_state.h, h1)
    torch.testing.assert_close(new_state.c, c1)
    torch.testing.assert_close(new_state.i, i)
    torch.testing.assert_close(new_state.f, f)


def test_flatten_round_trip():
    params = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([7.0, 8.0])}
    flat = flatten_params(params)
    torch.testing.assert_close(flat, torch.tensor([0.0, 1, 2, 3, 4, 5, 7, 8]))
    back = unflatten_params(flat, params)
    assert all(torch.equal(back[k], params[k]) for k in params)


def test_hand_set_gates_give_shrunk_gradient_step():
    # With the gates' weights zero, i = σ(b_I) and f = σ(b_F) for every coordinate:
    # θ_1 = σ(b_F)·θ_0 − σ(b_I)·∇L(θ_0), with ∇ of the MSE of a linear model in closed form.
    model = nn.Linear(2, 1, bias=False).double()
    theta = params_of(model, detach=True)
    cell = MetaLSTMCell(hidden_size=3).double()
    with torch.no_grad():
        cell.input_gate.zero_()
        cell.forget_gate.zero_()
        cell.input_bias.fill_(math.log(0.1 / 0.9))  # σ = 0.1
        cell.forget_bias.fill_(math.log(0.95 / 0.05))  # σ = 0.95
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.2]], dtype=torch.float64)
    y = torch.tensor([[0.5], [1.0], [-2.0]], dtype=torch.float64)
    w0 = theta["weight"]
    grad = 2 * (x @ w0.T - y).T @ x / len(x)  # d/dw mean((xwᵀ - y)²)
    out = meta_lstm_adapt(model, theta, {}, F.mse_loss, (x, y), cell.weights(), steps=1)
    torch.testing.assert_close(out["weight"], 0.95 * w0 - 0.1 * grad)


def _query_loss(model, init, weights, task, first_order):
    sx, sy, qx, qy = task
    fast = meta_lstm_adapt(model, init, {}, F.mse_loss, (sx, sy), weights, steps=2, first_order=first_order)
    return F.mse_loss(torch.func.functional_call(model, fast, (qx,)), qy)


def test_second_order_gradient_matches_finite_differences_and_first_order_differs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    cell = MetaLSTMCell(hidden_size=3).double()
    with torch.no_grad():
        cell.input_bias.fill_(-1.0)  # larger steps than the default so the inner loop matters
    g = torch.Generator().manual_seed(3)
    task = [torch.randn(5, 1, generator=g, dtype=torch.float64) for _ in range(4)]
    init = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    weights = {k: v.detach().requires_grad_() for k, v in cell.weights().items()}
    checks = [("w", "input_bias", ()), ("w", "forget_bias", ()), ("w", "input_gate", (4,)), ("w", "lstm_bias", (2,)),
              ("p", "0.weight", (1, 0)), ("p", "2.bias", (0,))]
    grads = {}
    for order in (False, True):
        loss = _query_loss(model, init, weights, task, first_order=order)
        gw = torch.autograd.grad(loss, [*weights.values(), *init.values()])
        grads[order] = {**dict(zip([("w", k) for k in weights], gw[:len(weights)])),
                        **dict(zip([("p", k) for k in init], gw[len(weights):]))}
    eps, max_first_order_gap = 1e-6, 0.0
    for kind, name, idx in checks:
        def loss_at(delta):
            w = {k: v.detach().clone() for k, v in weights.items()}
            p = {k: v.detach().clone() for k, v in init.items()}
            target = w if kind == "w" else p
            target[name][idx] += delta
            return float(_query_loss(model, p, w, task, first_order=False))
        fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        assert abs(float(grads[False][(kind, name)][idx]) - fd) < 1e-6 * max(1.0, abs(fd)), (name, idx)
        max_first_order_gap = max(max_first_order_gap, abs(float(grads[True][(kind, name)][idx]) - fd))
    # The paper's first-order assumption ignores real dependencies: it is not the exact gradient.
    assert max_first_order_gap > 1e-4


def test_vmap_and_loop_meta_steps_agree_and_adapt_shapes():
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    tasks = TaskBatch(r(3, 4, 1), r(3, 4, 1), r(3, 5, 1), r(3, 5, 1))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    a = MetaLSTM(net, problem="regression", inner_steps=2, first_order=False, vectorize=True)
    b = MetaLSTM(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)).double(), problem="regression",
                 inner_steps=2, first_order=False, vectorize=False)
    b.load_state_dict(a.state_dict())
    assert abs(a.meta_step(tasks)["loss"] - b.meta_step(tasks)["loss"]) < 1e-12
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb)
    fast = a.adapt(tasks.support)
    assert {k: v.shape for k, v in fast.items()} == {k: (3, *v.shape) for k, v in a.theta.items()}
    assert all(not v.requires_grad for v in fast.values())


def test_short_sine_run_lowers_query_mse():
    from models_zoo.fewshot_nets import SineMLP

    torch.manual_seed(0)
    learner = MetaLSTM(SineMLP(hidden=20), problem="regression", inner_steps=2, meta_lr=5e-3)  # a larger meta lr: short run
    sine_mse_drops(learner, iterations=40, meta_batch=5, factor=0.85)


def test_runs_on_conv4_omniglot(omniglot_tasks):
    from models_zoo.fewshot_nets import Conv4

    torch.manual_seed(0)
    meta_trains_on_omniglot(MetaLSTM(Conv4(num_classes=5, hidden=8), inner_steps=2), omniglot_tasks)


def test_preprocessing_adds_its_two_features_as_a_last_dim():
    x = torch.tensor([[1.0, -1e-6, 0.5], [2.0, 0.0, -3.0]], dtype=torch.float64)
    out = preprocess(x)
    assert out.shape == (2, 3, 2)
    torch.testing.assert_close(out.reshape(-1, 2), preprocess(x.reshape(-1)))


def test_cell_starts_as_the_paper_says():
    # hidden size 20; forget bias in [4, 6] (f ≈ 1), input bias in [−5, −4] (a small step), gate weights in
    # ±0.01, layer-1 weights U(±1/√20) (nn.LSTM's rule) and zero biases
    forget, inputs = [], []
    for seed in range(20):
        torch.manual_seed(seed)
        cell = MetaLSTMCell()
        forget.append(float(cell.forget_bias.detach()))
        inputs.append(float(cell.input_bias.detach()))
    assert cell.hidden_size == 20 and cell.lstm_hidden.shape == (20, 80) and cell.input_gate.shape == (22,)
    assert 4.0 <= min(forget) and max(forget) <= 6.0 and -5.0 <= min(inputs) and max(inputs) <= -4.0
    assert max(forget) - min(forget) > 1.0 and max(inputs) - min(inputs) > 0.5  # drawn, not constant
    bound = 1 / math.sqrt(20)
    for w, limit in ((cell.lstm_input, bound), (cell.lstm_hidden, bound), (cell.input_gate, 0.01), (cell.forget_gate, 0.01)):
        w = w.detach()
        assert float(w.abs().max()) <= limit and float(w.max()) > 0.5 * limit and float(w.min()) < -0.5 * limit
    assert torch.equal(cell.lstm_bias, torch.zeros(80))


def test_adapt_defaults_to_the_papers_first_order_loop_with_p_10():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    cell = MetaLSTMCell(hidden_size=3).double()
    with torch.no_grad():
        for w in cell.parameters():
            w.uniform_(-0.5, 0.5)  # every input of the gates matters, the preprocessed ones included
    g = torch.Generator().manual_seed(9)
    sx, sy = torch.randn(5, 1, generator=g, dtype=torch.float64), torch.randn(5, 1, generator=g, dtype=torch.float64)
    init = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}

    def run(**kw):
        fast = meta_lstm_adapt(model, init, {}, F.mse_loss, (sx, sy), cell.weights(), steps=2, **kw)
        return flatten_params(fast), torch.autograd.grad(flatten_params(fast).sum(), list(init.values()))

    default, default_grad = run()
    paper, paper_grad = run(first_order=True, preprocess_p=10.0)
    _, second_grad = run(first_order=False, preprocess_p=10.0)
    other_p, _ = run(preprocess_p=5.0)
    torch.testing.assert_close(default, paper)
    for a, b in zip(default_grad, paper_grad):
        torch.testing.assert_close(a, b)
    assert max(float((a - b).abs().max()) for a, b in zip(default_grad, second_grad)) > 1e-6
    assert float((default - other_p).detach().abs().max()) > 1e-6


def test_learner_defaults_are_the_papers_settings():
    # Ravi & Larochelle: 5 updates per task, a 20-unit first layer, the first-order assumption, Adam at 1e-3 with
    # the meta-gradient's norm clipped at 0.25, Andrychowicz et al.'s p = 10
    learner = MetaLSTM(nn.Linear(1, 1), problem="regression")
    assert (learner.inner_steps, learner.first_order, learner.grad_clip) == (5, True, 0.25)
    assert (learner.meta_learner.hidden_size, learner.meta_learner.lstm_hidden.shape) == (20, (20, 80))
    assert learner.preprocess_p == 10.0 and learner.meta_learner.preprocess_p == 10.0
    assert isinstance(learner.meta_optimizer, torch.optim.Adam) and learner.meta_optimizer.defaults["lr"] == 1e-3
    # the meta-optimiser trains the cell as well as θ_0
    cell = {k: v.detach().clone() for k, v in learner.meta_learner.weights().items()}
    g = torch.Generator().manual_seed(2)
    learner.meta_step(TaskBatch(*(torch.randn(2, 4, 1, generator=g) for _ in range(4))))
    assert all(not torch.equal(cell[k], v.detach()) for k, v in learner.meta_learner.weights().items())


def test_learner_meta_step_is_the_clipped_gradient_through_its_own_adaptation():
    """meta_step: the gradient of the mean query loss through ``inner_steps`` updates with the learner's first_order and
    preprocess_p, on θ_0 and the cell alike, its global norm clipped at grad_clip; adapt makes the same updates."""
    g = torch.Generator().manual_seed(4)
    tasks = TaskBatch(*(torch.randn(2, 4, 1, generator=g, dtype=torch.float64) for _ in range(4)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    learner = MetaLSTM(model, problem="regression", inner_steps=3, hidden_size=4, first_order=False, preprocess_p=5.0,
                       grad_clip=1e-3)
    with torch.no_grad():
        learner.meta_learner.input_bias.fill_(-1.0)  # steps large enough for the inner loop to matter
    theta = {k: v.detach().clone().requires_grad_() for k, v in learner.theta.items()}
    cell = {k: v.detach().clone().requires_grad_() for k, v in learner.meta_learner.weights().items()}

    def query_loss(t):
        fast = meta_lstm_adapt(model, theta, {}, F.mse_loss, (tasks.support_x[t], tasks.support_y[t]), cell, steps=3,
                               first_order=False, preprocess_p=5.0)
        return F.mse_loss(torch.func.functional_call(model, fast, (tasks.query_x[t],)), tasks.query_y[t]), fast

    loss = (query_loss(0)[0] + query_loss(1)[0]) / 2
    grads = torch.autograd.grad(loss, [*theta.values(), *cell.values()])
    norm = float(torch.cat([v.flatten() for v in grads]).norm())
    assert norm > 1e-2  # well above the bound: the step is clipped
    for t in range(2):
        fast = learner.adapt(tasks.support)
        for k, v in query_loss(t)[1].items():
            torch.testing.assert_close(fast[k][t], v.detach())
    learner.meta_optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)  # the step is then −(clipped gradient)
    assert abs(learner.meta_step(tasks)["loss"] - float(loss.detach())) < 1e-12
    after = [*learner.theta.values(), *learner.meta_learner.weights().values()]
    for old, new, grad in zip([*theta.values(), *cell.values()], after, grads):
        torch.testing.assert_close(new.detach() - old.detach(), -grad * 1e-3 / (norm + 1e-6))
