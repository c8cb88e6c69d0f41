"""The method registry and the methods' bookkeeping: names, flags, the papers' defaults, diagnostics, state."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lazyapps.errors import UnknownNameError
from lazyapps.teacher import explore
from longtail import methods as M
from longtail.methods import METHODS, StepContext, create_method, explore_across_ranks, method_names
from longtail.schedule import Schedule
from .._models import linear_problem

COUNTS = [500, 50, 5]


def _cui_weights(counts, beta=0.9999):
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    return torch.tensor([len(counts) * r / sum(raw) for r in raw])


def _linear_problem():
    return linear_problem(31, 4, 3, 9, 6)


def test_the_registry_names_flags_and_summaries():
    # docs/longtail.md's table, in its order; meta methods get the validation batch, LDAM the cosine head
    names = ["ce", "cb-ce", "cb-focal", "ldam-drw", "logit-adjust", "l2rw", "meta-weight-net", "two-component",
             "lazy-two-component"]
    assert method_names() == names
    built = {name: create_method(name, COUNTS) for name in names}
    assert all(method.name == name for name, method in built.items())
    assert {n for n, m in built.items() if m.meta} == {"l2rw", "meta-weight-net", "two-component", "lazy-two-component"}
    assert {n for n, m in built.items() if m.normalized_head} == {"ldam-drw"}
    summaries = [cls.summary for cls in METHODS.values()]
    assert len(set(summaries)) == len(names)  # each method says what it is in `--method` listings
    with pytest.raises(UnknownNameError, match="unknown method 'focal'"):
        create_method("focal", COUNTS)


def test_method_defaults_are_the_papers():
    w = _cui_weights(COUNTS)  # β = 0.9999 (Cui et al.)
    for name in ("cb-ce", "cb-focal", "ldam-drw", "two-component", "lazy-two-component"):
        assert torch.allclose(create_method(name, COUNTS).class_weights, w, rtol=1e-5), name
    assert create_method("cb-focal", COUNTS).gamma == 1.0
    ldam = create_method("ldam-drw", COUNTS)
    assert ldam.scale == 30.0 and float(ldam.margins.max()) == pytest.approx(0.5)
    assert ldam.drw_start == Schedule().meta_start == 160  # deferred re-weighting from the paper's first decay
    assert create_method("logit-adjust", COUNTS).tau == 1.0
    for name in ("two-component", "lazy-two-component"):
        two = create_method(name, COUNTS)
        assert (two.eps_rule, two.eps_lr) == ("step", 0.01)  # Jamal et al.'s code: one step of 0.01
    assert create_method("lazy-two-component", COUNTS).inner_steps == 5
    mwn = create_method("meta-weight-net", COUNTS)  # Shu et al.: an MLP 1-100-1, SGD with momentum 0.9, lr 1e-5
    assert [tuple(p.shape) for p in mwn.weight_net.parameters()] == [(100, 1), (100,), (1, 100), (1,)]
    group = mwn.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"]) == (1e-5, 0.9)


def test_meta_methods_train_plain_ce_before_the_meta_phase_or_without_a_validation_batch():
    model, x, y, vx, vy = _linear_problem()
    with torch.no_grad():
        ce = float(F.cross_entropy(model(x), y))
    method = create_method("l2rw", COUNTS)
    method.meta_start = 3
    assert float(method.loss(StepContext(model, 0.4, 2, vx, vy), x, y).detach()) == pytest.approx(ce)
    assert float(method.loss(StepContext(model, 0.4, 3), x, y).detach()) == pytest.approx(ce)
    assert method.diagnostics == {}  # no meta step ran
    meta = float(method.loss(StepContext(model, 0.4, 3, vx, vy), x, y).detach())
    assert meta != pytest.approx(ce)


def test_a_meta_step_records_the_validation_loss_and_the_size_of_eps():
    model, x, y, vx, vy = _linear_problem()
    with torch.no_grad():
        val_ce = float(F.cross_entropy(model(vx), vy))
    l2rw = create_method("l2rw", COUNTS)
    l2rw.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    # L2RW's virtual step starts from ε = 0: θ̃ = θ, so L_val is the validation loss of the model itself
    assert l2rw.diagnostics["val_loss"] == pytest.approx(val_ce, rel=1e-9)
    two = create_method("two-component", COUNTS)
    two.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    w = two.class_weights[y]
    eps = two.last_weights - w
    assert float(eps.abs().max()) > 0
    assert two.diagnostics["eps_over_w"] == pytest.approx(float(eps.abs().mean() / w.mean()), rel=1e-9)


def test_weight_mean_is_the_mean_per_example_weight_of_the_step():
    # L2RW's weights sum to 1 over the batch: their mean is 1/N, whatever the batch (not their sum)
    model, x, y, vx, vy = _linear_problem()
    l2rw = create_method("l2rw", COUNTS)
    l2rw.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    assert float(l2rw.last_weights.sum()) == pytest.approx(1.0)
    assert l2rw.diagnostics["weight_mean"] == pytest.approx(1 / len(y))
    two = create_method("two-component", COUNTS)
    two.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    assert two.diagnostics["weight_mean"] == pytest.approx(float(two.last_weights.mean()), rel=1e-9)


def test_reset_diagnostics_forgets_every_key():
    method = create_method("two-component", COUNTS)
    method.record(val_loss=2.0, eps_over_w=0.5)
    method.reset_diagnostics()
    method.record(val_loss=4.0)
    assert method.diagnostics == {"val_loss": 4.0}  # no stale eps_over_w from the last epoch


@pytest.mark.parametrize("scores, tie", [([0.5, 0.5, 0.5], 1.0), ([0.5, 0.75, 0.5], 0.0)])
def test_grid_tie_says_whether_every_gamma_scored_the_same(monkeypatch, scores, tie):
    model, x, y, vx, vy = _linear_problem()

    def fake_direction(model, theta_tilde, student_loss, val_inputs, val_targets, **kw):
        v = {k: torch.zeros_like(t) for k, t in theta_tilde.items()}
        leap = SimpleNamespace(gamma=0.9, score=max(scores), scores=[(0.1 * i, None, s) for i, s in enumerate(scores)])
        return v, leap, 1.0

    monkeypatch.setattr(M, "lazy_direction", fake_direction)
    method = create_method("lazy-two-component", COUNTS)
    method.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    assert method.diagnostics["grid_tie"] == tie and method.diagnostics["leap_val_accuracy"] == max(scores)


def test_weight_net_is_a_relu_mlp_on_the_loss_with_a_sigmoid_output():
    # Shu et al.'s V(ℓ; ψ) = σ(W₂ relu(W₁ℓ + b₁) + b₂): a weight in (0, 1) for every loss, by hand from ψ
    torch.manual_seed(0)
    net = M.WeightNet()
    losses = torch.tensor([0.0, 0.3, 1.0, 2.5, 7.0])
    w1, b1, w2, b2 = [p.detach().tolist() for p in net.parameters()]
    hidden = [[max(w1[j][0] * v + b1[j], 0.0) for j in range(100)] for v in losses.tolist()]
    expected = [1 / (1 + math.exp(-(sum(a * h for a, h in zip(w2[0], row)) + b2[0]))) for row in hidden]
    assert any(w1[j][0] * 2.5 + b1[j] < 0 for j in range(100))  # the ReLU cuts some units off
    assert net(losses).tolist() == pytest.approx(expected, rel=1e-6)


def test_lazy_two_component_on_a_batch_smaller_than_inner_steps_takes_one_step_per_example(monkeypatch):
    # A last batch of 3 examples with --inner-steps 5: the student walks 3 one-example slices, not 5 steps
    model, x, y, vx, vy = _linear_problem()
    seen = []
    real = M.lazy_direction
    monkeypatch.setattr(M, "lazy_direction", lambda *a, **kw: seen.append(kw["steps"]) or real(*a, **kw))
    method = create_method("lazy-two-component", COUNTS, gammas=(0.5, 0.9))
    loss = method.loss(StepContext(model, 0.4, 0, vx, vy), x[:3], y[:3])
    assert seen == [3] and torch.isfinite(loss)


def test_meta_weight_net_second_step_follows_only_its_own_meta_gradient():
    model, x, y, vx, vy = _linear_problem()
    torch.manual_seed(2)
    method = create_method("meta-weight-net", COUNTS, meta_lr=0.5, momentum=0.0, weight_decay=0.0)
    method.weight_net.double()
    method.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    before = copy.deepcopy(method.weight_net)
    # the reference meta-gradient of step 2, by double backward through the virtual step
    ce = F.cross_entropy(model(x), y, reduction="none").detach()
    params = dict(model.named_parameters())
    inner = (before(ce) * F.cross_entropy(torch.func.functional_call(model, params, (x,)), y, reduction="none")).mean()
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    moved = {k: p - 0.4 * g for (k, p), g in zip(params.items(), grads)}
    val = F.cross_entropy(torch.func.functional_call(model, moved, (vx,)), vy)
    meta_grads = torch.autograd.grad(val, list(before.parameters()))
    method.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    for p, p0, g in zip(method.weight_net.parameters(), before.parameters(), meta_grads):
        assert torch.allclose(p, p0 - 0.5 * g, atol=1e-9)  # not step 1's gradient added in


def test_meta_weight_net_state_round_trip_and_an_empty_state_keeps_the_fresh_net():
    model, x, y, vx, vy = _linear_problem()
    trained = create_method("meta-weight-net", COUNTS, meta_lr=0.5)
    trained.weight_net.double()
    trained.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    state = copy.deepcopy(trained.state_dict())
    restored = create_method("meta-weight-net", COUNTS, meta_lr=0.5)
    restored.weight_net.double()
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(restored.weight_net.parameters(), trained.weight_net.parameters()))
    assert restored.optimizer.state_dict()["state"].keys() == trained.optimizer.state_dict()["state"].keys() != set()
    fresh = create_method("meta-weight-net", COUNTS)
    start = [p.clone() for p in fresh.weight_net.parameters()]
    fresh.load_state_dict({})  # a checkpoint from the CE phase
    assert all(torch.equal(a, b) for a, b in zip(start, fresh.weight_net.parameters()))


@pytest.mark.parametrize("keep_last", [1, 2])
def test_explore_across_ranks_in_one_process_is_explore(keep_last):
    model, x, y, _, _ = _linear_problem()
    params = {k: t.detach() for k, t in model.named_parameters()}

    def loss_fn(predict):
        return F.cross_entropy(predict(x), y)

    kw = {} if keep_last == 1 else {"keep_last": keep_last}  # 1 by default, as explore's
    got = explore_across_ranks(model, params, loss_fn, steps=3, lr=0.3, **kw)
    ref = explore(model, params, loss_fn, steps=3, lr=0.3, keep_last=keep_last)
    assert len(got) == len(ref) == keep_last
    for a, b in zip(got, ref):
        assert all(torch.allclose(a[k], b[k], atol=1e-12) for k in b)


@pytest.mark.parametrize("inner_lr, expected_lr", [(None, 0.4), (0.05, 0.05)])
def test_lazy_two_component_student_steps_at_inner_lr_and_teacher_picks_by_accuracy(monkeypatch, inner_lr, expected_lr):
    # Algorithm 2: the teacher chooses γ on validation accuracy over the last checkpoint only (b = 1); the student
    # steps at --inner-lr when given, else at the training lr of the step (the virtual step's).
    model, x, y, vx, vy = _linear_problem()
    seen = {}

    def fake_direction(model, theta_tilde, student_loss, val_inputs, val_targets, **kw):
        seen.update(kw)
        leap = SimpleNamespace(gamma=0.9, score=0.5, scores=[(0.9, (1.0,), 0.5)])
        return {k: torch.zeros_like(t) for k, t in theta_tilde.items()}, leap, 1.0

    monkeypatch.setattr(M, "lazy_direction", fake_direction)
    method = create_method("lazy-two-component", COUNTS, inner_lr=inner_lr, gammas=(0.7, 0.9))
    method.loss(StepContext(model, 0.4, 0, vx, vy), x, y)
    assert seen["lr"] == expected_lr and seen["steps"] == 5  # 9 examples in 5 slices: inner_steps = 5 student steps
    teacher = seen["teacher"]
    assert (teacher.criterion, teacher.last, teacher.weights, teacher.gammas) == ("accuracy", 1, ((1.0,),), (0.7, 0.9))
    assert create_method("lazy-two-component", COUNTS).teacher.gammas == (0.75, 0.80, 0.85, 0.90, 0.95)
