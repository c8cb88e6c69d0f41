"""Tests for lazyapps.teacher: the student (explore), the teacher's grid search, and both meta-updates."""
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lazyapps.functional import params_of
from lazyapps.teacher import Leap, LazyTeacher, explore, lazy_maml_meta_gradient, reptile_update, simplex_grid

from .._models import WithUnused

GAMMAS = (0.75, 0.80, 0.85, 0.90, 0.95)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def vec_params(*values, dtype=torch.float64):
    return [{"w": torch.tensor(v, dtype=dtype)} for v in values]


def sq_dist(c):
    return lambda p: float(((p["w"] - c) ** 2).sum())


# --- the teacher's grid search -------------------------------------------------------------------------------


def test_grid_search_last1_finds_nearest_grid_gamma_to_closed_form_optimum():
    # L(γ) = ||γθ + (1−γ)φ − c||² with c on the segment at γ0 = 0.87: a parabola with vertex 0.87,
    # so the best grid γ is the grid point nearest to 0.87, i.e. 0.85.
    theta, phi = vec_params([1.0, -2.0, 0.5], [3.0, 1.0, -1.0])
    c = 0.87 * theta["w"] + 0.13 * phi["w"]
    leap = LazyTeacher().leap(theta, [phi], sq_dist(c))
    assert leap.gamma == 0.85 and leap.weights == (1.0,)
    assert leap.score == pytest.approx(((0.85 * theta["w"] + 0.15 * phi["w"] - c) ** 2).sum().item())
    assert [s[0] for s in leap.scores] == list(GAMMAS)
    # the closed-form vertex agrees: γ* = <φ − c, φ − θ> / ||φ − θ||²
    d = phi["w"] - theta["w"]
    assert float((phi["w"] - c) @ d / (d @ d)) == pytest.approx(0.87)


def test_grid_search_last3_recovers_grid_point_and_matches_brute_force():
    torch.manual_seed(0)
    theta, *phis = [{"w": torch.randn(6, dtype=torch.float64)} for _ in range(5)]  # 4 checkpoints, last 3 used
    used = phis[-3:]
    c = 0.8 * theta["w"] + 0.2 * (0.2 * used[0]["w"] + 0.3 * used[1]["w"] + 0.5 * used[2]["w"])
    leap = LazyTeacher(last=3).leap(theta, phis, sq_dist(c))
    assert leap.gamma == 0.80 and leap.weights == pytest.approx((0.2, 0.3, 0.5))
    assert leap.score < 1e-20
    assert len(leap.scores) == 66 * 5

    # an off-grid target against a slow obvious loop over γ and the 0.1-simplex
    c = torch.randn(6, dtype=torch.float64)
    best = None
    for g in GAMMAS:
        for i in range(11):
            for j in range(11 - i):
                a = (i / 10, j / 10, (10 - i - j) / 10)
                p = g * theta["w"] + (1 - g) * sum(ai * u["w"] for ai, u in zip(a, used))
                loss = float(((p - c) ** 2).sum())
                if best is None or loss < best[0]:
                    best = (loss, g, a)
    leap = LazyTeacher(last=3).leap(theta, phis, sq_dist(c))
    assert leap.score == pytest.approx(best[0])
    assert leap.gamma == best[1] and leap.weights == pytest.approx(best[2])


def test_accuracy_criterion_maximises_and_ties_go_to_first_candidate():
    theta, phi = vec_params([1.0, -2.0, 0.5], [3.0, 1.0, -1.0])
    c = 0.87 * theta["w"] + 0.13 * phi["w"]
    loss = sq_dist(c)
    accuracy = lambda p: 1.0 / (1.0 + loss(p))  # noqa: E731 - monotone decreasing in the loss
    assert LazyTeacher(criterion="accuracy").leap(theta, [phi], accuracy).gamma == 0.85
    assert LazyTeacher(criterion="loss").leap(theta, [phi], accuracy).gamma == 0.75  # minimises it instead
    assert LazyTeacher(criterion="accuracy").leap(theta, [phi], loss).gamma == 0.75  # farthest from 0.87
    tie = LazyTeacher(last=3, gammas=(0.9, 0.8), criterion="accuracy").leap(theta, [phi] * 3, lambda p: 0.5)
    assert tie.gamma == 0.9 and tie.weights == (0.0, 0.0, 1.0)


