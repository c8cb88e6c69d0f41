"""TURTLE: meta-network shape, the update rule with a hand-set network, second-order meta-gradient vs finite differences."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.turtle import Turtle, UpdateNetwork, turtle_adapt, update_network_forward
from fewshot.tasks import TaskBatch
from lazyapps.functional import params_of

from ._checks import meta_trains_on_omniglot, sine_mse_drops


def test_default_network_is_five_hidden_layers_of_twenty_relu_units():
    net = UpdateNetwork()
    assert [(layer.in_features, layer.out_features) for layer in net.layers] == [(2, 20)] + [(20, 20)] * 4 + [(20, 1)]
    x = torch.randn(3, 4, 2)
    ref = x
    for i, layer in enumerate(net.layers):
        ref = layer(ref)
        ref = torch.relu(ref) if i < 5 else ref
    torch.testing.assert_close(net(x), ref.squeeze(-1))
    learner = Turtle(nn.Linear(3, 2), time_input=True)
    assert learner.update_network.layers[0].in_features == 3
    assert [a.shape for a in learner.alpha.values()] == [p.shape for p in learner.theta.values()]


def _selector(column: int, in_features: int = 2) -> dict:
    """Weights of a 2-hidden-layer ReLU network computing exactly its input ``column``: relu(z) − relu(−z)."""
    w0 = torch.zeros(2, in_features, dtype=torch.float64)
    w0[0, column], w0[1, column] = 1.0, -1.0
    return {
        "layers.0.weight": w0, "layers.0.bias": torch.zeros(2, dtype=torch.float64),
        "layers.1.weight": torch.eye(2, dtype=torch.float64), "layers.1.bias": torch.zeros(2, dtype=torch.float64),
        "layers.2.weight": torch.tensor([[1.0, -1.0]], dtype=torch.float64), "layers.2.bias": torch.zeros(1, dtype=torch.float64),
    }


def test_update_is_learning_rate_times_network_output():
    model = nn.Linear(2, 1, bias=False).double()
    theta = params_of(model, detach=True)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.2]], dtype=torch.float64)
    y = torch.tensor([[0.5], [1.0], [-2.0]], dtype=torch.float64)
    alpha = {"weight": torch.tensor([[0.3, 0.05]], dtype=torch.float64)}

    def grad_at(w):  # closed-form gradient of the MSE of a linear model
        return 2 * (x @ w.T - y).T @ x / len(x)

    # Network = raw gradient: plain gradient descent with per-parameter rates.
    out = turtle_adapt(model, theta, {}, F.mse_loss, (x, y), _selector(0), alpha, steps=2)
    w1 = theta["weight"] - alpha["weight"] * grad_at(theta["weight"])
    torch.testing.assert_close(out["weight"], w1 - alpha["weight"] * grad_at(w1))

    # Network = moving average a_t = 0.9 a_{t−1} + 0.1 ∇_t, a_0 = 0: a momentum-like update.
    out = turtle_adapt(model, theta, {}, F.mse_loss, (x, y), _selector(1), alpha, steps=2, beta=0.9)
    a1 = 0.1 * grad_at(theta["weight"])
    w1 = theta["weight"] - alpha["weight"] * a1
    a2 = 0.9 * a1 + 0.1 * grad_at(w1)
    torch.testing.assert_close(out["weight"], w1 - alpha["weight"] * a2)

    # The time-step input is t/T.
    net = _selector(2, in_features=3)
    out = turtle_adapt(model, theta, {}, F.mse_loss, (x, y), net, alpha, steps=2, time_input=True)
    torch.testing.assert_close(out["weight"], theta["weight"] - alpha["weight"] * (0.5 + 1.0))
    torch.testing.assert_close(update_network_forward(net, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)),
                               torch.tensor([3.0], dtype=torch.float64))


def test_second_order_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    g = torch.Generator().manual_seed(4)
    tasks = TaskBatch(*(torch.randn(2, 5, 1, generator=g, dtype=torch.float64) for _ in range(4)))
    learner = Turtle(model, problem="regression", inner_steps=3, hidden=(4, 4), lr_init=0.05, time_input=True)
    learner.double()
    learner.meta_optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)  # the step is then −(meta-gradient)
    before = {k: v.detach().clone() for k, v in learner.named_parameters()}
    learner.meta_step(tasks)
    grads = {k: before[k] - v.detach() for k, v in learner.named_parameters()}

    def loss_with(name, idx, delta):
        p = {k: v.clone() for k, v in before.items()}
        p[name][idx] += delta
        theta = {k[len("model."):]: v for k, v in p.items() if k.startswith("model.")}
        network = {k[len("update_network."):]: v for k, v in p.items() if k.startswith("update_network.")}
        alpha = dict(zip(theta, [p[f"learning_rates.{i}"] for i in range(len(theta))]))
        losses = []
        for t in range(tasks.num_tasks):
            fast = turtle_adapt(model, theta, {}, F.mse_loss, (tasks.support_x[t], tasks.support_y[t]), network, alpha,
                                steps=3, time_input=True)
            losses.append(F.mse_loss(torch.func.functional_call(model, fast, (tasks.query_x[t],)), tasks.query_y[t]))
        return float(torch.stack(losses).mean())

    eps = 1e-6
    for name, idx in [("model.0.weight", (2, 0)), ("model.2.bias", (0,)), ("learning_rates.0", (1, 0)),
                      ("learning_rates.3", (0,)), ("update_network.layers.0.weight", (1, 2)),
                      ("update_network.layers.2.bias", (0,))]:
        fd = (loss_with(name, idx, eps) - loss_with(name, idx, -eps)) / (2 * eps)
        assert abs(float(grads[name][idx]) - fd) < 1e-6 * max(1.0, abs(fd)), (name, float(grads[name][idx]), fd)


def test_vmap_and_loop_agree_and_first_order_differs():
    g = torch.Generator().manual_seed(6)
    tasks = TaskBatch(*(torch.randn(3, 4, 1, generator=g, dtype=torch.float64) for _ in range(4)))

    def make(**kw):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        learner = Turtle(net, problem="regression", inner_steps=2, lr_init=0.1, **kw).double()
        learner.meta_optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
        return learner

    a, b, c = make(vectorize=True), make(vectorize=False), make(first_order=True)
    assert abs(a.meta_step(tasks)["loss"] - b.meta_step(tasks)["loss"]) < 1e-12
    c.meta_step(tasks)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb)
    gap = max(float((va - vc).abs().max()) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))
    assert gap > 1e-6
    fast = a.adapt(tasks.support)
    assert {k: v.shape for k, v in fast.items()} == {k: (3, *v.shape) for k, v in a.theta.items()}


def test_short_sine_run_lowers_query_mse():
    from models_zoo.fewshot_nets import SineMLP

    torch.manual_seed(0)
    learner = Turtle(SineMLP(hidden=20), problem="regression", inner_steps=2, meta_lr=5e-3)  # a larger meta lr: short run
    sine_mse_drops(learner, iterations=60, meta_batch=5, factor=0.8)


def test_runs_on_conv4_omniglot(omniglot_tasks):
    from models_zoo.fewshot_nets import Conv4

    torch.manual_seed(0)
    meta_trains_on_omniglot(Turtle(Conv4(num_classes=5, hidden=8), inner_steps=2, lr_init=0.4), omniglot_tasks)


def test_grad_clip_bounds_the_meta_gradient_norm_and_none_leaves_it():
    g = torch.Generator().manual_seed(8)
    tasks = TaskBatch(*(3 * torch.randn(3, 4, 1, generator=g, dtype=torch.float64) for _ in range(4)))

    def meta_gradient_norm(**kw):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        learner = Turtle(net, problem="regression", inner_steps=2, lr_init=0.1, **kw).double()
        learner.meta_step(tasks)  # the (clipped) meta-gradient stays in .grad until the next step
        return float(torch.sqrt(sum((p.grad ** 2).sum() for p in learner.parameters() if p.grad is not None)))

    free = meta_gradient_norm()
    assert free > 0.5  # the bound below really cuts it
    assert abs(meta_gradient_norm(grad_clip=0.25) - 0.25) < 1e-6  # (clip_grad_norm_ divides by norm + 1e-6)
    assert abs(meta_gradient_norm(grad_clip=10 * free) - free) < 1e-12  # above the norm: unchanged


def test_gradient_init_makes_the_network_output_exactly_the_gradient():
    # init="gradient": m([∇, a]) = relu(∇) − relu(−∇) = ∇, whatever the moving average a
    torch.manual_seed(3)
    for hidden in ((20,) * 5, (2, 2)):  # two units per layer are enough
        net = UpdateNetwork(hidden=hidden)
        x = torch.randn(50, 2) * 3
        torch.testing.assert_close(net(x), x[:, 0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs at least 2 units per hidden layer"):
        UpdateNetwork(hidden=(20, 1))
    UpdateNetwork(hidden=(20, 1), init="random")  # the random init has no such need
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        UpdateNetwork(init="zeros")


def test_random_init_forward_is_the_written_out_network_and_ignores_the_gradients_scale():
    torch.manual_seed(4)
    net = UpdateNetwork(init="random", hidden=(6, 6))
    x = torch.randn(7, 2)
    ref = torch.relu(torch.relu(x @ net.layers[0].weight.T + net.layers[0].bias) @ net.layers[1].weight.T + net.layers[1].bias)
    torch.testing.assert_close(net(x), (ref @ net.layers[2].weight.T + net.layers[2].bias).squeeze(-1))
    assert not torch.allclose(net(x), x[:, 0], atol=1e-2)


def test_default_learner_starts_as_gradient_descent_with_rate_alpha():
    # Turtle's defaults: β = 0.9, second order (the paper's key ingredient), m = ∇ at the start, so one inner
    # step is θ − α∇ with α = lr_init, for a linear model whose MSE gradient is known in closed form
    model = nn.Linear(2, 1, bias=False).double()
    learner = Turtle(model, problem="regression", inner_steps=1, lr_init=0.1).double()
    assert learner.beta == 0.9 and learner.first_order is False
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.2]], dtype=torch.float64)
    y = torch.tensor([[0.5], [1.0], [-2.0]], dtype=torch.float64)
    w0 = model.weight.detach().clone()
    fast = learner.adapt((x[None], y[None]))
    torch.testing.assert_close(fast["weight"][0], w0 - 0.1 * 2 * (x @ w0.T - y).T @ x / len(x))


def test_gradient_init_keeps_the_other_units_default_and_passes_units_0_and_1_through_unbiased():
    torch.manual_seed(6)
    net = UpdateNetwork(hidden=(5, 5, 5))
    torch.manual_seed(6)
    plain = UpdateNetwork(hidden=(5, 5, 5), init="random")
    for layer, ref in zip(net.layers[:-1], plain.layers[:-1]):  # units 2.. keep PyTorch's default initialisation
        assert torch.equal(layer.weight[2:], ref.weight[2:]) and torch.equal(layer.bias[2:], ref.bias[2:])
    assert torch.equal(net.layers[-1].weight[0, 2:], torch.zeros(3))  # ... and send nothing to the output
    # units 0/1 carry relu(∇) and relu(−∇) through unbiased ReLUs: a middle layer's bias of unit 0 moves the
    # output only while ∇ > 0 (its ReLU is off for ∇ < 0)
    for g, expected in ((1.5, 1.0), (-1.5, 0.0)):
        out = net(torch.tensor([[g, 0.3]]))
        (db,) = torch.autograd.grad(out.sum(), [net.layers[1].bias])
        assert float(out.detach()) == pytest.approx(g) and float(db[0]) == expected


def test_turtle_adapt_defaults_to_beta_0_9_and_second_order():
    model = nn.Linear(2, 1, bias=False).double()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.2]], dtype=torch.float64)
    y = torch.tensor([[0.5], [1.0], [-2.0]], dtype=torch.float64)
    init = {k: v.detach().requires_grad_() for k, v in params_of(model).items()}
    alpha = {"weight": torch.tensor([[0.3, 0.05]], dtype=torch.float64)}

    def run(**kw):
        fast = turtle_adapt(model, init, {}, F.mse_loss, (x, y), _selector(1), alpha, steps=2, **kw)["weight"]
        return fast, torch.autograd.grad(fast.sum(), [init["weight"]])[0]

    default, default_grad = run()
    paper, paper_grad = run(beta=0.9, first_order=False)
    _, first_grad = run(beta=0.9, first_order=True)
    torch.testing.assert_close(default, paper)
    torch.testing.assert_close(default_grad, paper_grad)
    assert float((default_grad - first_grad).abs().max()) > 1e-6


def test_the_learners_beta_sets_its_inner_loops_moving_average():
    """Turtle(beta=...) reaches the inner loop: with m = the moving average a_t = β·a_{t−1} + (1 − β)·∇_t, two steps
    of the learner's adapt are the closed-form updates for β = 0.5, not for the default 0.9."""
    model = nn.Linear(2, 1, bias=False).double()
    learner = Turtle(model, problem="regression", inner_steps=2, hidden=(2, 2), beta=0.5, lr_init=0.3).double()
    learner.update_network.load_state_dict(_selector(1))
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.2]], dtype=torch.float64)
    y = torch.tensor([[0.5], [1.0], [-2.0]], dtype=torch.float64)

    def grad_at(w):  # closed-form gradient of the MSE of a linear model
        return 2 * (x @ w.T - y).T @ x / len(x)

    w0 = model.weight.detach().clone()
    a1 = 0.5 * grad_at(w0)
    w1 = w0 - 0.3 * a1
    a2 = 0.5 * a1 + 0.5 * grad_at(w1)
    fast = learner.adapt((x[None], y[None]))
    torch.testing.assert_close(fast["weight"][0], w1 - 0.3 * a2)


