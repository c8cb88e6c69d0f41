"""Algorithm 4: per-image fine-tuning (vmap vs deep copies), budgets, early stop, targeted success, foolbox."""
from __future__ import annotations

import copy

import foolbox as fb
import pytest
import torch
from torch import Tensor, nn

from attacks.blackbox import BlackBox
from attacks.losses import margin_loss
from attacks.meta_attack import meta_attack
from attacks.meta_attacker import MetaAttacker
from attacks.meta_estimator import MetaEstimator, blocked_by_box
from attacks.per_image import finetune, masked_mse, stack_copies, top_coordinates, top_indices
from attacks.score_attack import score_attack
from lazyapps.errors import LazyAppsError


def _target(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 64, 4)).eval()


def _images(model: nn.Module, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=gen).to(next(model.parameters()).dtype)
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified by construction
    return x, y


def test_vmapped_finetuning_equals_deep_copied_modules():
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    x, target = torch.rand(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    mask = top_coordinates(torch.randn(4, 1, 8, 8), 10)
    stacked = stack_copies(dict(net.named_parameters()), 4)
    stacked["encoder.0.bias"][2] += 0.1  # copies that already differ stay independent
    tuned = finetune(net, stacked, x, target, mask, steps=4, lr=1e-2)
    for i in range(4):
        ref = copy.deepcopy(net)
        with torch.no_grad():
            for k, p in ref.named_parameters():
                p.copy_(stacked[k][i])
        opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
        for _ in range(4):
            opt.zero_grad()
            masked_mse(ref(x[i:i + 1])[0], target[i], mask[i]).backward()
            opt.step()
        for k, p in ref.named_parameters():
            torch.testing.assert_close(tuned[k][i], p.detach(), atol=1e-5, rtol=1e-5)


def test_top_coordinates_picks_largest_magnitudes():
    maps = torch.tensor([[[[0.1, -5.0], [3.0, 0.2]]]])
    assert top_coordinates(maps, 2).flatten().tolist() == [False, True, True, False]


def test_blocked_coordinates_are_those_a_descent_sign_step_cannot_move():
    x = torch.tensor([[[[0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.0]]]])
    g = torch.tensor([[[[1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0]]]])
    blocked = blocked_by_box(x, g)
    assert blocked.flatten().tolist() == [True, False, False, True, False, False, False]
    stepped = (x - 0.1 * g.sign()).clamp(0, 1)
    assert torch.equal(stepped == x, blocked | (g == 0))  # the definition: exactly the coordinates the step leaves


def test_excluded_coordinates_rank_last():
    maps = torch.tensor([[[[9.0, -8.0, 0.5, -0.1]]]])
    exclude = torch.tensor([[[[True, False, False, True]]]])
    assert top_indices(maps, 2, exclude=exclude).tolist() == [[1, 2]]
    assert sorted(top_indices(maps, 3, exclude=exclude).tolist()[0]) == [0, 1, 2]  # too few others: excluded fill in
    assert top_coordinates(maps, 2, exclude=exclude).flatten().tolist() == [False, True, True, False]


def test_skip_blocked_spends_steps_and_zoo_queries_on_movable_coordinates():
    """On images with many pixels at 0 and 1 (as MNIST), Du et al.'s ranking puts some of the q coordinates where
    the sign step is clipped away. With skip_blocked every coordinate of a free call moves, and a ZOO call
    queries only coordinates the copy's prediction says can move."""
    from attacks.per_image import predict

    model = _target(8)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 1, 8, 8, generator=gen) * 3 - 1).clamp(0, 1)  # a third of the pixels 0, a third 1
    with torch.no_grad():
        y = model(x).argmax(1)
        scores = model(x)

    def run(skip: bool) -> tuple[float, Tensor, Tensor]:
        torch.manual_seed(0)
        est = MetaEstimator(MetaAttacker(1, (4, 8)), q=12, every=2, finetune_steps=1, skip_blocked=skip)
        bb = BlackBox(model)
        g, _ = est.estimate(bb, x, y, scores=scores)  # call 0: free
        chosen = g != 0
        moved = (x - 0.01 * g.sign()).clamp(0, 1) != x
        pred = predict(est.model, est.copies(torch.arange(6)), x)
        g, queries = est.estimate(bb, x, y, scores=scores)  # call 1: ZOO on the chosen coordinates
        assert queries.tolist() == [12] * 6
        return (moved & chosen).sum().item() / chosen.sum().item(), g != 0, blocked_by_box(x, pred)

    share, zoo_chosen, blocked_by_prediction = run(True)
    assert share == 1.0
    assert zoo_chosen.flatten(1).sum(1).tolist() == [12] * 6 and not (zoo_chosen & blocked_by_prediction).any()
    share, zoo_chosen, blocked_by_prediction = run(False)
    assert share < 0.9 and (zoo_chosen & blocked_by_prediction).any()  # the control: Du et al.'s ranking