def test_nan_scores_never_win_and_all_nan_raises():
    theta, phi = vec_params([0.0, 0.0], [1.0, 1.0])
    # candidate w = (1 − γ)·1: NaN for the first (γ=0.75) and for the would-be minimiser (γ=0.95)
    score = lambda p: float("nan") if not 0.07 < p["w"][0] < 0.22 else float(p["w"][0])  # noqa: E731
    leap = LazyTeacher().leap(theta, [phi], score)
    assert leap.gamma == 0.90 and leap.score == pytest.approx(0.1)
    from lazyapps.errors import DivergedError  # (a LazyAppsError: one line from any command)

    with pytest.raises(DivergedError, match="every leap candidate of the lazy teacher scored NaN: the student diverged"):
        LazyTeacher().leap(theta, [phi], lambda p: float("nan"))


def test_tensor_scores_choose_and_report_as_their_float_values_do():
    theta, phi = vec_params([0.0, 0.0], [1.0, 1.0])
    as_float = lambda p: float("nan") if not 0.07 < p["w"][0] < 0.22 else float(p["w"][0])  # noqa: E731
    calls = iter(range(100))
    # tensors (float32, with a NaN) and floats mixed: the teacher reads the tensors back together after the search
    mixed = lambda p: torch.tensor(as_float(p), dtype=torch.float32) if next(calls) % 2 else as_float(p)  # noqa: E731
    for score in (lambda p: torch.tensor(as_float(p)), mixed):
        leap, reference = LazyTeacher().leap(theta, [phi], score), LazyTeacher().leap(theta, [phi], as_float)
        assert leap.gamma == reference.gamma == 0.90
        assert [g for g, _, _ in leap.scores] == [g for g, _, _ in reference.scores]
        got, want = [s for _, _, s in leap.scores], [s for _, _, s in reference.scores]
        assert all(type(s) is float for s in got) and got == pytest.approx(want, nan_ok=True, abs=1e-7)


def test_simplex_grid_and_teacher_validation():
    grid = simplex_grid(3, 0.1)
    assert len(grid) == 66 and all(abs(sum(w) - 1) < 1e-12 and min(w) >= 0 for w in grid)
    assert set(grid) == {(i / 10, j / 10, k / 10) for i, j, k in itertools.product(range(11), repeat=3) if i + j + k == 10}
    assert simplex_grid(1, 0.25) == ((1.0,),)
    assert LazyTeacher(last=2, weight_grid=[(0.5, 0.5)]).weights == ((0.5, 0.5),)
    with pytest.raises(ValueError, match="1/n"):
        LazyTeacher(last=3, weight_grid=0.3)
    with pytest.raises(ValueError, match="1/n"):
        LazyTeacher(last=3, weight_grid=0.0)
    with pytest.raises(ValueError, match="summing to 1"):
        LazyTeacher(last=2, weight_grid=[(0.5, 0.6)])
    with pytest.raises(ValueError, match="gammas"):
        LazyTeacher(gammas=(0.5, 1.5))
    for text in ("0.5,0.7", (0.5, "x")):  # what a mistyped --hp gammas= reaches: not a comparison error
        with pytest.raises(ValueError, match="gammas must be a non-empty sequence of values in"):
            LazyTeacher(gammas=text)
    with pytest.raises(ValueError, match="valid: loss, accuracy"):
        LazyTeacher(criterion="acc")
    with pytest.raises(ValueError, match="at least last=3"):
        LazyTeacher(last=3).leap(vec_params([0.0])[0], vec_params([1.0], [2.0]), lambda p: 0.0)
    with pytest.raises(ValueError, match="keys"):
        LazyTeacher().leap({"w": torch.zeros(1)}, [{"v": torch.zeros(1)}], lambda p: 0.0)


