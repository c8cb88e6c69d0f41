"""The batched score-based attack loop on a real MNIST classifier: success, exact query accounting, budgets."""
from __future__ import annotations

import pytest
import torch

from attacks import AttackOutcome, BlackBox, margin_loss
from attacks.estimators import BanditsEstimator, GradientEstimator, NESEstimator, ZOOEstimator
from attacks.score_attack import descent_step, make_estimator, project, score_attack
from lazyapps.errors import LazyAppsError, UnknownNameError


@pytest.fixture(scope="module")
def mnist_target(mnist_softmax):
    """The real-MNIST softmax regression and 8 test digits it gets right."""
    return mnist_softmax


class TrueGradient(GradientEstimator):
    """Oracle 'estimator' (whitebox gradient, 1 nominal query): isolates the loop's mechanics in tests."""

    name = "oracle"

    def __init__(self, model):
        self.model = model

    def queries_per_estimate(self, x_shape, *, scores_known=True):
        return 1

    def estimate(self, blackbox, x, y, *, loss=None, index=None, target=None, scores=None):
        blackbox.query(x, index=index)  # pay the nominal query
        x = x.clone().requires_grad_(True)
        grad = torch.autograd.grad(margin_loss(self.model(x), y, target).sum(), x)[0]
        return grad, torch.ones(len(x), dtype=torch.long)


def check_outcome(outcome: AttackOutcome, model, x, y, bb: BlackBox, index=None, target=None):
    index = torch.arange(len(x)) if index is None else index
    assert outcome.queries.tolist() == bb.counts[index].tolist()
    assert outcome.x_adv.min() >= 0 and outcome.x_adv.max() <= 1
    with torch.no_grad():
        pred = model(outcome.x_adv).argmax(1)
    fooled = pred == target if target is not None else pred != y
    assert torch.equal(fooled, outcome.success)
    torch.testing.assert_close(outcome.l2, (outcome.x_adv - x).flatten(1).norm(dim=1))


def test_oracle_loop_stops_each_image_at_success(mnist_target):
    model, x, y = mnist_target
    bb = BlackBox(model)
    out = score_attack(bb, x, y, TrueGradient(model), step_size=0.02, max_queries=1000)
    check_outcome(out, model, x, y, bb)
    assert out.success.all()
    # 1 initial check + k iterations of (1 estimate + 1 check): the image stopped right at success
    assert ((out.queries - 1) % 2 == 0).all() and (out.queries > 1).all()
    summary = out.summary()
    assert summary["success_rate"] == 1.0 and summary["mean_queries"] == out.queries.double().mean()


@pytest.mark.parametrize(
    "estimator, settings",
    [
        (ZOOEstimator(coordinates=128), dict(step_size=0.1)),
        (NESEstimator(samples=50), dict(step_size=0.5, update="l2")),
        (BanditsEstimator(), dict(step_size=0.01, epsilon=0.3)),
    ],
    ids=["zoo", "nes-l2", "bandits-linf"],
)
def test_baselines_fool_mnist_target(mnist_target, estimator, settings):
    model, x, y = mnist_target
    torch.manual_seed(0)
    bb = BlackBox(model)
    out = score_attack(bb, x[:4], y[:4], estimator, max_queries=3000, **settings)
    check_outcome(out, model, x[:4], y[:4], bb)
    assert out.success.all()
    assert (out.queries <= 3000).all()
    cost = estimator.queries_per_estimate(tuple(x.shape), scores_known=True) + 1
    assert ((out.queries - 1) % cost == 0).all()
    if settings.get("epsilon"):
        assert (out.x_adv - x[:4]).abs().max() <= settings["epsilon"] + 1e-6


def test_targeted(mnist_target):
    model, x, y = mnist_target
    target = (y + 1) % 10
    bb = BlackBox(model, output="probs")
    out = score_attack(bb, x[:3], y[:3], TrueGradient(model), target=target[:3], step_size=0.02, max_queries=2000)
    check_outcome(out, model, x[:3], y[:3], bb, target=target[:3])
    assert out.success.all() and out.target_classes.tolist() == target[:3].tolist()