@pytest.mark.parametrize(("zoo_mode", "scores_known", "cost"), [
    ("forward", True, 12), ("forward", False, 13), ("symmetric", False, 24),
])
def test_zoo_step_of_the_estimator_matches_the_true_gradient_on_its_coordinates(zoo_mode, scores_known, cost):
    model = _target(1).double()
    x, y = _images(model, 3)
    est = MetaEstimator(MetaAttacker(1, (4, 8)).double(), q=12, every=3, h=1e-6, zoo_mode=zoo_mode)
    bb = BlackBox(model)
    scores = model(x).detach() if scores_known else None
    # calls 0 and 1: the meta-attacker's own predictions on its top 12 coordinates, no queries
    for _ in range(2):
        g, q = est.estimate(bb, x, y, scores=scores)
        assert q.tolist() == [0, 0, 0] and (g != 0).flatten(1).sum(1).tolist() == [12, 12, 12]
    assert bb.total == 0
    grad, queries = est.estimate(bb, x, y, scores=scores)  # call 2, the j-th: ZOO
    assert queries.tolist() == [cost] * 3 and bb.counts.tolist() == [cost] * 3
    xr = x.clone().requires_grad_()
    (true,) = torch.autograd.grad(margin_loss(model(xr), y).sum(), xr)
    support = grad != 0
    assert support.flatten(1).sum(1).tolist() == [12, 12, 12]
    cos = torch.nn.functional.cosine_similarity(grad.flatten(1), (true * support).flatten(1), dim=1)
    assert (cos > 0.999).all()
    for _ in range(2):  # calls 3 and 4 use the fine-tuned copies: free again
        assert est.estimate(bb, x, y, scores=scores)[1].tolist() == [0, 0, 0]
    assert est.estimate(bb, x, y, scores=scores)[1].tolist() == [cost] * 3  # call 5 = 2j: ZOO again


def test_finetuning_moves_each_copy_towards_its_zoo_estimate():
    model = _target(2)
    x, y = _images(model, 2)
    est = MetaEstimator(MetaAttacker(1, (4, 8)), q=16, every=1, finetune_steps=10, finetune_lr=5e-2)
    bb = BlackBox(model)
    before = {k: v.clone() for k, v in est.theta.items()}
    zoo_grad, _ = est.estimate(bb, x, y)
    copies = est.copies(torch.arange(2))
    assert any(not torch.equal(copies[k][0], before[k]) for k in before)
    assert any(not torch.equal(copies[k][0], copies[k][1]) for k in before)  # each image its own copy
    from attacks.gradient_sets import normalise_maps
    from attacks.per_image import predict, stack_copies as stack

    target, _ = normalise_maps(zoo_grad)
    mask = zoo_grad != 0
    err_before = [masked_mse(p, t, m) for p, t, m in zip(predict(est.model, stack(before, 2), x), target, mask)]
    err_after = [masked_mse(p, t, m) for p, t, m in zip(predict(est.model, copies, x), target, mask)]
    assert all(a < b for a, b in zip(err_after, err_before))


@pytest.mark.parametrize("targeted", [False, True])
def test_attack_succeeds_respects_budgets_and_box(targeted):
    model = _target(3)
    x, y = _images(model, 6)
    target = (y + 1) % 4 if targeted else None
    bb = BlackBox(model, budget=600)
    out = meta_attack(bb, x, y, MetaAttacker(1, (4, 8)), target=target, max_queries=600, q=16, every=3,
                      step=0.05, finetune_steps=2, batch_size=4)
    assert out.success.float().mean() >= 0.8
    assert (bb.counts <= 600).all() and torch.equal(out.queries, bb.counts)
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    with torch.no_grad():
        pred = model(out.x_adv).argmax(1)
    ok = out.success
    if targeted:
        assert torch.equal(pred[ok], target[ok])
    else:
        assert (pred[ok] != y[ok]).all()


def test_tight_budgets_are_never_exceeded():
    model = _target(4)
    x, y = _images(model, 3)
    for budget in (1, 20, 33, 70):
        bb = BlackBox(model, budget=budget)
        out = meta_attack(bb, x, y, MetaAttacker(1, (4, 8)), max_queries=budget, q=16, every=2, step=1e-4)
        assert (bb.counts <= budget).all() and torch.equal(out.queries, bb.counts)