# --- the MAML-style lazy meta-gradient -----------------------------------------------------------------------


@pytest.mark.parametrize("last", [1, 3])
def test_lazy_meta_gradient_is_gamma_times_gradient_at_phi(last):
    model = mlp()
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    theta = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    # checkpoints that (wrongly) carry a graph to θ must still be treated as constants
    ckpts = [{k: v * (1 + 0.1 * i) + 0.01 for k, v in theta.items()} for i in range(3)]
    val_loss = lambda p: F.mse_loss(torch.func.functional_call(model, p, (x,)), y)  # noqa: E731
    leap = LazyTeacher(last=last).leap(theta, ckpts, lambda p: float(val_loss(p)))
    loss, grads = lazy_maml_meta_gradient(theta, leap, val_loss)

    phi = {k: v.detach().requires_grad_() for k, v in leap.params.items()}  # fresh leaf at φ
    ref = torch.autograd.grad(val_loss(phi), list(phi.values()))
    assert loss == val_loss(phi).detach() and loss.grad_fn is None  # detached: the task's graph is not kept alive
    for (k, g), r in zip(grads.items(), ref):
        torch.testing.assert_close(g, leap.gamma * r, rtol=0, atol=0)
    assert leap.gamma < 1.0 and any(r.abs().max() > 0 for r in ref)


def test_lazy_meta_gradient_without_graph_raises():
    theta = {"w": torch.ones(2, requires_grad=True)}
    with torch.no_grad():
        leap = LazyTeacher().leap(theta, [{"w": torch.zeros(2)}], lambda p: float(p["w"].sum()))
    with pytest.raises(ValueError, match="no_grad"):
        lazy_maml_meta_gradient(theta, leap, lambda p: p["w"].sum())
    with pytest.raises(ValueError, match="requires_grad"):
        lazy_maml_meta_gradient({"w": torch.ones(2)}, leap, lambda p: p["w"].sum())
    assert isinstance(leap, Leap)


# --- the student ----------------------------------------------------------------------------------------------


def minibatches(n_steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)) for _ in range(n_steps)]


def student_loss(batches):
    """A loss_fn that draws the next minibatch on each call, as callers may."""
    it = iter(batches)

    def loss_fn(predict):
        x, y = next(it)
        return F.mse_loss(predict(x), y)

    return loss_fn


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_explore_matches_reference_optimizer(optimizer, device):
    model, steps, lr = mlp().to(device), 5, 0.05
    batches = [(x.to(device), y.to(device)) for x, y in minibatches(steps)]
    theta = params_of(model)  # live nn.Parameters requiring grad
    before = {k: v.detach().clone() for k, v in theta.items()}
    ckpts = explore(model, theta, student_loss(batches), steps=steps, lr=lr, optimizer=optimizer, keep_last=3)

    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(ref.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8) if optimizer == "adam" else None
    history = []
    for x, y in batches:
        loss = F.mse_loss(ref(x), y)
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            grads = torch.autograd.grad(loss, list(ref.parameters()))
            with torch.no_grad():
                for p, g in zip(ref.parameters(), grads):
                    p -= lr * g
        history.append({k: v.detach().clone() for k, v in ref.named_parameters()})

    assert len(ckpts) == 3
    for got, want in zip(ckpts, history[-3:]):  # oldest first, last = φ_k
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for ck in ckpts:
        assert all(not v.requires_grad and v.grad_fn is None for v in ck.values())
    torch.testing.assert_close({k: v.detach() for k, v in theta.items()}, before, rtol=0, atol=0)
    assert model[0].weight.grad is None  # the caller's module is untouched too


def test_explore_under_no_grad_and_unused_parameters():
    torch.manual_seed(0)
    model = WithUnused()
    theta = params_of(model, detach=True)
    with torch.no_grad():  # the student computes its own gradients regardless
        ckpts = explore(model, theta, student_loss(minibatches(2)), steps=2, lr=0.1, optimizer="adam")
    assert len(ckpts) == 1
    torch.testing.assert_close(ckpts[0]["unused"], theta["unused"], rtol=0, atol=0)
    assert not torch.allclose(ckpts[0]["lin.weight"], theta["lin.weight"])