def test_budget_never_exceeded_and_blackbox_budget_respected(mnist_target):
    model, x, y = mnist_target
    nes = NESEstimator(samples=50)  # 51 queries per iteration with the check
    bb = BlackBox(model)
    out = score_attack(bb, x, y, nes, step_size=0.001, max_queries=200)  # too small a step to succeed
    assert not out.success.any()
    assert out.queries.tolist() == [1 + 3 * 51] * len(x)  # the 4th iteration would pass 200
    # a blackbox budget below max_queries: the loop stops first, the blackbox never refuses
    tight = BlackBox(model, budget=120)
    out = score_attack(tight, x, y, nes, step_size=0.001, max_queries=10_000)
    assert out.queries.tolist() == [1 + 2 * 51] * len(x)


def test_index_offsets_and_epsilon_l2(mnist_target):
    model, x, y = mnist_target
    bb = BlackBox(model)
    index = torch.arange(len(x)) + 100
    out = score_attack(bb, x, y, TrueGradient(model), update="l2", step_size=0.3, epsilon=1.0,
                       index=index, max_queries=400)
    check_outcome(out, model, x, y, bb, index=index)
    assert bb.counts[:100].sum() == 0
    assert (out.l2 <= 1.0 + 1e-5).all()


def test_step_and_projection():
    x = torch.full((1, 1, 2, 2), 0.5)
    g = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]]])
    assert descent_step(x, g, step_size=0.1).flatten().tolist() == pytest.approx([0.4, 0.6, 0.5, 0.4])
    l2 = descent_step(x, g, step_size=1.0, update="l2")
    assert (l2 - x).norm() == pytest.approx(1.0)
    far = torch.tensor([[[[1.0, 0.0], [0.5, 0.9]]]])
    assert project(far, x, epsilon=0.2).flatten().tolist() == pytest.approx([0.7, 0.3, 0.5, 0.7])
    assert (project(far, x, epsilon=0.2, update="l2") - x).norm() == pytest.approx(0.2)
    assert project(far + 1, x, epsilon=None).max() == 1.0


def test_bad_arguments(mnist_target):
    model, x, y = mnist_target
    with pytest.raises(UnknownNameError, match="valid: l2, sign"):
        score_attack(BlackBox(model), x, y, NESEstimator(), update="adam")
    with pytest.raises(LazyAppsError, match="max_queries must be at least 1"):
        score_attack(BlackBox(model), x, y, NESEstimator(), max_queries=0)
    with pytest.raises(UnknownNameError, match="valid: bandits, nes, zoo"):
        make_estimator("square")
    assert isinstance(make_estimator("nes", samples=20), NESEstimator)


def test_run_baseline_uses_dataset_settings(mnist_target):
    from attacks.score_attack import BASELINE_SETTINGS, run_baseline

    model, x, y = mnist_target
    torch.manual_seed(0)
    bb = BlackBox(model)
    out = run_baseline("nes", bb, x[:2], y[:2], dataset="mnist", max_queries=2000)
    check_outcome(out, model, x[:2], y[:2], bb)
    assert out.success.all()
    samples = BASELINE_SETTINGS["mnist"]["nes"]["estimator"]["samples"]
    assert ((out.queries - 1) % (samples + 1) == 0).all()
    with pytest.raises(UnknownNameError, match="valid: bandits, boundary, hsja, nes, zoo"):
        run_baseline("square", bb, x, y)
    with pytest.raises(UnknownNameError, match="valid: cifar10, mnist"):
        run_baseline("nes", bb, x, y, dataset="svhn")


