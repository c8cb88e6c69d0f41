"""Episode samplers: the invariants every N-way K-shot task must satisfy."""
from __future__ import annotations

import pytest
import torch

from fewshot.tasks import EpisodeSampler, TaskBatch, TooFewExamplesError, fixed_task_batches
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
    with pytest.raises(ValueError, match=r"query label 3 of task 0 is not among its support labels \[0, 1, 2\]"):
        bad.check("classification")
    # per task and per label, not by the largest: a gap in one task's support labels, another task's extra class
    x = torch.zeros(2, 3, 1)
    gap = TaskBatch(x[:1], torch.tensor([[0, 2, 2]]), x[:1, :1], torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"query label 1 of task 0 is not among its support labels \[0, 2\]"):
        gap.check("classification")
    other = TaskBatch(x, torch.tensor([[0, 1, 1], [0, 1, 2]]), x, torch.tensor([[0, 1, 0], [0, 1, 2]]))
    other.check("classification")
    with pytest.raises(ValueError, match=r"query label 2 of task 0 is not among its support labels \[0, 1\]"):
        TaskBatch(x, other.support_y, x, other.query_y.flip(0)).check("classification")


def test_fixed_tasks_come_in_batches_of_25_by_default_and_none_is_lost() -> None:
    images, labels = _toy()
    sampler = EpisodeSampler(images, labels, ways=2, shots=1, queries=1)
    assert [b.num_tasks for b in sampler.fixed_tasks(60, seed=0)] == [25, 25, 10]
    assert [b.num_tasks for b in sampler.fixed_tasks(9, seed=0, batch_size=4)] == [4, 4, 1]
    assert [b.num_tasks for b in sampler.fixed_tasks(1, seed=0)] == [1]
    assert [b.num_tasks for b in fixed_task_batches(sampler, 60, seed=0)] == [25, 25, 10]
    # the batching does not change the tasks: the same draws, in the same order
    one = sampler.fixed_tasks(9, seed=3, batch_size=9)[0]
    assert torch.equal(TaskBatch.cat(sampler.fixed_tasks(9, seed=3, batch_size=4)).support_x, one.support_x)


def test_sampler_defaults_arguments_and_stream() -> None:
    images, labels = _toy(num_classes=4, per_class=5)
    sampler = EpisodeSampler(images, labels, ways=1, shots=1, queries=1)  # a 1-way task is a task
    assert sampler.problem == "classification"
    seeded = EpisodeSampler(images, labels, ways=1, shots=1, queries=1, seed=0)
    assert torch.equal(sampler.sample(5).support_x, seeded.sample(5).support_x)  # seed 0 by default
    stream = iter(sampler)
    assert next(stream).num_tasks == 1 and next(stream).num_tasks == 1
    for bad in ({"ways": 0}, {"shots": 0}, {"queries": 0}):
        with pytest.raises(LazyAppsError, match="ways, shots and queries must be >= 1"):
            EpisodeSampler(images, labels, **{"ways": 2, "shots": 1, "queries": 1, **bad})
    with pytest.raises(ValueError, match="labels need one entry per image"):
        EpisodeSampler(images, labels[:-1], ways=2, shots=1, queries=1)
    with pytest.raises(LazyAppsError) as info:
        EpisodeSampler(images, labels, ways=6, shots=1, queries=1, name="toy")
    assert (info.value.name, info.value.ways, info.value.classes) == ("toy", 6, 4)  # the CLI words its own message


def test_labels_may_be_any_integer_ids_in_any_integer_type() -> None:
    images, labels = _toy(num_classes=3, per_class=4)
    ids = (labels * 7 + 100).int().tolist()  # a list of ids 100, 107, 114
    batch = EpisodeSampler(images, ids, ways=3, shots=1, queries=1, seed=0, shuffle_classes=False).sample(2)
    cls, _ = _decode(batch.support_x)
    assert cls.tolist() == [[0, 1, 2]] * 2 and batch.classes.tolist() == [[0, 1, 2]] * 2


def test_uint8_images_become_floats_in_zero_one() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).repeat_interleave(2).reshape(6, 1, 1, 1)
    labels = torch.tensor([0, 1, 2]).repeat_interleave(2)
    batch = EpisodeSampler(images, labels, ways=3, shots=1, queries=1, shuffle_classes=False).sample(1)
    assert batch.support_x.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0], rel=1e-6) and float(batch.support_x.max()) == 1.0