def test_explore_validates_arguments():
    model = mlp()
    theta, loss_fn = params_of(model, detach=True), student_loss(minibatches(3))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        explore(model, theta, loss_fn, steps=0, lr=0.1)
    with pytest.raises(ValueError, match="keep_last"):
        explore(model, theta, loss_fn, steps=2, lr=0.1, keep_last=3)
    with pytest.raises(ValueError, match="keep_last"):
        explore(model, theta, loss_fn, steps=2, lr=0.1, keep_last=0)
    with pytest.raises(ValueError, match="valid: sgd, adam"):
        explore(model, theta, loss_fn, steps=2, lr=0.1, optimizer="rmsprop")


# --- the Reptile-style meta-update ---------------------------------------------------------------------------


def test_reptile_update_matches_closed_form_for_lists_and_stacked():
    torch.manual_seed(0)
    theta = {"a": torch.randn(2, 3), "b": torch.randn(4)}
    tasks = [{k: torch.randn_like(v) for k, v in theta.items()} for _ in range(3)]
    inputs = copy.deepcopy((theta, tasks))
    beta = 0.1
    # θ − β Σ_i (θ − φ_i) = (1 − nβ) θ + β Σ_i φ_i
    want = {k: (1 - 3 * beta) * theta[k] + beta * sum(t[k] for t in tasks) for k in theta}
    got = reptile_update(theta, tasks, step_size=beta)
    torch.testing.assert_close(got, want)
    stacked = {k: torch.stack([t[k] for t in tasks]) for k in theta}
    torch.testing.assert_close(reptile_update(theta, stacked, step_size=beta), want)
    torch.testing.assert_close((theta, tasks), inputs, rtol=0, atol=0)  # nothing mutated
    assert got["a"].data_ptr() != theta["a"].data_ptr()


def test_reptile_update_rejects_bad_arguments():
    theta = {"a": torch.zeros(2)}
    with pytest.raises(ValueError, match="empty"):
        reptile_update(theta, [], step_size=0.1)
    with pytest.raises(ValueError, match="step_size"):
        reptile_update(theta, [{"a": torch.ones(2)}], step_size=0.0)
    with pytest.raises(ValueError, match="keys"):
        reptile_update(theta, [{"b": torch.ones(2)}], step_size=0.1)
    with pytest.raises(ValueError, match="keys"):
        reptile_update(theta, {"a": torch.ones(1, 2), "b": torch.ones(1, 2)}, step_size=0.1)
    with pytest.raises(ValueError, match="expected"):
        reptile_update(theta, {"a": torch.ones(2)}, step_size=0.1)  # missing the task dim


def test_teacher_grids_of_any_container_and_clear_refusals():
    import numpy as np

    for grid in ((g for g in (0.8, 0.9)), np.array([0.8, 0.9]), torch.tensor([0.8, 0.9]), [0.8, 0.9]):
        assert LazyTeacher(gammas=grid).gammas == pytest.approx((0.8, 0.9))  # (a generator was used up by the check)
    assert LazyTeacher(last=2, weight_grid=torch.tensor(0.5)).weights == LazyTeacher(last=2, weight_grid=0.5).weights
    for kwargs, message in (({"gammas": 0.9}, r"gammas must be a non-empty sequence of values in \[0, 1\] \(e.g. \(0.9,\) for one\), got 0.9"),
                            ({"gammas": ()}, "gammas must be a non-empty sequence"),
                            ({"last": 2.0}, "last must be a whole number >= 1, got 2.0")):
        with pytest.raises(ValueError, match=message):
            LazyTeacher(**kwargs)


def test_leap_refuses_checkpoints_of_another_shape():
    theta = {"w": torch.zeros(8, 4)}
    teacher = LazyTeacher(gammas=(0.5,))
    with pytest.raises(ValueError, match=r"checkpoint 'w' has shape \(1, 8, 4\), theta's is \(8, 4\)"):
        teacher.leap(theta, [{"w": torch.ones(1, 8, 4)}], lambda p: float(p["w"].sum()))