@pytest.mark.parametrize("method, attack_class", [("hsja", "HopSkipJumpAttack"), ("boundary", "BoundaryAttack")])
def test_baseline_settings_are_what_the_attacks_are_built_with(mnist_target, monkeypatch, method, attack_class):
    import foolbox as fb

    from attacks.score_attack import baseline_settings, run_baseline

    # the settings a result records are the ones foolbox's attack object receives
    built = []
    real = getattr(fb.attacks, attack_class)
    monkeypatch.setattr(fb.attacks, attack_class, lambda **kwargs: built.append(kwargs) or real(**kwargs))
    model, x, y = mnist_target
    run_baseline(method, BlackBox(model, output="label"), x[:1], y[:1], max_queries=30)
    recorded = baseline_settings(method)
    assert len(built) == 1 and recorded and all(built[0][k] == v for k, v in recorded.items())
    # Chen et al. 2020's and foolbox's defaults, as docs/attack_baselines.md gives them
    assert recorded == ({"initial_gradient_eval_steps": 100, "max_gradient_eval_steps": 10_000, "gamma": 1.0} if method == "hsja"
                        else {"spherical_step": 1e-2, "source_step": 1e-2, "step_adaptation": 1.5})


def test_baseline_settings_of_the_score_based_methods_are_their_datasets():
    from attacks.score_attack import baseline_settings

    # docs/attack_baselines.md: NES steps 0.2 (L2) on both datasets, ZOO sign steps 0.1 on MNIST and 0.02 on CIFAR-10
    assert baseline_settings("nes", "mnist") == {"estimator": {"samples": 50, "sigma": 0.001},
                                                 "attack": {"update": "l2", "step_size": 0.2}}
    assert baseline_settings("zoo", "cifar10")["attack"] == {"update": "sign", "step_size": 0.02}
    assert baseline_settings("zoo", "mnist")["attack"] == {"update": "sign", "step_size": 0.1}
    baseline_settings("bandits", "mnist")["attack"]["step_size"] = 9.0  # a copy: the table itself is not changed
    assert baseline_settings("bandits", "mnist")["attack"]["step_size"] == 0.05
    with pytest.raises(UnknownNameError, match="valid: bandits, boundary, hsja, nes, zoo"):
        baseline_settings("square")
    with pytest.raises(UnknownNameError, match="valid: cifar10, mnist"):
        baseline_settings("nes", "svhn")


def test_an_estimator_with_only_the_documented_interface_still_runs(mnist_target):
    model, x, y = mnist_target

    class Duck:  # estimate / queries_per_estimate / reset, no GradientEstimator base (so no next_cost)
        def __init__(self):
            self.inner = TrueGradient(model)

        def queries_per_estimate(self, x_shape, *, scores_known=True):
            return self.inner.queries_per_estimate(x_shape, scores_known=scores_known)

        def estimate(self, *args, **kwargs):
            return self.inner.estimate(*args, **kwargs)

        def reset(self):
            pass

    bb = BlackBox(model, budget=60)
    out = score_attack(bb, x, y, Duck(), max_queries=60, step_size=0.05)
    check_outcome(out, model, x, y, bb)


def test_l2_projection_leaves_points_inside_the_ball_alone():
    x = torch.full((2, 1, 2, 2), 0.5)
    inside = x + torch.tensor([0.1, -0.1, 0.05, 0.0]).reshape(1, 1, 2, 2)  # L2 0.15 < 0.2
    torch.testing.assert_close(project(inside, x, epsilon=0.2, update="l2"), inside)
    torch.testing.assert_close(project(inside, x, epsilon=0.2, update="sign"), inside)


def test_queries_are_those_of_this_call_on_a_reused_blackbox(mnist_target):
    model, x, y = mnist_target
    bb = BlackBox(model)
    first = score_attack(bb, x[:2], y[:2], TrueGradient(model), step_size=1e-5, max_iterations=2)
    second = score_attack(bb, x[:2], y[:2], TrueGradient(model), step_size=1e-5, max_iterations=3, max_queries=9)
    assert first.queries.tolist() == [5, 5] and second.queries.tolist() == [7, 7]  # 1 check + 2 per iteration
    assert bb.counts.tolist() == [12, 12]