def test_a_budget_stops_an_image_only_at_a_call_it_cannot_afford():
    # The free predictions between ZOO steps cost only the check: with exactly the queries an unlimited run
    # used, every image still succeeds (it used to stop once less than a ZOO step was left), and with one
    # fewer it fails, so the unlimited run's success-vs-budget curve is what runs at each budget give.
    model = _target(3)
    x, y = _images(model, 6)
    attacker = MetaAttacker(1, (4, 8))
    settings = {"q": 16, "every": 3, "step": 0.05, "finetune_steps": 2, "batch_size": 1}
    free = meta_attack(BlackBox(model), x, y, attacker, max_queries=5000, **settings)
    assert free.success.sum() >= 4
    zoo_cost = 16 + 1
    after_zoo = 0
    for i in free.success.nonzero().flatten().tolist():
        spent = int(free.queries[i])
        exact = meta_attack(BlackBox(model), x[i:i + 1], y[i:i + 1], attacker, max_queries=spent, **settings)
        assert bool(exact.success[0]) and int(exact.queries[0]) == spent
        short = meta_attack(BlackBox(model), x[i:i + 1], y[i:i + 1], attacker, max_queries=spent - 1, **settings)
        assert not bool(short.success[0])
        after_zoo += spent % zoo_cost != 0  # (a success on a free step after a ZOO step, the case that stopped early)
    assert after_zoo >= 1


def test_next_cost_is_a_zoo_step_exactly_when_the_call_is_due():
    est = MetaEstimator(MetaAttacker(1, (4, 8)), q=16, every=3, finetune_steps=0)
    model = _target(1)
    x, y = _images(model, 2)
    bb = BlackBox(model)
    costs = []
    for _ in range(6):
        costs.append(est.next_cost(torch.tensor([0, 1]), tuple(x.shape)).tolist())
        _, charged = est.estimate(bb, x, y, index=torch.tensor([0, 1]), scores=bb.query(x))
        assert charged.tolist() == costs[-1]
    assert costs == [[0, 0], [0, 0], [16, 16], [0, 0], [0, 0], [16, 16]]
    assert est.next_cost(torch.tensor([7]), tuple(x.shape)).tolist() == [0]  # an image not seen yet


def test_images_stop_as_soon_as_fooled():
    model = _target(5)
    x, y = _images(model, 5)
    y_wrong = y.clone()
    y_wrong[0] = (y[0] + 1) % 4  # image 0 is already "fooled": one check query, no more
    est = MetaEstimator(MetaAttacker(1, (4, 8)), q=16, every=3, finetune_steps=1)
    succeeded: set[int] = set()
    seen_after_success = []

    def callback(iteration, rows, x_adv):
        seen_after_success.extend(int(r) for r in rows if int(r) in succeeded)
        with torch.no_grad():
            fooled = model(x_adv[rows]).argmax(1) != y_wrong[rows]
        succeeded.update(int(r) for r in rows[fooled])

    bb = BlackBox(model, budget=2000)
    out = score_attack(bb, x, y_wrong, est, max_queries=2000, step_size=0.05, callback=callback)
    assert out.queries[0] == 1 and out.success[0]
    assert seen_after_success == []
    assert out.success.all()


def test_bad_inputs_are_clear_errors():
    model = _target(6)
    x, y = _images(model, 2)
    net = MetaAttacker(1, (4,))
    with pytest.raises(LazyAppsError, match=r"\[0, 1\]"):
        meta_attack(BlackBox(model), x * 2, y, net)
    with pytest.raises(LazyAppsError, match="at least 1"):
        meta_attack(BlackBox(model), x, y, net, max_queries=0)
    with pytest.raises(LazyAppsError, match=r"params do not fit the meta-attacker: missing \['decoder"):
        meta_attack(BlackBox(model), x, y, net, {"x": torch.zeros(1)})
    with pytest.raises(LazyAppsError, match="finetune_lr must be a positive number, got nan"):
        meta_attack(BlackBox(model), x, y, net, finetune_lr=float("nan"))
    with pytest.raises(LazyAppsError, match="step_size must be a positive number, got -0.01"):
        meta_attack(BlackBox(model), x, y, net, step=-0.01)
    from attacks.meta_attack import check_targets

    with pytest.raises(LazyAppsError, match="equals the true class"):
        check_targets(y, y.clone(), 4)
    with pytest.raises(LazyAppsError, match="out of range"):
        check_targets(y, torch.full_like(y, 7), 4)


