"""Episode samplers: the invariants every N-way K-shot task must satisfy."""
from __future__ import annotations

import pytest
import torch

from fewshot.tasks import EpisodeSampler, TaskBatch, TooFewExamplesError
from lazyapps.errors import LazyAppsError


def _toy(num_classes: int = 12, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    # Every image is unique and encodes (class, example) so tasks can be decoded back.
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    example = torch.arange(per_class).repeat(num_classes)
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8) * 10  # class id 0..110
    images[:, 0, 0, 1] = example.to(torch.uint8)
    return images, labels


def _decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pix = (x * 255).round().long()
    return pix[..., 0, 0, 0] // 10, pix[..., 0, 0, 1]


def test_tasks_have_n_distinct_classes_and_k_plus_q_distinct_examples() -> None:
    images, labels = _toy()
    sampler = EpisodeSampler(images, labels, ways=5, shots=2, queries=3, seed=0)
    batch = sampler.sample(20)
    assert batch.support_x.shape == (20, 10, 1, 4, 4) and batch.query_x.shape == (20, 15, 1, 4, 4)
    assert batch.support_x.dtype == torch.float32 and float(batch.support_x.max()) <= 1.0
    for t in range(20):
        s_cls, s_ex = _decode(batch.support_x[t])
        q_cls, q_ex = _decode(batch.query_x[t])
        assert sorted(batch.support_y[t].tolist()) == sorted(list(range(5)) * 2)
        assert sorted(batch.query_y[t].tolist()) == sorted(list(range(5)) * 3)
        classes = {}
        for label in range(5):
            true = set(s_cls[batch.support_y[t] == label].tolist()) | set(q_cls[batch.query_y[t] == label].tolist())
            assert len(true) == 1  # one dataset class per task label
            classes[label] = true.pop()
            examples = s_ex[batch.support_y[t] == label].tolist() + q_ex[batch.query_y[t] == label].tolist()
            assert len(set(examples)) == 5  # K + Q distinct examples: no example in both sets
        assert len(set(classes.values())) == 5  # N distinct classes


def test_shuffled_labels_vary_but_global_order_is_kept_without_shuffling() -> None:
    images, labels = _toy()
    shuffled = EpisodeSampler(images, labels, ways=5, shots=1, queries=1, seed=1).sample(30)
    fixed = EpisodeSampler(images, labels, ways=5, shots=1, queries=1, seed=1, shuffle_classes=False).sample(30)
    fixed_cls, _ = _decode(fixed.support_x)
    # Global order: label order == dataset class order in every task.
    assert all(torch.all(fixed_cls[t][1:] > fixed_cls[t][:-1]) for t in range(30))
    shuf_cls, _ = _decode(shuffled.support_x)
    assert any(not torch.all(shuf_cls[t][1:] > shuf_cls[t][:-1]) for t in range(30))
    # In the shuffled setting one class gets different labels in different tasks.
    label_of = {}
    for t in range(30):
        for label, c in enumerate(shuf_cls[t].tolist()):
            label_of.setdefault(c, set()).add(label)
    assert any(len(v) > 1 for v in label_of.values())


def test_fixed_tasks_are_reproducible_and_independent_of_training_draws() -> None:
    images, labels = _toy()
    a = EpisodeSampler(images, labels, ways=3, shots=1, queries=2, seed=0)
    b = EpisodeSampler(images, labels, ways=3, shots=1, queries=2, seed=99)
    b.sample(7)  # advancing the training stream must not change evaluation tasks
    ta, tb = TaskBatch.cat(a.fixed_tasks(10, seed=5, batch_size=4)), TaskBatch.cat(b.fixed_tasks(10, seed=5, batch_size=4))
    assert ta.num_tasks == 10
    assert torch.equal(ta.support_x, tb.support_x) and torch.equal(ta.query_y, tb.query_y)
    other = TaskBatch.cat(a.fixed_tasks(10, seed=6))
    assert not torch.equal(ta.support_x, other.support_x)


def test_bad_requests_name_the_problem() -> None:
    images, labels = _toy(num_classes=4, per_class=5)
    with pytest.raises(LazyAppsError, match="--ways 6 is larger than the 4 classes"):
        EpisodeSampler(images, labels, ways=6, shots=1, queries=1)
    with pytest.raises(TooFewExamplesError, match="shots \\+ queries = 3 \\+ 3 = 6 .* has 5; lower shots or queries$") as info:
        EpisodeSampler(images, labels, ways=2, shots=3, queries=3)
    # a command names its own options (fewshot.cli: --train-shots when training, only --queries in eval)
    assert info.value.explain("train-shots", "lower --train-shots or --queries", shots=4) == (
        "train-shots + queries = 4 + 3 = 7 examples per class are needed, but the smallest class of dataset has 5; "
        "lower --train-shots or --queries")


def test_index_lets_one_image_serve_several_classes() -> None:
    images, labels = _toy(num_classes=2, per_class=3)
    index = torch.arange(6).repeat(2)
    new_labels = torch.cat([labels, labels + 2])
    sampler = EpisodeSampler(images, new_labels, index=index, ways=4, shots=1, queries=2,
                             class_transform=lambda c, x: x.float() + 1000 * c)
    batch = sampler.sample(3)
    assert sampler.num_classes == 4
    offsets = (batch.support_x[..., 0, 0, 0] // 1000).long()
    assert sorted(offsets[0].tolist()) == [0, 1, 2, 3]


def test_examples_are_drawn_at_random_within_each_class() -> None:
    images, labels = _toy(num_classes=3, per_class=8)
    batch = EpisodeSampler(images, labels, ways=3, shots=1, queries=1, seed=2).sample(40)
    used = {}
    for side in (batch.support_x, batch.query_x):
        cls, ex = _decode(side)
        for c, e in zip(cls.flatten().tolist(), ex.flatten().tolist()):
            used.setdefault(c, set()).add(e)
    assert all(len(v) == 8 for v in used.values())  # every example of every class turns up, not just the first K + Q


def test_a_query_label_the_support_set_lacks_is_refused() -> None:
    images, labels = _toy()
    good = EpisodeSampler(images, labels, ways=3, shots=1, queries=2, seed=0).sample(2)
    good.check("classification")
    bad = TaskBatch(good.support_x, good.support_y, good.query_x, good.query_y.clamp_max(1) + 2)  # labels 2..3 of a 3-way task
    with pytest.raises(ValueError, match="query label 3 is not among the support labels"):
        bad.check("classification")
