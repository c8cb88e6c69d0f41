"""Zeroth-order estimators against the true gradient of a smooth model, with exact query counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks import BlackBox, margin_loss
from attacks.estimators import BanditsEstimator, NESEstimator, ZOOEstimator, query_losses
from lazyapps.errors import LazyAppsError


def smooth_model() -> nn.Module:
    """A float64 tanh conv net (smooth, so finite differences converge to its gradient)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    ).double()


@pytest.fixture
def setup():
    model = smooth_model()
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly "classified": the margin loss is positive and smooth
    return model, x, y


def true_gradient(model, x, y, target=None):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(margin_loss(model(x), y, target).sum(), x)[0]


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


@pytest.mark.parametrize("mode, per_image", [("symmetric", 128), ("forward", 65)])
def test_zoo_all_coordinates_recovers_gradient(setup, mode, per_image):
    model, x, y = setup
    bb = BlackBox(model)
    grad, queries = ZOOEstimator(mode=mode).estimate(bb, x, y)
    assert (cosine(grad, true_gradient(model, x, y)) > 0.999).all()
    assert queries.tolist() == [per_image] * 3 == bb.counts.tolist()


def test_zoo_forward_reuses_known_scores(setup):
    model, x, y = setup
    bb = BlackBox(model)
    with torch.no_grad():
        scores = model(x)
    grad, queries = ZOOEstimator(mode="forward").estimate(bb, x, y, scores=scores)
    assert queries.tolist() == [64] * 3 == bb.counts.tolist()
    assert (cosine(grad, true_gradient(model, x, y)) > 0.999).all()


def test_zoo_targeted(setup):
    model, x, y = setup
    target = (y + 1) % 5
    grad, _ = ZOOEstimator().estimate(BlackBox(model), x, y, target=target)
    assert (cosine(grad, true_gradient(model, x, y, target)) > 0.999).all()


def test_zoo_on_given_coordinates_per_image(setup):
    model, x, y = setup
    bb = BlackBox(model)
    g = torch.Generator().manual_seed(5)
    coords = torch.stack([torch.randperm(64, generator=g)[:10] for _ in range(3)])  # different per image
    index = torch.tensor([7, 2, 4])
    grad, queries = ZOOEstimator(h=1e-5).estimate_on(bb, x, y, coords, index=index)
    truth = true_gradient(model, x, y).flatten(1)
    flat = grad.flatten(1)
    torch.testing.assert_close(flat.gather(1, coords), truth.gather(1, coords), rtol=1e-5, atol=1e-8)
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, coords, True)
    assert (flat[~mask] == 0).all()
    assert queries.tolist() == [20] * 3
    assert bb.counts[index].tolist() == [20] * 3 and bb.total == 60


def test_zoo_random_subset_and_box_edges(setup):
    model, x, y = setup
    x = x.clone()
    x[:, :, 0, :] = 1.0  # whole rows at the box edges: steps are one-sided there
    x[:, :, 1, :] = 0.0
    with torch.no_grad():
        y = model(x).argmax(1)
    bb = BlackBox(model)
    grad, _ = ZOOEstimator().estimate(bb, x, y)
    assert (cosine(grad, true_gradient(model, x, y)) > 0.999).all()
    sub, queries = ZOOEstimator(coordinates=16).estimate(BlackBox(model), x, y)
    assert ((sub.flatten(1) != 0).sum(1) <= 16).all() and queries.tolist() == [32] * 3


@pytest.mark.parametrize("antithetic, expected_queries", [(True, 400), (False, 401)])
def test_nes_correlates_with_gradient(setup, antithetic, expected_queries):
    model, x, y = setup
    torch.manual_seed(0)
    bb = BlackBox(model)
    grad, queries = NESEstimator(samples=400, antithetic=antithetic).estimate(bb, x, y)
    assert (cosine(grad, true_gradient(model, x, y)) > 0.6).all()
    assert queries.tolist() == [expected_queries] * 3 == bb.counts.tolist()