def test_foolbox_users_call_it_like_any_attack():
    from attacks.foolbox_meta import MetaAttackFoolbox

    model = _target(7)
    x, y = _images(model, 4)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = MetaAttackFoolbox(MetaAttacker(1, (4, 8)), max_queries=600, q=16, every=3, step=0.05, finetune_steps=2)
    raw, clipped, success = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=[0.01, None])
    assert success.shape == (2, 4)
    assert not success[0].any()  # nothing within L2 0.01
    assert success[1].float().mean() >= 0.75
    with torch.no_grad():
        assert (model(raw[1]).argmax(1)[success[1]] != y[success[1]]).all()
    assert (attack.last_outcome.queries <= 600).all()
    target = (y + 2) % 4
    _, adv, ok = attack(fmodel, x, fb.criteria.TargetedMisclassification(target), epsilons=None)
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1)[ok], target[ok])
    assert attack.last_outcome.labels is None  # the criterion gives no true labels; none are made up
    assert torch.equal(attack.last_outcome.target_classes, target)
    # an image the target already gives the target class is fooled as it is, as foolbox's criterion judges it
    _, adv, ok = attack(fmodel, x, fb.criteria.TargetedMisclassification(y), epsilons=None)
    assert ok.all() and torch.equal(adv, x) and (attack.last_outcome.queries == 1).all()


def test_float64_images_and_targets_work_with_a_float32_meta_attacker():
    """The attacker (and its fine-tuning) keeps its own dtype; the images and the target theirs, directly and via foolbox."""
    from attacks.foolbox_meta import MetaAttackFoolbox

    model = _target(3).double()
    x, y = _images(model, 4)
    assert x.dtype == torch.float64
    bb = BlackBox(model, budget=600)
    out = meta_attack(bb, x, y, MetaAttacker(1, (4, 8)), max_queries=600, q=16, every=3, step=0.05,
                      finetune_steps=2, batch_size=4)
    assert out.success.float().mean() >= 0.75 and torch.equal(out.queries, bb.counts)
    assert out.x_adv.dtype == torch.float64
    attack = MetaAttackFoolbox(MetaAttacker(1, (4, 8)), max_queries=600, q=16, every=3, step=0.05, finetune_steps=2)
    _, adv, ok = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, fb.criteria.Misclassification(y), epsilons=None)
    assert adv.dtype == torch.float64 and ok.float().mean() >= 0.75
    with torch.no_grad():
        assert (model(adv).argmax(1)[ok] != y[ok]).all()


def test_meta_trained_free_estimates_follow_the_true_gradient():
    """The query-free calls of the estimator (a meta-trained copy, fine-tuned on one ZOO step) point along the true
    gradient of the smooth target on their coordinates; an untrained meta-attacker's do not."""
    from attacks.gradient_sets import as_pairs, build_gradient_set
    from attacks.meta_training import meta_train

    model = _target(1)
    torch.manual_seed(0)
    xs = torch.rand(600, 1, 8, 8)
    with torch.no_grad():
        ys = model(xs).argmax(1)
    torch.manual_seed(0)
    net = MetaAttacker(1, (8, 16))
    trained = meta_train(net, [as_pairs(build_gradient_set(model, xs, ys, num_classes=4))], method="reptile",
                         iterations=60, batch_size=64, eval_every=60).params
    x, y = _images(model, 8, seed=5)
    xr = x.clone().requires_grad_()
    (true,) = torch.autograd.grad(margin_loss(model(xr), y).sum(), xr)

    def free_estimate_cosine(params):
        est = MetaEstimator(net, params, q=16, every=2, finetune_steps=5)
        bb = BlackBox(model)
        est.estimate(bb, x, y)  # call 0: the meta-attacker alone
        est.estimate(bb, x, y)  # call 1 (the j-th): ZOO on the top 16 coordinates, then fine-tuning
        grad, queries = est.estimate(bb, x, y)
        assert queries.tolist() == [0] * 8
        return torch.nn.functional.cosine_similarity(grad.flatten(1), (true * (grad != 0)).flatten(1), dim=1)

    meta = free_estimate_cosine(trained)
    assert meta.mean() > 0.8 and meta.min() > 0.5
    assert free_estimate_cosine(None).mean() < meta.mean() - 0.25


