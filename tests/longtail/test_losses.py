"""Losses and class-balanced weights against closed forms and slow references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail import losses as L
from longtail.weights import class_balanced_weights


def test_class_balanced_weights_closed_form():
    counts, beta = [500, 100, 10], 0.999
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    expected = [3 * r / sum(raw) for r in raw]
    assert class_balanced_weights(counts, beta=beta).tolist() == pytest.approx(expected, rel=1e-6)
    assert class_balanced_weights(counts, beta=0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    w = class_balanced_weights([4990, 49], beta=0.9999)
    assert float(w.sum()) == pytest.approx(2.0) and w[1] > w[0]


def _slow_ldam(logits, targets, counts, max_margin, scale):
    margins = [n ** -0.25 for n in counts]
    margins = [m * max_margin / max(margins) for m in margins]
    out = []
    for z, y in zip(logits.tolist(), targets.tolist()):
        z = [scale * (v - (margins[y] if j == y else 0.0)) for j, v in enumerate(z)]
        out.append(-z[y] + math.log(sum(math.exp(v) for v in z)))
    return torch.tensor(out)


def test_ldam_matches_slow_reference():
    torch.manual_seed(0)
    counts = [1000, 200, 30, 5]
    logits = torch.rand(7, 4) * 2 - 1  # cosines
    targets = torch.tensor([0, 1, 2, 3, 3, 2, 0])
    margins = L.ldam_margins(counts, max_margin=0.5)
    assert float(margins.max()) == pytest.approx(0.5) and int(margins.argmax()) == 3
    got = L.ldam_loss(logits, targets, margins=margins, scale=30.0)
    assert torch.allclose(got, _slow_ldam(logits, targets, counts, 0.5, 30.0), atol=1e-4)


def test_logit_adjusted_loss_matches_reference():
    torch.manual_seed(1)
    counts = [90, 9, 1]
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 1])
    prior = [n / 100 for n in counts]
    expected = []
    for z, y in zip(logits.tolist(), targets.tolist()):
        z = [v + 1.0 * math.log(p) for v, p in zip(z, prior)]
        expected.append(-z[y] + math.log(sum(math.exp(v) for v in z)))
    got = L.logit_adjusted_loss(logits, targets, log_prior=L.log_priors(counts), tau=1.0)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)


def test_focal_reduces_to_ce_and_downweights_easy_examples():
    torch.manual_seed(2)
    logits, targets = torch.randn(6, 4), torch.randint(0, 4, (6,))
    assert torch.allclose(L.focal_loss(logits, targets, gamma=0.0), F.cross_entropy(logits, targets, reduction="none"))
    p = F.softmax(logits, 1).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(L.focal_loss(logits, targets, gamma=1.0), -(1 - p) * p.log(), atol=1e-6)


def test_weighted_mean():
    assert float(L.weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]))) == pytest.approx(2.5)
    assert float(L.weighted_mean(torch.tensor([1.0, 3.0]), torch.zeros(2))) == 0.0


def test_logit_adjusted_loss_scales_the_prior_by_tau():
    torch.manual_seed(3)
    counts, tau = [90, 9, 1], 2.5
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 1])
    expected = []
    for z, y in zip(logits.tolist(), targets.tolist()):
        z = [v + tau * math.log(n / 100) for v, n in zip(z, counts)]
        expected.append(-z[y] + math.log(sum(math.exp(v) for v in z)))
    got = L.logit_adjusted_loss(logits, targets, log_prior=L.log_priors(counts), tau=tau)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)
    assert torch.allclose(L.log_priors(counts).exp(), torch.tensor([0.9, 0.09, 0.01]))


def _linear_batch():
    torch.manual_seed(4)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(9, 5), torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    return model, x, y


def test_plain_methods_weight_and_shape_the_loss_as_documented():
    from longtail.methods import StepContext, create_method

    model, x, y = _linear_batch()
    counts = [500, 50, 5]
    w = class_balanced_weights(counts, beta=0.999)
    with torch.no_grad():
        logits = model(x)
    ce = F.cross_entropy(logits, y, reduction="none")
    ctx = StepContext(model, 0.1, 0)
    cb = create_method("cb-ce", counts, beta=0.999).loss(ctx, x, y).detach()
    assert float(cb) == pytest.approx(float((w[y] * ce).sum() / w[y].sum()), rel=1e-6)
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    focal = -(1 - p) ** 2 * p.log()
    cbf = create_method("cb-focal", counts, beta=0.999, gamma=2.0).loss(ctx, x, y).detach()
    assert float(cbf) == pytest.approx(float((w[y] * focal).sum() / w[y].sum()), rel=1e-6)
    la = create_method("logit-adjust", counts, tau=0.5).loss(ctx, x, y).detach()
    adjusted = F.cross_entropy(logits + 0.5 * torch.tensor(counts, dtype=torch.float).div(555).log(), y)
    assert float(la) == pytest.approx(float(adjusted), rel=1e-6)


def test_ldam_drw_reweights_from_the_first_decay_epoch_on():
    from longtail.methods import StepContext, create_method

    model, x, y = _linear_batch()
    counts = [500, 50, 5]
    method = create_method("ldam-drw", counts, beta=0.999)
    method.drw_start = 3
    per = _slow_ldam(model(x).detach(), y, counts, 0.5, 30.0)
    w = class_balanced_weights(counts, beta=0.999)
    plain, deferred = float(per.mean()), float((w[y] * per).sum() / w[y].sum())
    assert abs(plain - deferred) > 1e-3
    for epoch, expected in ((2, plain), (3, deferred), (4, deferred)):
        got = method.loss(StepContext(model, 0.1, epoch), x, y).detach()
        assert float(got) == pytest.approx(expected, rel=1e-4), epoch


def test_class_balanced_weights_default_beta_and_domain():
    counts = [4990, 498, 49, 1]
    # Cui et al.'s β = 0.9999 is the default: weights ∝ (1 − β)/(1 − β^n), summing to C
    raw = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in counts]
    expected = [4 * r / sum(raw) for r in raw]
    assert class_balanced_weights(counts).tolist() == pytest.approx(expected, rel=1e-6)
    # a class of one image is valid (E_1 = 1: the largest weight); none is not
    assert int(class_balanced_weights(counts).argmax()) == 3
    with pytest.raises(ValueError, match="at least one sample"):
        class_balanced_weights([5, 0])
    # β in [0, 1): β = 1 divides by zero, a negative β is no decay rate
    assert class_balanced_weights([3, 2], beta=0.0).tolist() == [1.0, 1.0]
    for beta in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
            class_balanced_weights([3, 2], beta=beta)


def test_loss_defaults_are_the_papers():
    # focal γ = 1 (Cui et al.'s CB focal), LDAM max margin 0.5 and s = 30 (Cao et al.), τ = 1 (Menon et al.)
    torch.manual_seed(5)
    counts = [1000, 200, 30, 5]
    logits, targets = torch.rand(6, 4) * 2 - 1, torch.tensor([0, 1, 2, 3, 3, 1])
    p = F.softmax(logits, 1).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(L.focal_loss(logits, targets), -(1 - p) * p.log(), atol=1e-6)
    got = L.ldam_loss(logits, targets, margins=L.ldam_margins(counts))
    assert torch.allclose(got, _slow_ldam(logits, targets, counts, 0.5, 30.0), atol=1e-4)
    prior = torch.tensor(counts, dtype=torch.float).div(sum(counts)).log()
    expected = F.cross_entropy(logits + prior, targets, reduction="none")
    assert torch.allclose(L.logit_adjusted_loss(logits, targets, log_prior=L.log_priors(counts)), expected, atol=1e-6)