def test_nes_more_samples_better(setup):
    model, x, y = setup
    truth = true_gradient(model, x, y)
    torch.manual_seed(0)
    few = torch.stack([cosine(NESEstimator(samples=10).estimate(BlackBox(model), x, y)[0], truth) for _ in range(5)])
    many = torch.stack([cosine(NESEstimator(samples=400).estimate(BlackBox(model), x, y)[0], truth) for _ in range(5)])
    assert many.mean() > few.mean() + 0.2


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(prior_update="gd", fd_eta=0.01, exploration=0.01, online_lr=0.1)],
    ids=["eg-linf", "gd-l2"],
)
def test_bandits_prior_improves_over_iterations(setup, settings):
    model, x, y = setup
    torch.manual_seed(0)
    truth = true_gradient(model, x, y)
    bb = BlackBox(model)
    est = BanditsEstimator(tile_size=1, **settings)
    cos = []
    for _ in range(150):
        grad, queries = est.estimate(bb, x, y)
        cos.append(cosine(grad, truth))
    assert queries.tolist() == [2] * 3
    assert bb.counts.tolist() == [300] * 3
    early, late = torch.stack(cos[:5]).mean(), torch.stack(cos[-10:]).mean(0)
    assert (late > 0.65).all() and late.mean() > early + 0.4


def test_bandits_keeps_a_prior_per_image_and_tiles(setup):
    model, x, y = setup
    est = BanditsEstimator(tile_size=4)
    bb = BlackBox(model)
    grad, _ = est.estimate(bb, x, y, index=torch.tensor([0, 5, 2]))
    assert est.priors(torch.tensor([0, 5, 2]), x).shape == (3, 1, 2, 2)
    # tiles of 4×4 pixels share one value
    tiles = grad.reshape(3, 1, 2, 4, 2, 4)
    assert torch.allclose(tiles, tiles[:, :, :, :1, :, :1].expand_as(tiles))
    untouched = est.priors(torch.tensor([1, 3]), x)
    assert (untouched == 0).all()  # images never estimated keep a zero prior
    est.reset()
    assert (est.priors(torch.tensor([0]), x) == 0).all()


def test_query_losses_one_call_for_all_points(setup):
    model, x, y = setup

    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    bb = BlackBox(model)
    points = x.unsqueeze(1).repeat(1, 4, 1, 1, 1)
    losses = query_losses(bb, points, y, loss=margin_loss, index=torch.arange(3))
    assert calls == [12] and losses.shape == (3, 4)
    torch.testing.assert_close(losses[:, 0], margin_loss(model(x), y).detach())


def test_label_only_blackbox_is_refused(setup):
    model, x, y = setup
    with pytest.raises(LazyAppsError, match="output='logits' or 'probs'"):
        ZOOEstimator().estimate(BlackBox(model, output="label"), x, y)


def test_bad_settings():
    with pytest.raises(LazyAppsError, match="symmetric, forward"):
        ZOOEstimator(mode="central")
    with pytest.raises(LazyAppsError, match="even"):
        NESEstimator(samples=5)
    with pytest.raises(LazyAppsError, match="eg, gd"):
        BanditsEstimator(prior_update="adam")


ESTIMATOR_MAKERS = {
    "zoo": lambda seed: ZOOEstimator(coordinates=8, seed=seed),
    "nes": lambda seed: NESEstimator(samples=6, seed=seed),
    "bandits": lambda seed: BanditsEstimator(tile_size=2, seed=seed),
}


@pytest.mark.parametrize("name", list(ESTIMATOR_MAKERS))
def test_random_draws_are_per_image_whatever_the_batch(setup, name):
    """An image's estimates depend on its number and the seed, not on which images share its batch."""
    model, x, y = setup
    make = ESTIMATOR_MAKERS[name]
    together, apart = make(7), make(7)
    index = torch.tensor([4, 9, 2])
    for _ in range(3):  # successive estimates continue each image's stream (and Bandits' prior)
        whole, _ = together.estimate(BlackBox(model), x, y, index=index)
        # the later images first: draws taken from one shared stream in batch order would match the whole batch's
        # when the halves come in the same order, but not in this one
        rest, _ = apart.estimate(BlackBox(model), x[1:], y[1:], index=index[1:])
        first, _ = apart.estimate(BlackBox(model), x[:1], y[:1], index=index[:1])
        torch.testing.assert_close(torch.cat([first, rest]), whole)
    # The same image under two numbers draws differently, another seed draws differently, reset restarts the streams.
    same = x[:1].expand(2, -1, -1, -1)
    twice, _ = make(7).estimate(BlackBox(model), same, y[:1].expand(2), index=torch.tensor([0, 1]))
    assert not torch.allclose(twice[0], twice[1])
    other, _ = make(8).estimate(BlackBox(model), x, y, index=index)
    fresh, _ = make(7).estimate(BlackBox(model), x, y, index=index)
    assert not torch.allclose(other, fresh)
    together.reset()
    torch.testing.assert_close(together.estimate(BlackBox(model), x, y, index=index)[0], fresh)


def test_default_seed_comes_from_torch_generator():
    torch.manual_seed(3)
    a = NESEstimator().streams.seed
    torch.manual_seed(3)
    assert NESEstimator().streams.seed == a != NESEstimator().streams.seed
    assert ZOOEstimator().streams is None  # all coordinates: nothing is drawn