def test_a_zoo_step_finetunes_only_its_images_copy_on_the_estimated_coordinates():
    """Against finetune() called by hand: target the ZOO estimate over its std, mask its q coordinates, row of image."""
    from attacks.gradient_sets import normalise_maps
    from attacks.per_image import predict

    model = _target(2)
    x, y = _images(model, 3)
    est = MetaEstimator(MetaAttacker(1, (4, 8)), q=10, every=1, finetune_steps=3, finetune_lr=1e-2)
    bb = BlackBox(model)
    est.estimate(bb, x, y, index=torch.tensor([4, 1, 7]))  # every call is a ZOO step (j = 1)
    before = {k: v.clone() for k, v in est.copies(torch.tensor([4, 1, 7])).items()}
    one = {k: v[2:] for k, v in before.items()}
    mask = top_coordinates(predict(est.model, one, x[2:]), 10)
    grad, queries = est.estimate(bb, x[2:], y[2:], index=torch.tensor([7]))  # image 7 alone
    assert queries.tolist() == [11] and torch.equal(grad != 0, mask)
    target, _ = normalise_maps(grad)
    expected = finetune(est.model, one, x[2:], target, mask, steps=3, lr=1e-2)
    after = est.copies(torch.tensor([4, 1, 7]))
    for k in before:
        torch.testing.assert_close(after[k][2:], expected[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(after[k][:2], before[k][:2])  # the other images' copies are untouched


def test_masked_mse_is_the_mean_over_the_masked_entries():
    pred, target = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [5.0, 0.0]])
    mask = torch.tensor([[True, False], [True, False]])
    assert float(masked_mse(pred, target, mask)) == pytest.approx((1.0 + 4.0) / 2)
    assert float(masked_mse(pred, target, torch.zeros_like(mask))) == 0.0


def test_excluded_coordinates_rank_below_zero_predictions():
    maps = torch.tensor([[[[5.0, 0.0, 0.0, 0.0]]]])
    exclude = torch.tensor([[[[True, False, False, False]]]])
    assert sorted(top_indices(maps, 3, exclude=exclude).tolist()[0]) == [1, 2, 3]


def test_meta_attack_steps_are_coordinate_sign_steps():
    """Du et al.'s update x[I] ← x[I] − λ·sign(g[I]): one free step moves exactly q pixels, each by exactly λ."""
    model = _target(3)
    x, y = _images(model, 3)
    x = 0.2 + 0.6 * x  # away from the box edges: no clipping
    out = meta_attack(BlackBox(model), x, y, MetaAttacker(1, (4, 8)), max_queries=2, q=16, every=5, step=0.03)
    assert out.queries.tolist() == [2, 2, 2]  # the check and one free iteration's check
    delta = (out.x_adv - x).flatten(1)
    moved = delta.abs() > 1e-6
    assert moved.sum(1).tolist() == [16] * 3
    torch.testing.assert_close(delta[moved].abs(), torch.full((48,), 0.03), rtol=0, atol=1e-6)


def test_meta_attack_passes_zoo_mode_and_loss_to_its_estimator():
    model = _target(3)
    x, y = _images(model, 2)
    seen = []

    def loss(scores, y, target=None):
        seen.append(len(scores))
        return margin_loss(scores, y, target)

    # symmetric: a ZOO step on q = 4 coordinates costs 8 queries (forward would cost 4 and fit a second step)
    out = meta_attack(BlackBox(model), x, y, MetaAttacker(1, (4, 8)), loss=loss, max_queries=1 + 9, q=4, every=1,
                      step=1e-5, zoo_mode="symmetric", finetune_steps=0)
    assert out.queries.tolist() == [10, 10] and not out.success.any()
    assert seen == [2 * 8]  # the loss differentiated is the caller's: 8 query rows per image


def test_blocked_by_box_against_a_clipped_sign_step():
    """Blocked ⇔ a non-zero gradient whose clipped descent sign step leaves the pixel where it is."""
    xs, gs = torch.tensor([0.0, 0.3, 1.0]), torch.tensor([-1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0])
    x = xs.repeat_interleave(len(gs)).reshape(1, 1, 1, -1)
    g = gs.repeat(len(xs)).reshape(1, 1, 1, -1)
    stepped = (x - 0.01 * g.sign()).clamp(0, 1)
    assert torch.equal(blocked_by_box(x, g), (g != 0) & (stepped == x))


def test_meta_estimator_settings_below_their_minimum_are_refused():
    net = MetaAttacker(1, (4,))
    for bad in (dict(q=0), dict(every=0), dict(finetune_steps=-1)):
        with pytest.raises(LazyAppsError, match="need q >= 1, every >= 1 and finetune_steps >= 0"):
            MetaEstimator(net, **bad)
    MetaEstimator(net, q=1, every=1, finetune_steps=0)  # the smallest settings are valid