def test_adapt_steps_with_the_meta_learned_rates_not_their_initial_value():
    """At test time one step is θ − α ⊙ ∇ with α as meta-training left it (per coordinate), not lr_init."""
    model = nn.Linear(2, 1, bias=False).double()
    learner = Turtle(model, problem="regression", inner_steps=1, lr_init=0.1).double()
    alpha = torch.tensor([[0.3, 0.05]], dtype=torch.float64)
    with torch.no_grad():
        learner.alpha["weight"].copy_(alpha)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.2]], dtype=torch.float64)
    y = torch.tensor([[0.5], [1.0], [-2.0]], dtype=torch.float64)
    w0 = model.weight.detach().clone()
    fast = learner.adapt((x[None], y[None]))
    torch.testing.assert_close(fast["weight"][0], w0 - alpha * (2 * (x @ w0.T - y).T @ x / len(x)))


def test_a_moving_average_rate_of_one_is_refused():
    """β = 1 would freeze the moving average at its start a_0 = 0."""
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got 1.0"):
        Turtle(nn.Linear(2, 1), beta=1.0)


def test_defaults_are_the_documented_ones():
    """docs/fewshot_learners.md: inner_steps=5, beta=0.9, time_input=False, hidden=(20,)*5, lr_init=0.01,
    network_init="gradient", meta_lr=1e-3, first_order=False, no bound; paper_defaults start α at MAML's inner
    learning rate for the benchmark (0.4 for Omniglot 5-way) with MAML's meta-batch."""
    from fewshot import MAML

    learner = Turtle(nn.Linear(3, 2))
    assert (learner.inner_steps, learner.beta, learner.time_input, learner.network_init, learner.first_order,
            learner.grad_clip) == (5, 0.9, False, "gradient", False, None)
    assert [(layer.in_features, layer.out_features) for layer in learner.update_network.layers] == [(2, 20)] + [(20, 20)] * 4 + [(20, 1)]
    assert all(torch.equal(a, torch.full_like(a, 0.01)) for a in learner.alpha.values())
    assert learner.meta_optimizer.defaults["lr"] == 1e-3
    assert Turtle.paper_defaults(dataset="omniglot", ways=5, shots=1)["lr_init"] == 0.4
    for dataset, ways, shots in (("omniglot", 5, 1), ("omniglot", 20, 1), ("sine", 1, 5), ("cifar-fs", 5, 1), ("cifar-fs", 5, 5)):
        maml = MAML.paper_defaults(dataset=dataset, ways=ways, shots=shots)
        assert Turtle.paper_defaults(dataset=dataset, ways=ways, shots=shots) == {"lr_init": maml["inner_lr"],
                                                                               "meta_batch": maml["meta_batch"]}