def on_the_box_edges(model, x, y):
    """(model, x with its first row of pixels at 1 and its second at 0, the model's labels of that x)."""
    x = x.clone()
    x[:, :, 0, :] = 1.0
    x[:, :, 1, :] = 0.0
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def test_zoo_forward_at_the_box_edges_recovers_gradient(setup):
    """Forward differences at a pixel at 1 step backwards (the point must stay in [0, 1]) and divide by that step."""
    model, x, y = on_the_box_edges(*setup)
    grad, queries = ZOOEstimator(mode="forward", h=1e-6).estimate(BlackBox(model), x, y)
    truth = true_gradient(model, x, y)
    assert torch.isfinite(grad).all() and queries.tolist() == [65] * 3
    torch.testing.assert_close(grad[:, :, :2], truth[:, :, :2], rtol=1e-3, atol=1e-6)  # the edge rows themselves
    assert (cosine(grad, truth) > 0.999).all()


@pytest.mark.parametrize("antithetic", [True, False])
def test_nes_equals_the_formula_with_its_own_directions(setup, antithetic):
    """NES against a slow per-direction loop on the same directions (its image streams), pixels at 0 and 1 included:
    the scale 1/(2σ·n/2) or 1/(σn), the clipped query points and the actual displacement."""
    from attacks.estimators import ImageStreams

    model, x, y = on_the_box_edges(*setup)
    sigma, samples, index = 0.01, 6, torch.tensor([3, 0, 5])
    grad, _ = NESEstimator(sigma=sigma, samples=samples, antithetic=antithetic, seed=11).estimate(
        BlackBox(model), x, y, index=index)
    n = samples // 2 if antithetic else samples
    u = ImageStreams(11).draw(index, (n,) + tuple(x.shape[1:]), like=x)
    f = lambda z: float(margin_loss(model(z.unsqueeze(0)), y[i:i + 1]))  # noqa: E731
    with torch.no_grad():
        for i in range(3):
            ref = torch.zeros_like(x[i])
            for j in range(n):
                plus = (x[i] + sigma * u[i, j]).clamp(0, 1)
                if antithetic:
                    minus = (x[i] - sigma * u[i, j]).clamp(0, 1)
                    ref += (f(plus) - f(minus)) * (plus - minus) / (4 * sigma**2)
                else:
                    ref += (f(plus) - f(x[i])) * (plus - x[i]) / sigma**2
            torch.testing.assert_close(grad[i], ref / n)


def test_nes_is_an_unbiased_gradient_estimate_in_scale(setup):
    """Not only the direction: projected on the true gradient, many samples give about 1× it (a smooth target)."""
    model, x, y = setup
    truth = true_gradient(model, x, y)
    grad, _ = NESEstimator(samples=4000, seed=0).estimate(BlackBox(model), x, y)
    ratio = (grad * truth).flatten(1).sum(1) / truth.flatten(1).pow(2).sum(1)
    assert ((ratio - 1).abs() < 0.15).all()


def test_nes_without_antithetic_reuses_known_scores(setup):
    model, x, y = setup
    bb = BlackBox(model)
    with torch.no_grad():
        scores = model(x)
    est = NESEstimator(samples=40, antithetic=False)
    grad, queries = est.estimate(bb, x, y, scores=scores)
    assert queries.tolist() == [40] * 3 == bb.counts.tolist()
    assert est.queries_per_estimate(tuple(x.shape), scores_known=True) == 40
    assert est.queries_per_estimate(tuple(x.shape), scores_known=False) == 41