def test_defaults_are_du_et_als_mnist_settings_everywhere():
    """meta_attack's and MetaEstimator's defaults are PAPER_SETTINGS['mnist'], and the pipeline's paper preset
    attacks with PAPER_SETTINGS of each dataset (three places that must agree)."""
    import inspect

    from attacks.meta_attack import PAPER_SETTINGS
    from attacks.pipeline import PRESETS

    attack = {k: p.default for k, p in inspect.signature(meta_attack).parameters.items()}
    estimator = {k: p.default for k, p in inspect.signature(MetaEstimator).parameters.items()}
    assert {k: attack[k] for k in PAPER_SETTINGS["mnist"]} == PAPER_SETTINGS["mnist"]
    assert {k: estimator[k] for k in ("q", "every", "h")} == {k: attack[k] for k in ("q", "every", "h")}
    shared = ("finetune_steps", "finetune_lr", "zoo_mode", "skip_blocked")
    assert {k: attack[k] for k in shared} == {k: estimator[k] for k in shared}
    assert (estimator["finetune_steps"], estimator["finetune_lr"]) == (PRESETS["paper"]["mnist"]["finetune_steps"],
                                                                        PRESETS["paper"]["mnist"]["finetune_lr"])
    assert estimator["zoo_mode"] == "forward"  # Du et al.'s implementation
    assert estimator["skip_blocked"] is True  # ours, not Du et al.'s (docs/attack.md)
    from attacks.foolbox_meta import MetaAttackFoolbox

    foolbox = {k: p.default for k, p in inspect.signature(MetaAttackFoolbox).parameters.items()}
    assert {k: foolbox[k] for k in shared if k in foolbox} == {k: attack[k] for k in shared if k in foolbox}
    for dataset, settings in PAPER_SETTINGS.items():
        assert {k: PRESETS["paper"][dataset][k] for k in settings} == settings
    assert attack["max_queries"] == PRESETS["paper"]["mnist"]["max_queries"] == 10_000


def test_a_meta_attacker_in_training_mode_predicts_in_eval_mode():
    """A meta-attacker handed over in training mode (dropout on) gives the eval-mode prediction on its top q."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.Conv2d(4, 1, 3, padding=1)).train()
    model = _target(1)
    x, y = _images(model, 2)
    with torch.no_grad():
        reference = copy.deepcopy(net).eval()(x)
    grad, queries = MetaEstimator(net, q=8, every=5).estimate(BlackBox(model), x, y)
    mask = top_coordinates(reference, 8)
    assert queries.tolist() == [0, 0]
    torch.testing.assert_close(grad, torch.where(mask, reference, torch.zeros_like(reference)))


def test_the_zoo_step_is_a_forward_difference_with_the_estimators_h():
    """Against a loop by hand: (f(x + h·e_c) − f(x)) / h on each image's top-q coordinates of its copy, h = 0.05."""
    from attacks.per_image import predict

    model = _target(1).double()
    x, y = _images(model, 2)
    x = 0.1 + 0.8 * x  # x + h stays in [0, 1]
    with torch.no_grad():
        y, scores = model(x).argmax(1), model(x)
    h, q = 0.05, 6
    est = MetaEstimator(MetaAttacker(1, (4, 8)).double(), q=q, every=1, h=h, finetune_steps=0)
    top = top_indices(predict(est.model, stack_copies(est.theta, 2), x), q)
    grad, queries = est.estimate(BlackBox(model), x, y, scores=scores)
    assert queries.tolist() == [q, q]
    with torch.no_grad():
        for i in range(2):
            f = lambda z: float(margin_loss(model(z.reshape(1, 1, 8, 8)), y[i:i + 1]))  # noqa: E731
            expected = torch.zeros(64, dtype=torch.float64)
            for c in top[i].tolist():
                bumped = x[i].flatten().clone()
                bumped[c] += h
                expected[c] = (f(bumped) - f(x[i])) / h
            torch.testing.assert_close(grad[i].flatten(), expected, rtol=1e-9, atol=1e-12)


