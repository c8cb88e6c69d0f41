"""The C&W margin loss against a slow per-row reference, and the adversarial test."""
from __future__ import annotations

import math

import pytest
import torch

from attacks import MarginLoss, is_adversarial, margin_loss
from lazyapps.errors import LazyAppsError


def reference(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, kappa: float = 0.0) -> list[float]:
    """Du et al. eq. 4 written out row by row with log-probabilities."""
    out = []
    for row, yi, ti in zip(logits.tolist(), y.tolist(), (target.tolist() if target is not None else [None] * len(y))):
        norm = math.log(sum(math.exp(v) for v in row))
        logp = [v - norm for v in row]
        if ti is None:
            best_other = max(logp[j] for j in range(len(row)) if j != yi)
            out.append(max(logp[yi] - best_other, -kappa))
        else:
            best_other = max(logp[j] for j in range(len(row)) if j != ti)
            out.append(max(best_other - logp[ti], -kappa))
    return out


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(20, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (20,), generator=g)
    target = (y + 1 + torch.randint(0, 6, (20,), generator=g)) % 7
    return logits, y, target


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_matches_reference_from_logits_and_probs(batch, targeted, kappa):
    logits, y, target = batch
    t = target if targeted else None
    expected = torch.tensor(reference(logits, y, t, kappa), dtype=torch.float64)
    torch.testing.assert_close(margin_loss(logits, y, t, kappa=kappa), expected)
    torch.testing.assert_close(margin_loss(logits.softmax(1), y, t, kind="probs", kappa=kappa), expected)
    torch.testing.assert_close(MarginLoss(kind="probs", kappa=kappa)(logits.softmax(1), y, t), expected)


def test_zero_exactly_when_adversarial(batch):
    logits, y, target = batch
    for t in (None, target):
        loss = margin_loss(logits, y, t)
        assert torch.equal(loss == 0, is_adversarial(logits, y, t))
        assert (loss >= 0).all()


def test_is_adversarial_accepts_scores_or_labels():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 5.0]])
    y = torch.tensor([0, 1])
    assert is_adversarial(logits, y).tolist() == [False, True]
    assert is_adversarial(logits.softmax(1), y).tolist() == [False, True]
    assert is_adversarial(torch.tensor([0, 2]), y).tolist() == [False, True]
    assert is_adversarial(logits, y, torch.tensor([2, 2])).tolist() == [False, True]


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = logits.argmax(1)  # loss > 0 for every row: the smooth branch
    torch.autograd.gradcheck(lambda z: margin_loss(z, y), (logits.requires_grad_(True),))
    probs = logits.detach().softmax(1).requires_grad_(True)
    torch.autograd.gradcheck(lambda p: margin_loss(p, y, kind="probs"), (probs,))


def test_errors():
    with pytest.raises(LazyAppsError, match="valid: logits, probs"):
        margin_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), kind="softmax")
    with pytest.raises(LazyAppsError, match="batch, classes"):
        margin_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(LazyAppsError, match="valid: logits, probs"):  # when built, before an attack spends queries
        MarginLoss(kind="softmax")


def test_underflowed_probabilities_give_a_finite_loss():
    """A probability that underflowed to 0 is floored before the log: finite losses, so finite differences stay finite."""
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    loss = margin_loss(probs, y, kind="probs")
    assert torch.isfinite(loss).all()
    assert loss.tolist() == pytest.approx([-math.log(1e-30), 0.0])
    targeted = margin_loss(probs, y, torch.tensor([2, 2]), kind="probs")
    assert targeted.tolist() == pytest.approx([-math.log(1e-30)] * 2)


def test_one_dimensional_float_scores_are_not_labels():
    with pytest.raises(LazyAppsError, match="batch, classes"):
        is_adversarial(torch.tensor([0.0, 2.0]), torch.tensor([0, 1]))


def test_labels_of_any_integer_dtype_give_the_int64_loss(batch):
    """Labels as data files store them (uint8, int32) pick the same scores as int64 labels."""
    logits, y, target = batch
    for dtype in (torch.uint8, torch.int32):
        torch.testing.assert_close(margin_loss(logits, y.to(dtype)), margin_loss(logits, y))
        torch.testing.assert_close(margin_loss(logits, y, target.to(dtype)), margin_loss(logits, y, target))


def test_the_default_loss_stops_at_zero_once_fooled():
    """κ = 0 by default (Du et al.): a row fooled by a wide margin has loss 0, not the negative margin."""
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])  # row 0 (label 0) fooled by 3, row 1 not
    y = torch.tensor([0, 0])
    assert MarginLoss()(logits, y).tolist() == [0.0, 2.0]
    assert MarginLoss(kind="probs")(logits.softmax(1), y).tolist() == pytest.approx([0.0, 2.0])
    assert margin_loss(logits, y).tolist() == [0.0, 2.0]


def test_predicted_labels_argmax_integer_scores_and_return_int64_labels():
    from attacks.losses import predicted_labels

    assert predicted_labels(torch.tensor([[3, 1, 0], [0, 1, 5]])).tolist() == [0, 2]  # (B, K) integer scores
    labels = predicted_labels(torch.tensor([0, 2], dtype=torch.int32))  # (B,) labels as they are
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 2]
