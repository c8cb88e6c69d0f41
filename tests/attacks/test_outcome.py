"""AttackOutcome: the reported numbers (Du et al.'s success rate, L2 and queries over the successes) by hand."""
from __future__ import annotations

import math

import pytest
import torch

from attacks import AttackOutcome, l2_distance


@pytest.fixture
def outcome():
    """5 images, 4 fooled (queries 3, 10, 20, 40), one not (99 queries); L2 distances 0.5, 0.1, 0.2, 0, 0.52."""
    x = torch.zeros(5, 1, 2, 2)
    x_adv = torch.zeros(5, 1, 2, 2)
    deltas = [(0.3, 0.4), (0.1, 0.0), (0.0, 0.2), (0.0, 0.0), (0.48, 0.2)]
    for i, (a, b) in enumerate(deltas):
        x_adv[i, 0, 0] = torch.tensor([a, b])
    return AttackOutcome.build(
        x, x_adv,
        success=torch.tensor([True, True, False, True, True]),
        queries=torch.tensor([10, 3, 99, 40, 20]),
        labels=torch.tensor([1, 2, 3, 4, 5]),
        target_classes=torch.tensor([0, 0, 0, 0, 9]),
    )


def test_l2_is_the_euclidean_norm_of_the_whole_perturbation(outcome):
    torch.testing.assert_close(outcome.l2, torch.tensor([0.5, 0.1, 0.2, 0.0, 0.52]))
    x = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    expected = [math.sqrt(sum((a - b) ** 2 for a, b in zip(xi.flatten().tolist(), yi.flatten().tolist())))
                for xi, yi in zip(x, y)]
    assert l2_distance(x, y).tolist() == pytest.approx(expected, rel=1e-6)


def test_summary_counts_l2_and_queries_over_the_successes_only(outcome):
    s = outcome.summary()
    assert s["n_images"] == 5 and s["n_success"] == 4 and s["success_rate"] == pytest.approx(0.8)
    assert s["mean_l2"] == pytest.approx((0.5 + 0.1 + 0.0 + 0.52) / 4, rel=1e-6)
    assert s["mean_queries"] == pytest.approx((10 + 3 + 40 + 20) / 4)
    assert s["median_queries"] == pytest.approx(15.0)  # the mean of the middle two of 3, 10, 20, 40
    assert s["total_queries"] == 10 + 3 + 99 + 40 + 20


def test_summary_without_any_success_is_nan():
    out = AttackOutcome.build(torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.bool),
                              torch.tensor([5, 7]))
    s = out.summary()
    assert s["success_rate"] == 0.0 and math.isnan(s["mean_l2"]) and math.isnan(s["median_queries"])


def test_budget_curve_counts_successes_within_each_budget(outcome):
    # successes at 3, 10, 20, 40 queries; the failure (99) never counts
    assert outcome.budget_curve([2, 3, 19, 20, 40, 1000]) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8])


def test_budget_curve_of_a_minimisation_attack_counts_from_the_first_adversarial(outcome):
    """Each image spent 100 queries, but found its first adversarial at 7, 1, 50 (failed: not counted), 100, 2."""
    spent = AttackOutcome(outcome.x_adv, outcome.success, torch.full((5,), 100), outcome.l2,
                          first_success=torch.tensor([7, 1, 50, 100, 2]))
    assert spent.budget_curve([0, 1, 6, 7, 99, 100]) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.6, 0.8])
    assert [r["first_success"] for r in spent.rows()] == [7, 1, None, 100, 2]
    assert spent.summary()["mean_queries"] == 100  # the reported queries stay those spent
    assert AttackOutcome.concat([spent, spent]).first_success.tolist() == [7, 1, 50, 100, 2] * 2
    assert AttackOutcome.concat([spent, outcome]).first_success is None


def test_rows_and_concat_keep_each_image_with_its_numbers(outcome):
    rows = outcome.rows(offset=100)
    assert [r["image"] for r in rows] == [100, 101, 102, 103, 104]
    assert rows[4] == {"image": 104, "label": 5, "target": 9, "success": True, "queries": 20,
                       "l2": pytest.approx(0.52), "first_success": None}
    both = AttackOutcome.concat([outcome, outcome])
    assert both.labels.tolist() == [1, 2, 3, 4, 5] * 2 and both.target_classes.tolist() == [0, 0, 0, 0, 9] * 2
    assert both.queries.tolist() == [10, 3, 99, 40, 20] * 2 and torch.equal(both.x_adv[5:], outcome.x_adv)


def test_fields_of_another_length_than_the_images_are_refused():
    x = torch.zeros(3, 1, 1, 1)
    ok, queries, l2 = torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long), torch.zeros(3)
    with pytest.raises(ValueError, match="AttackOutcome.queries has 2 entries for 3 images"):
        AttackOutcome(x, ok, queries[:2], l2)
    with pytest.raises(ValueError, match="AttackOutcome.labels has 4 entries for 3 images"):
        AttackOutcome(x, ok, queries, l2, labels=torch.zeros(4))


def test_an_outcome_of_no_images_reports_nan_rates_not_zero():
    """No images attacked: the success rate and the budget curve are undefined (NaN), not a 0 % success."""
    out = AttackOutcome.build(torch.zeros(0, 1, 2, 2), torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.bool),
                              torch.zeros(0, dtype=torch.long))
    s = out.summary()
    assert s["n_images"] == 0 and s["total_queries"] == 0 and math.isnan(s["success_rate"])
    assert all(math.isnan(v) for v in out.budget_curve([1, 10]))


def test_success_given_as_zeros_and_ones_counts_like_booleans(outcome):
    """0/1 success flags select the successful images (not index images 0 and 1)."""
    as_ints = AttackOutcome(outcome.x_adv, outcome.success.long(), outcome.queries, outcome.l2)
    assert as_ints.summary() == outcome.summary()
    assert as_ints.budget_curve([3, 20, 1000]) == outcome.budget_curve([3, 20, 1000])