def test_costs_when_q_exceeds_an_images_pixels():
    """q = 100 on 2×4×4 images: every one of the 32 coordinates is estimated; the f(x) query only without scores."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 3))
    x = torch.rand(2, 2, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    est = MetaEstimator(MetaAttacker(2, (4,)), q=100, every=1, finetune_steps=0)
    shape = tuple(x.shape)
    assert est.queries_per_estimate(shape) == 32 and est.queries_per_estimate(shape, scores_known=False) == 33
    assert est.next_cost(torch.tensor([0, 1]), shape, scores_known=False).tolist() == [33, 33]
    assert est.next_cost(torch.tensor([0, 1]), shape).tolist() == [32, 32]
    bb = BlackBox(model)
    grad, queries = est.estimate(bb, x, y)
    assert queries.tolist() == [33, 33] == bb.counts.tolist()


@pytest.mark.parametrize("every", [1, 2])
def test_next_cost_is_the_charge_of_each_call_from_the_first(every):
    est = MetaEstimator(MetaAttacker(1, (4, 8)), q=16, every=every, finetune_steps=0)
    model = _target(1)
    x, y = _images(model, 2)
    bb = BlackBox(model)
    index = torch.tensor([3, 0])
    costs = []
    for _ in range(4):
        costs.append(est.next_cost(index, tuple(x.shape)).tolist())
        _, charged = est.estimate(bb, x, y, index=index, scores=bb.query(x, index=index))
        assert charged.tolist() == costs[-1]
    assert costs == [[16, 16] if (call + 1) % every == 0 else [0, 0] for call in range(4)]


def test_an_images_copy_does_not_depend_on_the_images_seen_before_it():
    """Image 5 first estimated after images 0 and 1 have fine-tuned copies gets a fresh copy of θ: the same
    estimates and copy as an estimator that sees image 5 alone."""
    model = _target(2)
    x, y = _images(model, 3)
    net = MetaAttacker(1, (4, 8))
    busy, alone = (MetaEstimator(net, q=8, every=1, finetune_steps=2) for _ in range(2))
    for _ in range(2):
        busy.estimate(BlackBox(model), x[:2], y[:2], index=torch.tensor([0, 1]))
    for _ in range(2):
        g_busy, _ = busy.estimate(BlackBox(model), x[2:], y[2:], index=torch.tensor([5]))
        g_alone, _ = alone.estimate(BlackBox(model), x[2:], y[2:], index=torch.tensor([5]))
        torch.testing.assert_close(g_busy, g_alone)
    for k, v in alone.copies(torch.tensor([5])).items():
        torch.testing.assert_close(busy.copies(torch.tensor([5]))[k], v)


def test_meta_attack_checks_the_meta_attackers_channels_before_any_query():
    model = _target(6)
    x, y = _images(model, 2)
    bb = BlackBox(model)
    with pytest.raises(LazyAppsError, match="takes 3-channel images, but the attacked images have 1"):
        meta_attack(bb, x, y, MetaAttacker(3, (4,)))
    assert bb.total == 0
    # a meta-attacker without an in_channels attribute is not refused for lacking one
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1))
    out = meta_attack(bb, x, y, plain, max_queries=3, q=4, every=5, step=1e-4, finetune_steps=0)  # 2 free steps
    assert out.queries.tolist() == [3, 3]


def test_meta_attack_refuses_labels_or_targets_of_another_count_before_any_query():
    model = _target(6)
    x, y = _images(model, 3)
    bb = BlackBox(model)
    with pytest.raises(LazyAppsError, match=r"need \(N,\) labels and targets for 3 images"):
        meta_attack(bb, x, torch.cat([y, y[:1]]), MetaAttacker(1, (4,)))  # (a chunk would slice the extra one off)
    with pytest.raises(LazyAppsError, match=r"need \(N,\) labels and targets for 3 images"):
        meta_attack(bb, x, y, MetaAttacker(1, (4,)), target=((y + 1) % 4)[:2])
    with pytest.raises(LazyAppsError, match="batch_size must be at least 1"):
        meta_attack(bb, x, y, MetaAttacker(1, (4,)), batch_size=0)
    assert bb.total == 0


def test_meta_attack_is_score_attack_with_a_meta_estimator_of_its_settings():
    """Every setting reaches the estimator: the outcome and every image the target is asked about equal those of
    the loop run by hand with MetaEstimator(settings), and differ when any one of h, finetune_steps, finetune_lr or
    skip_blocked is left at its default instead."""
    model = _target(3)
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(4, 1, 8, 8, generator=gen) * 1.6 - 0.3).clamp(0, 1)  # pixels at 0 and 1: skip_blocked matters
    with torch.no_grad():
        y = model(x).argmax(1)
    torch.manual_seed(0)
    net = MetaAttacker(1, (4, 8))
    settings = dict(q=6, every=2, h=0.02, finetune_steps=3, finetune_lr=0.3, skip_blocked=False)
    budget, step = 60, 0.05

    def asked(run):
        seen = []
        hook = model.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
        try:
            out = run()
        finally:
            hook.remove()
        return out, torch.cat(seen)

    def by_hand(**changes):
        est = MetaEstimator(net, **{**settings, **changes})
        return asked(lambda: score_attack(BlackBox(model), x, y, est, max_queries=budget, step_size=step))

    out, queried = asked(lambda: meta_attack(BlackBox(model), x, y, net, max_queries=budget, step=step, **settings))
    expected, expected_queried = by_hand()
    assert torch.equal(out.x_adv, expected.x_adv) and torch.equal(queried, expected_queried)
    assert torch.equal(out.queries, expected.queries) and torch.equal(out.success, expected.success)
    for name, default in (("h", 1e-4), ("finetune_steps", 20), ("finetune_lr", 1e-2), ("skip_blocked", True)):
        _, other = by_hand(**{name: default})
        assert other.shape != queried.shape or not torch.equal(other, queried), name


def test_copies_of_images_without_one_are_a_key_error():
    model = _target(1)
    x, y = _images(model, 2)
    est = MetaEstimator(MetaAttacker(1, (4, 8)), q=8, every=5)
    est.estimate(BlackBox(model), x, y, index=torch.tensor([0, 3]))
    assert set(est.copies(torch.tensor([3, 0]))) == set(est.theta)
    for index in ([1], [0, 2], [7], [-1]):  # not silently another image's copy, nor an IndexError past the last one
        with pytest.raises(KeyError, match="no meta-attacker copy"):
            est.copies(torch.tensor(index))


@pytest.mark.parametrize("scores_known, cost", [(True, 8), (False, 9)])
def test_a_due_zoo_step_is_taken_exactly_when_the_blackbox_can_pay_for_it(scores_known, cost):
    """Blackbox budget `cost`, image 1 already charged once: image 0 can pay for its ZOO step (exactly), image 1
    cannot and gets its copy's free prediction instead, charged nothing; nothing is refused."""
    from attacks.per_image import predict

    model = _target(1)
    x, y = _images(model, 2)
    est = MetaEstimator(MetaAttacker(1, (4, 8)), q=8, every=1, finetune_steps=0)
    free = predict(est.model, stack_copies(est.theta, 2), x)
    bb = BlackBox(model, budget=cost)
    bb.query(x[1:], index=[1])
    with torch.no_grad():
        scores = model(x) if scores_known else None
    grad, queries = est.estimate(bb, x, y, scores=scores)
    assert queries.tolist() == [cost, 0] and bb.counts.tolist() == [cost, 1]
    torch.testing.assert_close(grad[1], torch.where(top_coordinates(free, 8)[1], free[1], torch.zeros_like(free[1])))
    assert not torch.allclose(grad[0], torch.where(top_coordinates(free, 8)[0], free[0], torch.zeros_like(free[0])))