def test_forward_differences_without_scores_on_multichannel_images(setup):
    """2-channel images, f(x) queried in the same call: all 2·4·4 coordinates plus one, and the true gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 16, 4)).double()
    x = 0.2 + 0.6 * torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    est = ZOOEstimator(mode="forward", h=1e-6)
    assert est.queries_per_estimate(tuple(x.shape), scores_known=False) == 33
    assert est.next_cost(torch.arange(3), tuple(x.shape), scores_known=False).tolist() == [33] * 3
    bb = BlackBox(model)
    grad, queries = est.estimate(bb, x, y)
    assert queries.tolist() == [33] * 3 == bb.counts.tolist()
    torch.testing.assert_close(grad, true_gradient(model, x, y), rtol=1e-4, atol=1e-7)


def test_zoo_query_counts_by_hand():
    shape = (5, 3, 4, 4)  # d = 48
    assert ZOOEstimator().queries_per_estimate(shape) == 96
    assert ZOOEstimator(coordinates=100).queries_per_estimate(shape) == 96  # at most d coordinates
    assert ZOOEstimator(coordinates=7, mode="forward").queries_per_estimate(shape) == 7
    assert ZOOEstimator(mode="forward").queries_on(5) == 5 and ZOOEstimator(mode="forward").queries_on(
        5, scores_known=False) == 6


def test_zoo_on_one_random_coordinate(setup):
    model, x, y = setup
    bb = BlackBox(model)
    grad, queries = ZOOEstimator(coordinates=1, seed=0).estimate(bb, x, y)
    assert queries.tolist() == [2] * 3 == bb.counts.tolist()
    assert (grad.flatten(1) != 0).sum(1).tolist() == [1] * 3


def test_estimator_settings_at_their_limits():
    for bad in (dict(h=0.5), dict(h=0.0), dict(coordinates=0)):
        with pytest.raises(LazyAppsError):
            ZOOEstimator(**bad)
    for bad in (dict(samples=0), dict(samples=0, antithetic=False), dict(sigma=0.0)):
        with pytest.raises(LazyAppsError):
            NESEstimator(**bad)
    for name in ("exploration", "fd_eta", "online_lr"):
        with pytest.raises(LazyAppsError, match="must be positive"):
            BanditsEstimator(**{name: 0.0})
    assert NESEstimator(samples=1, antithetic=False).queries_per_estimate((1, 1, 8, 8), scores_known=False) == 2


def test_a_single_nes_sample_without_antithetic_pairs(setup):
    model, x, y = setup
    bb = BlackBox(model)
    grad, queries = NESEstimator(samples=1, antithetic=False, seed=0).estimate(bb, x, y)
    assert queries.tolist() == [2] * 3 == bb.counts.tolist() and torch.isfinite(grad).all()


def test_eg_step_is_the_exponentiated_gradient_update():
    """Ilyas et al.'s EG step on p = (v + 1)/2: p·e^{lr g} / (p·e^{lr g} + (1 − p)·e^{−lr g}), back to [−1, 1]."""
    from attacks.estimators import _eg_step

    v = torch.tensor([-0.9, -0.2, 0.0, 0.5, 0.95], dtype=torch.float64)
    g = torch.tensor([0.3, -1.0, 2.0, 0.1, -0.4], dtype=torch.float64)
    lr = 0.7
    p = (v + 1) / 2
    up, down = p * torch.exp(lr * g), (1 - p) * torch.exp(-lr * g)
    torch.testing.assert_close(_eg_step(v, g, lr), 2 * up / (up + down) - 1)


@pytest.mark.parametrize("settings", [dict(), dict(prior_update="gd", fd_eta=0.01, exploration=0.01, online_lr=0.1)],
                         ids=["eg-linf", "gd-l2"])
def test_bandits_equals_algorithm_2_by_hand(setup, settings):
    """Two successive estimates against the algorithm written out per image with the same exploration
    directions (its image streams): probes x + η·q/‖q‖ for q = up(v ± u), Δ = (L₁ − L₂)/(ηδ)·u, then the
    prior update."""
    from attacks.estimators import ImageStreams, _eg_step

    model, x, y = setup
    tile, index = 4, torch.tensor([2, 0, 6])
    est = BanditsEstimator(tile_size=tile, seed=5, **settings)
    eta, delta, lr = est.fd_eta, est.exploration, est.online_lr
    streams = ImageStreams(5)
    prior = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    up = lambda v: v.repeat_interleave(tile, -1).repeat_interleave(tile, -2)  # noqa: E731
    bb = BlackBox(model)
    with torch.no_grad():
        for _ in range(2):
            grad, _ = est.estimate(bb, x, y, index=index)
            u = streams.draw(index, (1, 2, 2), like=prior) * (delta / 2)  # δ/√dim(v), dim(v) = 4
            for i in range(3):
                f = lambda z: float(margin_loss(model(z.clamp(0, 1).unsqueeze(0)), y[i:i + 1]))  # noqa: E731
                q1, q2 = up(prior[i] + u[i]), up(prior[i] - u[i])
                step = (f(x[i] + eta * q1 / q1.norm()) - f(x[i] + eta * q2 / q2.norm())) / (eta * delta) * u[i]
                prior[i] = prior[i] + lr * step if settings else _eg_step(prior[i], step, lr)
            torch.testing.assert_close(grad, up(prior))
    assert bb.counts[index].tolist() == [4] * 3