def test_reset_estimator_restarts_the_estimators_random_streams(mnist_target):
    model, x, y = mnist_target
    nes = NESEstimator(samples=4, seed=0)
    run = lambda **kw: score_attack(BlackBox(model), x[:2], y[:2], nes, step_size=0.01, update="l2",  # noqa: E731
                                    max_iterations=2, **kw).x_adv
    first = run()
    torch.testing.assert_close(run(), first)  # reset (the default): the same attack again
    assert not torch.allclose(run(reset_estimator=False), first)  # the streams go on: other directions


def test_an_image_whose_blackbox_budget_is_spent_is_skipped_not_refused(mnist_target):
    """Image 1 has no query left on the blackbox: it costs nothing and fails; the others are attacked as usual."""
    model, x, y = mnist_target
    bb = BlackBox(model, budget=7)
    bb.query(x[1:2].expand(7, -1, -1, -1), index=[1] * 7)
    out = score_attack(bb, x[:3], y[:3], TrueGradient(model), step_size=1e-5, max_iterations=2)
    assert out.queries.tolist() == [5, 0, 5] and not out.success.any()
    assert bb.counts.tolist() == [5, 7, 5]


def test_run_baseline_dispatches_decision_based_methods_to_their_runner(mnist_target, monkeypatch):
    from attacks import foolbox_bridge
    from attacks.score_attack import run_baseline

    model, x, y = mnist_target
    for name in ("hsja", "boundary"):
        monkeypatch.setattr(foolbox_bridge, f"run_{name}", lambda *a, name=name, **k: (name, k["max_queries"]))
    assert run_baseline("hsja", BlackBox(model), x[:1], y[:1], max_queries=7) == ("hsja", 7)
    assert run_baseline("boundary", BlackBox(model), x[:1], y[:1], max_queries=9) == ("boundary", 9)


def test_run_baseline_passes_the_query_budget_to_score_based_attacks(mnist_target):
    from attacks.score_attack import run_baseline

    model, x, y = mnist_target
    out = run_baseline("nes", BlackBox(model), x[:2], y[:2], max_queries=120, attack_settings={"step_size": 1e-6})
    assert out.queries.tolist() == [1 + 2 * 51] * 2  # MNIST NES: 50 samples + 1 check per iteration; a third: 154


def test_a_non_positive_epsilon_is_refused_before_any_query(mnist_target):
    model, x, y = mnist_target
    bb = BlackBox(model)
    for epsilon in (0.0, -0.1):
        with pytest.raises(LazyAppsError, match="epsilon must be positive"):
            score_attack(bb, x, y, NESEstimator(), epsilon=epsilon)
    assert bb.total == 0


def test_run_baseline_settings_override_the_datasets_table(mnist_target):
    """estimator_settings replace the table's: ZOO on 5 coordinates (symmetric) costs 10 queries + the check per
    iteration; dataset='cifar10' takes that table's sign step, 0.02."""
    from attacks.score_attack import run_baseline

    model, x, y = mnist_target
    out = run_baseline("zoo", BlackBox(model), x[:2], y[:2], dataset="cifar10", estimator_settings={"coordinates": 5},
                       attack_settings={"max_iterations": 1})
    assert out.queries.tolist() == [1 + 10 + 1] * 2
    delta = (out.x_adv - x[:2]).abs()
    assert float(delta.max()) == pytest.approx(0.02) and ((delta > 0).flatten(1).sum(1) <= 5).all()


def test_an_l2_step_moves_each_image_by_the_step_size():
    x = torch.full((2, 1, 2, 2), 0.5)
    g = torch.stack([torch.full((1, 2, 2), 1e-3), torch.tensor([[[3.0, -4.0], [0.0, 0.0]]])])  # norms 2e-3 and 5
    stepped = descent_step(x, g, step_size=0.1, update="l2")
    torch.testing.assert_close((stepped - x).flatten(1).norm(dim=1), torch.full((2,), 0.1))
