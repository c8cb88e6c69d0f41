"""The epoch-wise schedule: the paper's defaults and the short schedules' edges, worked out by hand."""
from __future__ import annotations

import dataclasses

import pytest

from longtail.schedule import Schedule


def test_the_default_schedule_is_the_papers():
    # Cao et al.: 200 epochs at lr 0.1, 5 warm-up epochs, ×0.01 after epoch 160 and ×0.0001 after 180
    s = Schedule()
    assert (s.epochs, s.lr, s.warmup_epochs, s.decay_epochs, s.decay_factors) == (200, 0.1, 5, (160, 180), (0.01, 0.0001))
    assert s == Schedule.scaled(200)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 0.2  # a value object: the trainer records and compares it


@pytest.mark.parametrize("epochs, warmup, decays", [
    # 1 epoch: the decays (and the meta phase) fall after the run, so the trainer refuses the meta methods
    (1, 0, (1, 1)),
    # 2–5 epochs: both decays on the last epoch (80 % and 90 % round past it, clamped to epochs − 1)
    (2, 0, (1, 1)), (3, 0, (2, 2)), (5, 0, (4, 4)),
    # from 10 epochs on: round(0.8·E), round(0.9·E); warm-up round-half-up(0.025·E)
    (10, 0, (8, 9)), (20, 1, (16, 18)), (40, 1, (32, 36)), (60, 2, (48, 54)),
    # rounded, not truncated: 0.8·12 = 9.6 → 10, 0.9·12 = 10.8 → 11
    (12, 0, (10, 11)),
])
def test_short_schedules_keep_the_shape_within_the_run(epochs, warmup, decays):
    s = Schedule.scaled(epochs, lr=0.4, decay_factors=(0.5, 0.25))
    assert (s.epochs, s.warmup_epochs, s.decay_epochs, s.meta_start) == (epochs, warmup, decays, decays[0])
    assert s.lr_at(epochs - 1) == pytest.approx(0.4 * (0.25 if decays[1] <= epochs - 1 else 1.0))


def test_scaled_refuses_no_epochs():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        Schedule.scaled(0)


@pytest.mark.parametrize("epochs, text", [
    (200, "200 epochs, lr 0.1 (warm-up 5, ×0.01 from epoch 161, ×0.0001 from 181)"),  # the paper's, 1-based
    (2, "2 epochs, lr 0.1 (warm-up 0, ×0.0001 from epoch 2, where both decays fall: no ×0.01 phase)"),
    (1, "1 epoch, lr 0.1 (warm-up 0, no decay within the run)"),
])
def test_the_status_line_names_only_the_decays_the_run_has(epochs, text):
    schedule = Schedule.scaled(epochs)
    assert schedule.describe() == text
    # what it says is what lr_at does
    rates = [schedule.lr_at(e) for e in range(epochs)]
    assert ("×0.01 from" in text) == (0.1 * 0.01 in rates) and ("×0.0001 from" in text) == (0.1 * 0.0001 in rates)


def test_a_hand_built_schedule_names_no_decay_past_its_last_epoch():
    # the paper's decays on a 180-epoch run: the ×0.0001 from epoch 181 never happens, so the line leaves it out
    assert Schedule(epochs=180).describe() == "180 epochs, lr 0.1 (warm-up 5, ×0.01 from epoch 161)"