def test_bandits_priors_grow_by_one_image_and_keep_the_others(setup):
    """Images attacked one after another (0, then 1): the priors grow by exactly one row, image 0's prior is kept."""
    model, x, y = setup
    est = BanditsEstimator(tile_size=4, seed=0)
    bb = BlackBox(model)
    est.estimate(bb, x[:1], y[:1], index=torch.tensor([0]))
    kept = est.priors(torch.tensor([0]), x).clone()
    est.estimate(bb, x[1:2], y[1:2], index=torch.tensor([1]))
    assert (kept != 0).any() and torch.equal(est.priors(torch.tensor([0]), x), kept)
    assert (est.priors(torch.tensor([1]), x) != 0).any() and bb.counts.tolist() == [2, 2]


def test_default_loss_of_a_probability_blackbox_is_the_logit_margin(setup):
    """On a blackbox returning probabilities the default loss takes their log (Du et al.'s log-probability margin),
    so ZOO recovers the gradient of the logits' margin, not of the much flatter margin of raw probabilities."""
    model, x, y = setup
    grad, _ = ZOOEstimator().estimate(BlackBox(model, output="probs"), x, y)
    torch.testing.assert_close(grad, true_gradient(model, x, y), rtol=1e-4, atol=1e-7)


def test_each_images_query_rows_are_scored_against_its_own_label_and_target(setup):
    """Images of different labels (and targets) in one call: row m of image b is scored against y[b] and target[b]."""
    model, x, _ = setup
    y, target = torch.tensor([0, 3, 1]), torch.tensor([4, 0, 2])

    def picked(scores, y, target=None):  # (no margin clamped at 0: every label and target shows in the loss)
        own = scores.gather(1, y.unsqueeze(1))[:, 0]
        return own if target is None else own - 2 * scores.gather(1, target.unsqueeze(1))[:, 0]

    points = x.unsqueeze(1) + 0.01 * torch.arange(4, dtype=x.dtype).reshape(1, 4, 1, 1, 1)
    with torch.no_grad():
        for tgt in (None, target):
            losses = query_losses(BlackBox(model), points, y, loss=picked, index=torch.arange(3), target=tgt)
            for b in range(3):
                t = None if tgt is None else tgt[b:b + 1].expand(4)
                torch.testing.assert_close(losses[b], picked(model(points[b]), y[b:b + 1].expand(4), t))


def test_forward_differences_with_known_scores_of_a_targeted_attack(setup):
    """f(x) taken from the given scores is the targeted loss too: the one-sided estimate is the targeted gradient."""
    model, x, _ = setup
    y, target = torch.tensor([0, 3, 1]), torch.tensor([4, 0, 2])
    with torch.no_grad():
        scores = model(x)
    grad, _ = ZOOEstimator(mode="forward", h=1e-6).estimate(BlackBox(model), x, y, target=target, scores=scores)
    torch.testing.assert_close(grad, true_gradient(model, x, y, target), rtol=1e-4, atol=1e-7)


def test_nearby_seeds_and_image_numbers_give_unrelated_streams():
    """Image i + 1 of seed s and image i of seed s + 1 (repeat runs of the same images) draw different numbers."""
    from attacks.estimators import ImageStreams

    like = torch.zeros(0)
    for s in (0, 7):
        a = ImageStreams(s).draw(torch.tensor([1, 2]), (16,), like=like)
        b = ImageStreams(s + 1).draw(torch.tensor([0, 1]), (16,), like=like)
        assert not torch.allclose(a, b)


def test_bandits_tiles_of_an_image_size_they_do_not_divide(setup):
    """tile 3 on 8-pixel sides: a ⌈8/3⌉ = 3 × 3 prior, tiles of 3, 3 and 2 pixels (not 4-pixel tiles of a 2 × 2 prior)."""
    model, x, y = setup
    est = BanditsEstimator(tile_size=3, seed=0)
    grad, _ = est.estimate(BlackBox(model), x, y)
    assert est.priors(torch.arange(3), x).shape == (3, 1, 3, 3)
    blocks = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    expected = est.priors(torch.arange(3), x)[:, :, blocks][:, :, :, blocks]
    torch.testing.assert_close(grad, expected)


def test_bandits_probes_stay_in_the_box_at_pixels_on_its_edges(setup):
    """Probes x + η·q/‖q‖ are clipped to [0, 1] (the blackbox refuses anything else) at pixels at 0 and 1."""
    model, x, y = on_the_box_edges(*setup)
    bb = BlackBox(model)
    for _ in range(3):
        grad, _ = BanditsEstimator(tile_size=2, seed=0, fd_eta=0.5).estimate(bb, x, y)
        assert torch.isfinite(grad).all()
    assert bb.counts.tolist() == [6] * 3