def test_a_diverged_checkpoint_with_weight_zero_does_not_poison_the_leap():
    theta = {"w": torch.zeros(3, dtype=torch.float64)}
    diverged, good = {"w": torch.full((3,), float("nan"), dtype=torch.float64)}, {"w": torch.ones(3, dtype=torch.float64)}
    leap = LazyTeacher(last=2, gammas=(0.5,), weight_grid=0.5).leap(theta, [diverged, good], sq_dist(torch.ones(3)))
    assert leap.weights == (0.0, 1.0)
    torch.testing.assert_close(leap.params["w"], torch.full((3,), 0.5, dtype=torch.float64))
    assert leap.score == pytest.approx(0.75)


def test_accuracy_leap_reports_the_accuracy_it_chose():
    theta, phi = vec_params([1.0, -2.0, 0.5], [3.0, 1.0, -1.0])
    c = 0.87 * theta["w"] + 0.13 * phi["w"]
    accuracy = lambda p: 1.0 / (1.0 + sq_dist(c)(p))  # noqa: E731
    leap = LazyTeacher(criterion="accuracy").leap(theta, [phi], accuracy)
    assert leap.score == pytest.approx(accuracy(leap.params)) == pytest.approx(max(s for _, _, s in leap.scores))
    assert 0 < leap.score <= 1


def test_lazy_meta_gradient_of_a_parameter_the_loss_ignores_is_zero():
    theta = {"w": torch.ones(2, requires_grad=True), "unused": torch.ones(3, requires_grad=True)}
    ckpt = {"w": torch.zeros(2), "unused": torch.zeros(3)}
    leap = LazyTeacher(gammas=(0.5,)).leap(theta, [ckpt], lambda p: float(p["w"].sum()))
    _, grads = lazy_maml_meta_gradient(theta, leap, lambda p: p["w"].sum())
    torch.testing.assert_close(grads["w"], torch.full((2,), 0.5))
    torch.testing.assert_close(grads["unused"], torch.zeros(3))  # a tensor, so grads of tasks can be summed


def test_a_single_student_step_is_allowed_and_is_one_sgd_step():
    model = mlp()
    theta = params_of(model, detach=True)
    x, y = minibatches(1)[0]
    ckpts = explore(model, theta, student_loss([(x, y)]), steps=1, lr=0.1)
    grads = torch.autograd.grad(F.mse_loss(model(x), y), list(model.parameters()))
    assert type(ckpts) is list and len(ckpts) == 1
    torch.testing.assert_close(ckpts[0], {k: t - 0.1 * g for (k, t), g in zip(theta.items(), grads)})


def test_explore_checkpoints_are_detached_for_live_parameters_the_loss_ignores():
    torch.manual_seed(0)
    model = WithUnused()
    theta = params_of(model)  # live nn.Parameters requiring grad
    ckpts = explore(model, theta, student_loss(minibatches(2)), steps=2, lr=0.1, keep_last=2)
    for ck in ckpts:
        assert all(not v.requires_grad and v.grad_fn is None for v in ck.values())
        torch.testing.assert_close(ck["unused"], torch.ones(4), rtol=0, atol=0)


def test_gammas_may_be_the_ends_of_the_unit_interval():
    # γ = 1 leaps nowhere (φ = θ), γ = 0 takes the student's checkpoint as it is.
    theta = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)}
    phi = {"w": torch.tensor([3.0, 1.0], dtype=torch.float64)}
    teacher = LazyTeacher(gammas=(0.0, 1.0))
    to_theta = teacher.leap(theta, [phi], sq_dist(theta["w"].detach()))
    to_phi = teacher.leap(theta, [phi], sq_dist(phi["w"]))
    assert (to_theta.gamma, to_phi.gamma) == (1.0, 0.0) and to_theta.score == to_phi.score == 0.0
    torch.testing.assert_close(to_theta.params["w"].detach(), theta["w"].detach(), rtol=0, atol=0)
    torch.testing.assert_close(to_phi.params["w"].detach(), phi["w"], rtol=0, atol=0)
    _, grads = lazy_maml_meta_gradient(theta, to_phi, lambda p: p["w"].sum())
    torch.testing.assert_close(grads["w"], torch.zeros(2, dtype=torch.float64))  # nothing of θ is left in φ


