"""Evaluation: shot-group boundaries, the summary against a slow reference, eval-mode prediction."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from longtail.evaluation import predict, shot_group, summarize


def test_shot_group_boundaries():
    # many: more than 100 training images; medium: 20–100 (both ends included); few: fewer than 20
    assert [shot_group(n) for n in (1, 19, 20, 21, 99, 100, 101, 4990)] == [
        "few", "few", "medium", "medium", "medium", "medium", "many", "many"]


def test_summarize_matches_a_slow_reference_on_an_unbalanced_test_set():
    counts = [150, 101, 100, 20, 19, 3]
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 5, 5])
    predictions = torch.tensor([0, 0, 0, 1, 1, 0, 2, 3, 0, 0, 4, 1, 1])
    result = summarize(predictions, labels, counts)
    per_class = []
    for c in range(len(counts)):
        rows = [i for i in range(len(labels)) if labels[i] == c]
        per_class.append(100 * sum(int(predictions[i] == c) for i in rows) / len(rows))
    assert result["per_class_accuracy"] == pytest.approx(per_class)  # [75, 50, 100, 33.3, 100, 0]
    # top-1 error over the examples (not the mean of the per-class accuracies)
    assert result["top1_error"] == pytest.approx(100 * 6 / 13)
    assert (result["many_classes"], result["medium_classes"], result["few_classes"]) == (2, 2, 2)
    assert result["many_accuracy"] == pytest.approx((75 + 50) / 2)
    assert result["medium_accuracy"] == pytest.approx((100 + 100 / 3) / 2)
    assert result["few_accuracy"] == pytest.approx((100 + 0) / 2)
    # a group without test images is None
    only_many = summarize(torch.tensor([0]), torch.tensor([0]), [150, 5])
    assert only_many["few_accuracy"] is None and only_many["few_classes"] == 0
    assert only_many["per_class_accuracy"] == [100.0, None]  # no test image of class 1: no accuracy, not 0%


def test_predict_uses_eval_mode_and_restores_training_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[2].running_mean.copy_(torch.tensor([5.0, -5.0, 0.0]))
    model.train()
    images = torch.randint(0, 256, (7, 3, 2, 2), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(x).argmax(1)  # running statistics, not the batch's
        batch_mode = copy.deepcopy(model).train()(x).argmax(1)
    model.train()
    assert not torch.equal(expected, batch_mode)  # the test can tell the two modes apart
    running = model[2].running_mean.clone()
    assert torch.equal(predict(model, images, mean=mean, std=std, batch_size=3), expected)
    assert model.training and torch.equal(model[2].running_mean, running)


def test_predict_on_no_images_is_an_empty_prediction():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    got = predict(model, torch.zeros(0, 3, 2, 2, dtype=torch.uint8), mean=(0.5,) * 3, std=(0.2,) * 3)
    assert got.shape == (0,) and got.dtype == torch.long


def test_predict_normalises_with_the_mean_then_the_std_and_runs_in_the_models_dtype():
    # A linear model's argmax moves with the input's scale and offset: with the constants swapped (or a float32
    # input to a float64 model) the predictions differ from the obvious (x/255 − mean)/std reference.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).double()
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([4.0, -3.0, 0.5, 2.0, -1.0], dtype=torch.float64))
    images = torch.randint(0, 256, (40, 3, 2, 2), dtype=torch.uint8)
    mean, std = (0.1, 0.6, 0.3), (0.05, 0.5, 0.2)
    x = (images.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)
    swapped = (images.double() / 255 - torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        mean, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x).argmax(1)
        assert not torch.equal(expected, model(swapped).argmax(1))  # the test can tell the two apart
    got = predict(model, images, mean=mean, std=std, batch_size=16)
    assert torch.equal(got, expected)
    assert torch.equal(predict(model, images, mean=torch.tensor(mean), std=torch.tensor(std)), expected)


def test_predict_leaves_a_model_in_eval_mode_in_eval_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.BatchNorm1d(3)).eval()
    predict(model, torch.zeros(4, 3, 2, 2, dtype=torch.uint8), mean=(0.5,) * 3, std=(0.2,) * 3, batch_size=3)
    assert not model.training and not model[2].training


def test_summarize_of_no_test_images_has_no_error_rather_than_nan():
    result = summarize(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), [150, 50, 5])
    assert result["top1_error"] is None and result["per_class_accuracy"] == [None, None, None]
    assert (result["many_accuracy"], result["medium_accuracy"], result["few_accuracy"]) == (None, None, None)