def test_task_batch_select_chunks_cat_and_to_keep_every_part() -> None:
    images, labels = _toy()
    batch = EpisodeSampler(images, labels, ways=3, shots=1, queries=2, seed=0).sample(10)
    one = batch.select(4)  # an int keeps a task dim of 1
    assert one.num_tasks == 1 and torch.equal(one.query_x, batch.query_x[4:5]) and torch.equal(one.classes, batch.classes[4:5])
    parts = list(batch.chunks(4))
    assert [p.num_tasks for p in parts] == [4, 4, 2]
    assert [p.num_tasks for p in batch.chunks(5)] == [5, 5]  # no empty batch after a whole number of chunks
    whole = TaskBatch.cat(parts)
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert torch.equal(getattr(whole, name), getattr(batch, name)), name
    unnamed = TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    assert TaskBatch.cat([batch, unnamed]).classes is None and unnamed.select(0).classes is None
    wide = batch.to("cpu", torch.float64)  # inputs take the dtype, labels and classes stay integers
    assert (wide.support_x.dtype, wide.query_x.dtype, wide.support_y.dtype, wide.classes.dtype) == (
        torch.float64, torch.float64, torch.int64, torch.int64)
    # a selection knows where it sits in the whole batch (a rank's share of a meta-batch), through .to as well
    assert batch.span is None and one.span == (4, 10) and parts[2].span == (8, 10)
    assert batch.select(slice(2, 8)).select(slice(1, 3)).to("cpu").span == (3, 10)
    assert batch.select(slice(0, 10, 2)).span is None and whole.span is None
    assert torch.equal(wide.classes, batch.classes) and batch.to("cpu").support_x.dtype == torch.float32
    assert unnamed.to("cpu").classes is None


def test_check_accepts_the_smallest_task_batch_and_refuses_float_labels_and_a_part_without_tasks() -> None:
    long = torch.zeros(1, 1, dtype=torch.long)
    smallest = TaskBatch(torch.zeros(1, 1), long, torch.zeros(1, 1), long)  # one task, one row each, scalar inputs
    smallest.check("classification")
    smallest.check("regression")
    with pytest.raises(ValueError, match="query_y must hold integer class labels, got torch.float32"):
        TaskBatch(smallest.support_x, long, smallest.query_x, long.float()).check("classification")
    with pytest.raises(ValueError, match="hold different numbers of tasks"):
        TaskBatch(torch.tensor(0.0), long, smallest.query_x, long).check("regression")


def test_the_smallest_class_sets_the_limit_on_shots_and_queries() -> None:
    # classes of 8, 8 and 3 examples: 2 + 2 per class does not fit the third, whatever the others hold
    images, labels = _toy(num_classes=3, per_class=8)
    keep = torch.cat([torch.arange(16), torch.arange(16, 19)])
    with pytest.raises(TooFewExamplesError, match="shots \\+ queries = 2 \\+ 2 = 4 .* has 3;") as info:
        EpisodeSampler(images[keep], labels[keep], ways=2, shots=2, queries=2)
    assert info.value.smallest == 3
    EpisodeSampler(images[keep], labels[keep], ways=2, shots=2, queries=1)  # 3 fits


def test_the_seed_picks_the_task_stream() -> None:
    images, labels = _toy()
    draw = lambda seed: EpisodeSampler(images, labels, ways=3, shots=1, queries=1, seed=seed).sample(4)  # noqa: E731
    assert torch.equal(draw(1).support_x, draw(1).support_x)
    assert not torch.equal(draw(1).support_x, draw(2).support_x)


def test_iterating_a_sampler_draws_new_tasks_from_its_stream() -> None:
    images, labels = _toy()
    stream = iter(EpisodeSampler(images, labels, ways=3, shots=1, queries=1, seed=4))
    same = EpisodeSampler(images, labels, ways=3, shots=1, queries=1, seed=4)
    first, second = next(stream), next(stream)
    assert torch.equal(first.support_x, same.sample(1).support_x) and torch.equal(second.support_x, same.sample(1).support_x)
    assert not torch.equal(first.support_x, second.support_x)


def test_class_transform_gets_the_dataset_class_id_not_its_position() -> None:
    images, labels = _toy(num_classes=3, per_class=4)
    ids = labels * 10 + 7  # class ids 7, 17, 27
    seen = []

    def transform(class_id: int, x: torch.Tensor) -> torch.Tensor:
        seen.append(class_id)
        return x.float() * 0 + class_id

    batch = EpisodeSampler(images, ids, ways=3, shots=1, queries=1, class_transform=transform).sample(2)
    assert sorted(set(seen)) == [7, 17, 27]
    # each task label's images were made for the class behind that label
    assert torch.equal(batch.support_x[:, :, 0, 0, 0].long(), batch.classes * 10 + 7)


def test_tasks_are_made_on_the_samplers_device() -> None:
    images, labels = _toy()
    batch = EpisodeSampler(images, labels, ways=3, shots=1, queries=1, device="meta").sample(2)
    assert {t.device.type for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.classes)} == {"meta"}


def test_check_refuses_a_negative_query_label() -> None:
    long = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="class labels must be >= 0, got -1"):
        TaskBatch(torch.zeros(1, 2), long, torch.zeros(1, 2), long - 1).check("classification")