def test_gamma_rows_and_bad_explicit_weight_grids_are_refused_clearly():
    with pytest.raises(ValueError, match="gammas must be a non-empty sequence"):
        LazyTeacher(gammas=torch.tensor([[0.8, 0.9]]))  # iterating gives a row, not a gamma
    with pytest.raises(ValueError, match="last must be a whole number >= 1, got 0"):
        LazyTeacher(last=0)
    # short of 1, a negative entry, the wrong length
    for grid in ([(0.2, 0.3)], [(1.5, -0.5)], [(0.5, 0.5, 0.0)], [(1.0,)]):
        with pytest.raises(ValueError, match="each weight tuple needs 2 non-negative entries summing to 1"):
            LazyTeacher(last=2, weight_grid=grid)
    with pytest.raises(ValueError, match="at least one weight tuple"):
        LazyTeacher(last=2, weight_grid=[])


def test_explicit_weight_grids_are_read_as_floats_and_a_rounded_1_over_n_step_is_accepted():
    teacher = LazyTeacher(last=2, weight_grid=torch.tensor([[0.25, 0.75], [1.0, 0.0]]))
    assert teacher.weights == ((0.25, 0.75), (1.0, 0.0))
    assert all(type(a) is float for w in teacher.weights for a in w)
    # 49 * (1/49) != 1 in floating point; the simplex still has C(49 + 1, 1) = 50 points
    grid = simplex_grid(2, 1 / 49)
    assert len(grid) == 50 and grid[0] == (0.0, 1.0) and grid[-1] == (1.0, 0.0)


def test_integer_tensor_scores_are_reported_as_floats():
    theta, phi = vec_params([0.0, 0.0], [1.0, 1.0])
    # "accuracy" as a count of coordinates below 0.17: an int64 tensor
    leap = LazyTeacher(criterion="accuracy").leap(theta, [phi], lambda p: (p["w"] < 0.17).sum())
    assert leap.gamma == 0.85 and leap.score == 2.0  # the first candidate with both coordinates (1 - γ) below 0.17
    assert type(leap.score) is float and all(type(s) is float for _, _, s in leap.scores)


def test_the_readme_example_runs_as_written_and_its_comments_hold(data_root, session_cache, monkeypatch):
    import re

    from tests.conftest import REPO

    monkeypatch.setenv("LAZYAPPS_DATA", str(data_root))
    monkeypatch.setenv("LAZYAPPS_CACHE", str(session_cache))
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    example = next(b for b in blocks if "LazyTeacher" in b)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    leap, theta0 = scope["leap"], scope["params_of"](scope["model"])
    assert leap.gamma in GAMMAS and leap.score == max(s for _, _, s in leap.scores)  # "chosen on validation accuracy"
    # "equals gamma * grad of L_val at phi"
    phi = {k: v.detach().requires_grad_() for k, v in leap.params.items()}
    val = scope["loss"](scope["forward"](scope["model"], phi, {}, scope["xv"]), scope["yv"])
    expected = torch.autograd.grad(val, list(phi.values()))
    assert torch.allclose(scope["val_loss"], val.detach())
    for k, g in zip(phi, expected):
        torch.testing.assert_close(scope["grads"][k], leap.gamma * g)
    # the Reptile-style update: θ ← θ − 0.1·(θ − φ), from the parameters the leap started at
    for k, t in scope["theta"].items():
        torch.testing.assert_close(t, theta0[k].detach() - 0.1 * (theta0[k].detach() - leap.params[k].detach()))