def test_a_zoo_step_of_some_images_is_theirs_alone():
    """Image 1 is due for its ZOO step (every = 2, seen once before), image 0 is new (a free call): image 1 is
    charged, its estimate is the one it gets alone (its own scores as the baseline), and only its copy is
    fine-tuned; image 0's copy stays θ."""
    model = _target(2)
    x, y = _images(model, 2)
    with torch.no_grad():
        scores = model(x)
    net = MetaAttacker(1, (4, 8))
    est = MetaEstimator(net, q=8, every=2, finetune_steps=2)
    bb = BlackBox(model)
    est.estimate(bb, x[1:], y[1:], index=torch.tensor([1]), scores=scores[1:])
    grad, queries = est.estimate(bb, x, y, index=torch.tensor([0, 1]), scores=scores)
    assert queries.tolist() == [0, 8] and bb.counts.tolist() == [0, 8]
    alone, _ = MetaEstimator(net, q=8, every=1, finetune_steps=0).estimate(BlackBox(model), x[1:], y[1:], scores=scores[1:])
    torch.testing.assert_close(grad[1:], alone)
    copies = est.copies(torch.tensor([0, 1]))
    assert all(torch.equal(copies[k][0], v) for k, v in est.theta.items())
    assert any(not torch.equal(copies[k][1], v) for k, v in est.theta.items())


def test_params_with_names_the_meta_attacker_lacks_are_refused():
    net = MetaAttacker(1, (4,))
    params = {**dict(net.named_parameters()), "head.weight": torch.zeros(1)}  # would be silently ignored
    with pytest.raises(LazyAppsError, match=r"missing none, unexpected \['head.weight'\]"):
        MetaEstimator(net, params)


def test_the_foolbox_attack_hands_every_setting_to_meta_attack(monkeypatch):
    """MetaAttackFoolbox(settings) runs meta_attack with exactly those settings (meta_attack stubbed to record them),
    and refuses a model whose bounds are not the attack's pixel range (0, 1)."""
    import attacks.foolbox_meta as foolbox_meta

    class Recorded(Exception):
        pass

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise Recorded

    monkeypatch.setattr(foolbox_meta, "meta_attack", record)
    model = _target(7)
    x, y = _images(model, 2)
    settings = dict(max_queries=77, q=5, every=2, step=0.03, h=0.02, finetune_steps=3, finetune_lr=0.2,
                    skip_blocked=False, batch_size=3)
    attack = foolbox_meta.MetaAttackFoolbox(MetaAttacker(1, (4,)), **settings)
    with pytest.raises(Recorded):
        attack(fb.PyTorchModel(model, bounds=(0, 1)), x, fb.criteria.Misclassification(y), epsilons=None)
    assert {k: seen[k] for k in settings} == settings
    with pytest.raises(LazyAppsError, match=r"needs a model with bounds \(0, 1\), got \(0(\.0)?, 255(\.0)?\)"):
        attack(fb.PyTorchModel(model, bounds=(0, 255)), x, fb.criteria.Misclassification(y), epsilons=None)