def test_candidates_are_visited_weights_major_and_a_tie_goes_to_the_first_visited():
    # The documented order (for each α in grid order, each γ in gammas order) is what the tie rule and
    # Leap.scores refer to. With θ = 0 a candidate is (1 − γ)·φ_α; two of them land exactly on the target 0.5:
    # (α=(0, 1), γ=0.75), visited second weights-major, and (α=(1, 0), γ=0.5), visited second gamma-major.
    theta = {"w": torch.zeros(1, dtype=torch.float64)}
    older, newer = {"w": torch.tensor([1.0], dtype=torch.float64)}, {"w": torch.tensor([2.0], dtype=torch.float64)}
    teacher = LazyTeacher(gammas=(0.5, 0.75), last=2, weight_grid=[(0.0, 1.0), (1.0, 0.0)])
    leap = teacher.leap(theta, [older, newer], sq_dist(torch.tensor([0.5], dtype=torch.float64)))
    assert [(g, w) for g, w, _ in leap.scores] == [(g, w) for w in teacher.weights for g in teacher.gammas]
    assert [s for _, _, s in leap.scores] == [0.25, 0.0, 0.0, 0.0625]  # candidates 1.0, 0.5, 0.5, 0.25
    assert (leap.gamma, leap.weights, leap.score) == (0.75, (0.0, 1.0), 0.0)
    torch.testing.assert_close(leap.params["w"], torch.tensor([0.5], dtype=torch.float64), rtol=0, atol=0)


def test_explore_runs_with_the_buffers_given_and_updates_those_not_the_models():
    # (the few-shot and long-tail learners pass their own BatchNorm statistics, separate from the module's)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    theta, own = params_of(model, detach=True), {k: v.clone() for k, v in model.named_buffers()}
    given = {k: v.clone() for k, v in own.items()}
    given["1.running_mean"].fill_(2.0)
    given["1.running_var"].fill_(0.5)
    x, y = minibatches(1)[0]
    model.eval()  # normalised with the running statistics: the one-step checkpoint depends on which are used
    ckpt = explore(model, theta, student_loss([(x, y)]), steps=1, lr=0.1, buffers=given)[0]
    leaf = {k: v.clone().requires_grad_() for k, v in theta.items()}
    ref = torch.autograd.grad(F.mse_loss(torch.func.functional_call(model, {**leaf, **given}, (x,)), y), list(leaf.values()))
    torch.testing.assert_close(ckpt, {k: t - 0.1 * g for (k, t), g in zip(theta.items(), ref)})
    model.train()  # training mode: the given running statistics move, the module's stay
    before = {k: v.clone() for k, v in given.items()}
    explore(model, theta, student_loss([(x, y)]), steps=1, lr=0.1, buffers=given)
    assert not torch.equal(given["1.running_mean"], before["1.running_mean"]) and int(given["1.num_batches_tracked"]) == 1
    torch.testing.assert_close(dict(model.named_buffers()), own, rtol=0, atol=0)


def test_adam_counts_steps_per_parameter_from_its_first_gradient_as_torch_optim_does():
    # "b" gets no gradient in the first step, so its first Adam update has the bias correction of step 1, not of step 2
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Parameter(torch.tensor([1.0, -1.0])), nn.Parameter(torch.tensor([0.5, 2.0]))

        def forward(self):
            return self.a, self.b

    target = torch.tensor([0.3, 0.7])

    def loss(a, b, step):
        return ((a - target) ** 2).sum() + (((b * target) ** 2).sum() if step > 0 else 0.0)

    model = Pair()
    calls = iter(range(3))
    ckpts = explore(model, params_of(model, detach=True), lambda predict: loss(*predict(), next(calls)), steps=3, lr=0.1,
                    optimizer="adam", keep_last=3)
    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(ref.parameters(), lr=0.1)
    for step, got in enumerate(ckpts):
        opt.zero_grad(set_to_none=True)
        loss(*ref(), step).backward()
        opt.step()
        torch.testing.assert_close(got, {k: v.detach() for k, v in ref.named_parameters()})
    assert torch.equal(ckpts[0]["b"], model.b.detach()) and not torch.equal(ckpts[1]["b"], ckpts[0]["b"])
