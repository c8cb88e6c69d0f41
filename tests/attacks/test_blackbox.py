"""BlackBox: exact per-image counting, budget enforcement, no gradient path, label-only mode, input checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks import UNLIMITED, BlackBox, QueryBudgetExceeded
from lazyapps.errors import LazyAppsError


class CountingNet(nn.Module):
    """Tiny classifier that records how many forward calls and rows it saw."""

    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 8), nn.Tanh(), nn.Linear(8, classes))
        self.calls = 0
        self.rows = 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.body(x)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, 3, 3, generator=torch.Generator().manual_seed(seed))


def test_counts_each_row_for_its_image():
    net = CountingNet()
    bb = BlackBox(net)
    bb.query(images(5), index=torch.tensor([0, 0, 3, 1, 0]))
    assert bb.counts.tolist() == [3, 1, 0, 1]
    bb.query(images(2), index=[4, 1])
    assert bb.counts.tolist() == [3, 2, 0, 1, 1]
    assert bb.total == 7 == int(bb.counts.sum())
    bb.query(images(3))  # default index: row i is image i
    assert bb.counts.tolist() == [4, 3, 1, 1, 1]
    assert bb.total == 10 and net.rows == 10
    bb.reset(8)
    assert bb.counts.tolist() == [0] * 8 and bb.total == 0


def test_batch_size_splits_into_chunks_with_same_scores_and_counts():
    net = CountingNet()
    x = images(10)
    whole = BlackBox(net).query(x)
    net.calls = 0
    chunked = BlackBox(net, batch_size=3)
    scores = chunked.query(x, index=torch.zeros(10, dtype=torch.long))
    assert net.calls == 4  # ceil(10 / 3)
    torch.testing.assert_close(scores, whole)
    assert chunked.counts.tolist() == [10] and chunked.total == 10


def test_queries_run_in_the_fast_layout_with_the_same_scores():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    x = torch.rand(6, 3, 6, 6)
    with torch.no_grad():
        expected = conv(x)  # default (NCHW) layout
    bb = BlackBox(conv)
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)  # CPU: oneDNN's native layout
    torch.testing.assert_close(bb.query(x), expected, rtol=1e-5, atol=1e-6)
    assert bb.counts.tolist() == [1] * 6


def test_budget_is_all_or_nothing_and_remaining_is_exact():
    net = CountingNet()
    bb = BlackBox(net, budget=4)
    bb.query(images(3), index=[0, 0, 1])
    assert bb.remaining().tolist() == [2, 3]
    assert bb.remaining([1, 5]).tolist() == [3, 4]  # image 5 not seen yet: full budget
    rows_before = net.rows
    with pytest.raises(QueryBudgetExceeded) as info:
        bb.query(images(4), index=[0, 0, 0, 1])  # image 0 would reach 5 > 4
    assert info.value.images.tolist() == [0]
    assert "budget of 4" in str(info.value)
    assert net.rows == rows_before, "a refused query must not run the model"
    assert bb.counts[:2].tolist() == [2, 1] and bb.total == 3, "a refused query must count nothing"
    bb.query(images(2), index=[0, 0])  # exactly up to the budget is fine
    assert bb.remaining([0]).tolist() == [0]
    assert isinstance(info.value, LazyAppsError)


def test_unlimited_remaining():
    bb = BlackBox(CountingNet())
    bb.query(images(2))
    assert bb.remaining().tolist() == [UNLIMITED, UNLIMITED]


def test_no_gradient_reaches_model_or_input():
    net = CountingNet()
    bb = BlackBox(net)
    x = images(3).requires_grad_(True)
    scores = bb.query(x)
    assert not scores.requires_grad and scores.grad_fn is None
    with pytest.raises(RuntimeError):
        torch.autograd.grad(scores.sum(), x)
    with pytest.raises(RuntimeError):
        scores.sum().backward()
    assert x.grad is None
    assert all(p.grad is None for p in net.parameters())
    # torch.func transforms cannot see through it either: the output does not depend on x
    try:
        g = torch.func.grad(lambda z: bb.query(z.unsqueeze(0)).sum())(images(1)[0])
    except RuntimeError:
        pass
    else:
        assert torch.count_nonzero(g) == 0


def test_model_is_not_a_public_attribute():
    bb = BlackBox(CountingNet())
    public = {k: v for k, v in vars(bb).items() if not k.startswith("_")}
    assert not any(isinstance(v, nn.Module) for v in public.values())


def test_runs_in_eval_mode():
    net = nn.Sequential(nn.Flatten(), nn.Linear(18, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    net.train()
    bb = BlackBox(net)
    x = images(4)
    first, second = bb.query(x), bb.query(x)
    torch.testing.assert_close(first, second)  # dropout off
    net.train()  # someone switches it back: queries still run in eval mode
    torch.testing.assert_close(bb.query(x), first)


def test_outputs_probs_and_labels():
    net = CountingNet(classes=5)
    x = images(6)
    logits = BlackBox(net).query(x)
    probs = BlackBox(net, output="probs").query(x)
    torch.testing.assert_close(probs, logits.softmax(1))
    labels = BlackBox(net, output="label").query(x)
    assert labels.dtype == torch.long and labels.shape == (6,)
    assert labels.tolist() == logits.argmax(1).tolist()


def test_empty_query_counts_nothing():
    bb = BlackBox(CountingNet(classes=4))
    out = bb.query(images(0), index=torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 4) and bb.total == 0


@pytest.mark.parametrize(
    "x, message",
    [
        (images(2) * 2, "must lie in \\[0, 1\\]"),
        (images(2) - 0.5, "must lie in \\[0, 1\\]"),
        (torch.full((1, 2, 3, 3), float("nan")), "NaN"),
        ((images(2) * 255).to(torch.uint8), "float images"),
        (torch.rand(3), "batch of images"),
        (images(1)[0], r"batch of images \(B, C, H, W\), got shape \(2, 3, 3\)"),  # one image without its batch axis
    ],
)
def test_rejects_bad_inputs(x, message):
    bb = BlackBox(CountingNet())
    with pytest.raises(LazyAppsError, match=message):
        bb.query(x)
    assert bb.total == 0


def test_rejects_bad_index_and_settings():
    bb = BlackBox(CountingNet())
    with pytest.raises(LazyAppsError, match="2 entries for 3"):
        bb.query(images(3), index=[0, 1])
    with pytest.raises(LazyAppsError, match="integer"):
        bb.query(images(2), index=torch.tensor([0.0, 1.0]))
    with pytest.raises(LazyAppsError, match="non-negative"):
        bb.query(images(2), index=[0, -1])
    with pytest.raises(LazyAppsError, match="valid: label, logits, probs"):
        BlackBox(CountingNet(), output="softmax")
    with pytest.raises(LazyAppsError, match="at least 1"):
        BlackBox(CountingNet(), budget=0)


class OneAtATime(CountingNet):
    """A target that takes batches of one image only (a forward that reshapes to (1, D))."""

    def forward(self, x):
        if x.shape[0] != 1:
            raise RuntimeError(f"shape '[1, 18]' is invalid for input of size {x.numel()}")
        return super().forward(x)


def test_a_failing_model_is_one_clear_error_and_counts_nothing():
    net = OneAtATime()
    bb = BlackBox(net, budget=5)
    bb.query(images(1))
    with pytest.raises(LazyAppsError, match=r"the target failed on a batch of 3 images of shape \(2, 3, 3\) "
                                            r"\(RuntimeError: shape '\[1, 18\]' is invalid for input of size 54\)"):
        bb.query(images(3), index=[0, 0, 1])
    assert bb.counts.tolist() == [1, 0] and bb.total == 1  # charged once the model answers, not before
    bb.query(images(1), index=[0])
    assert bb.counts.tolist() == [2, 0] and bb.total == 2


def test_budget_is_checked_before_the_model_runs():
    net = CountingNet()
    bb = BlackBox(net, budget=2)
    with pytest.raises(QueryBudgetExceeded):
        bb.query(images(3), index=[0, 0, 0])
    assert net.calls == 0 and bb.total == 0


def test_images_of_another_shape_than_the_target_answered_are_refused_before_charging():
    net = CountingNet()
    bb = BlackBox(net, budget=50)
    bb.query(images(2))
    with pytest.raises(LazyAppsError, match=r"images of shape \(2, 3, 3\) \(C, H, W\), as the target answered before; "
                                            r"got \(2, 4, 4\)"):
        bb.query(torch.rand(1, 2, 4, 4))
    assert net.calls == 1 and bb.counts.tolist() == [1, 1] and bb.total == 2


class OutOfMemory(CountingNet):
    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_target_out_of_memory_is_told_to_query_fewer_images_not_to_take_any_batch_size():
    bb = BlackBox(OutOfMemory(), budget=5)
    with pytest.raises(LazyAppsError, match=r"\(OutOfMemoryError: CUDA out of memory.*\); query fewer images at once") as info:
        bb.query(images(2))
    assert "any size" not in str(info.value) and bb.total == 0


class HostOutOfMemory(CountingNet):
    def forward(self, x):
        raise MemoryError()


def test_a_target_out_of_host_memory_gets_the_same_advice():
    with pytest.raises(LazyAppsError, match=r"\(MemoryError.*\); query fewer images at once"):
        BlackBox(HostOutOfMemory(), budget=5).query(images(2))


def test_calling_the_blackbox_charges_the_given_images():
    bb = BlackBox(CountingNet())
    bb(images(3), index=[2, 2, 0])
    assert bb.counts.tolist() == [1, 0, 2] and bb.total == 3


def test_a_boolean_mask_is_not_taken_for_image_numbers():
    bb = BlackBox(CountingNet())
    with pytest.raises(LazyAppsError, match="integer"):
        bb.query(images(2), index=torch.tensor([True, False]))
    assert bb.total == 0


def test_remaining_validates_its_index_like_a_query():
    bb = BlackBox(CountingNet(), budget=4)
    bb.query(images(2))
    with pytest.raises(LazyAppsError, match="non-negative"):
        bb.remaining([-1])  # not "the last image's"
    with pytest.raises(LazyAppsError, match="integer"):
        bb.remaining(torch.tensor([0.0]))
    fresh = BlackBox(CountingNet(), budget=4)
    assert fresh.remaining(torch.zeros(0, dtype=torch.long)).tolist() == [] and fresh.remaining([]).tolist() == []
    assert fresh.n_images == 0  # asking about no image adds no counter


def test_batch_size_must_be_positive_and_one_sends_row_by_row():
    with pytest.raises(LazyAppsError, match="batch_size must be at least 1"):
        BlackBox(CountingNet(), batch_size=0)
    net = CountingNet()
    bb = BlackBox(net, batch_size=1)
    scores = bb.query(images(3), index=[0, 0, 1])
    assert net.calls == 3 and bb.counts.tolist() == [2, 1]
    torch.testing.assert_close(scores, BlackBox(CountingNet()).query(images(3)))


def test_counters_start_empty_and_stay_int64_after_reset():
    bb = BlackBox(CountingNet())
    assert bb.n_images == 0 and bb.remaining().tolist() == []
    bb.query(images(2))
    bb.reset()
    assert bb.n_images == 0 and bb.total == 0
    bb.reset(3)
    bb.query(images(2), index=[2, 2])
    assert bb.counts.dtype == torch.int64 and bb.counts.tolist() == [0, 0, 2]


def test_an_empty_query_runs_nothing_and_adds_no_counter():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(18, 4)).double()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    bb = BlackBox(net)
    first = bb.query(images(0), index=[])  # K not known yet: one uncounted probe row
    assert first.shape == (0, 4) and first.dtype == torch.float64 and calls == [1] and bb.n_images == 0
    bb.query(images(1), index=[1])
    second = bb.query(images(0), index=[])
    assert second.shape == (0, 4) and calls == [1, 1]  # the target is not asked about no image
    assert bb.counts.tolist() == [0, 1] and bb.total == 1


def test_a_single_nan_pixel_is_refused():
    bb = BlackBox(CountingNet())
    x = images(2)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(LazyAppsError, match="NaN"):
        bb.query(x)
    assert bb.total == 0


def test_a_query_that_is_not_a_tensor_is_a_clear_error():
    bb = BlackBox(CountingNet())
    with pytest.raises(LazyAppsError, match="torch.Tensor, got list"):
        bb.query(images(1).tolist())


class BufferNet(nn.Module):
    """A float64 linear target whose weights are buffers (no parameters): its dtype is found there."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(18, 4, generator=torch.Generator().manual_seed(0),
                                                   dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.weight


@pytest.mark.parametrize("make", [lambda: CountingNet().double(), BufferNet], ids=["parameters", "buffers"])
def test_queries_are_cast_to_the_targets_dtype(make):
    """float32 images (as datasets give them) against a float64 target: the class probe and the queries run in the
    target's dtype, scores equal to the target's own on the same images."""
    net = make()
    bb = BlackBox(net)
    assert bb.num_classes((2, 3, 3)) == 4
    x = images(3)
    scores = bb.query(x)
    with torch.no_grad():
        expected = net(x.double())
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores, expected)


def test_the_class_probe_fixes_the_image_shape_and_leaves_a_training_target_alone():
    """num_classes before any query: the probe runs in eval mode (batch-norm statistics untouched) and later
    queries of another image shape are refused before charging, even by a target that would take them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(3, 5))
    net.train()
    stats = net[1].running_mean.clone(), net[1].running_var.clone()
    bb = BlackBox(net)
    assert bb.num_classes((2, 3, 3)) == 5
    assert torch.equal(net[1].running_mean, stats[0]) and torch.equal(net[1].running_var, stats[1])
    with pytest.raises(LazyAppsError, match=r"images of shape \(2, 3, 3\)"):
        bb.query(torch.rand(1, 2, 4, 4))
    assert bb.total == 0


class FirstRowOnly(CountingNet):
    """Scores the first image of a batch only (a user's model with a baked-in batch of 1)."""

    def forward(self, x):
        return super().forward(x[:1])


class NaNScores(CountingNet):
    def forward(self, x):
        return super().forward(x) * float("nan")


@pytest.mark.parametrize("net, message", [
    (FirstRowOnly(), r"answered a batch of 3 images with shape \(1, 4\); a target must return \(B, K\) class scores"),
    (NaNScores(), r"the target returned NaN scores for a batch of 3 images"),
])
def test_a_target_whose_scores_are_not_one_row_per_image_or_are_nan_is_refused_and_counts_nothing(net, message):
    bb = BlackBox(net, budget=5)
    with pytest.raises(LazyAppsError, match=message):
        bb.query(images(3))
    assert bb.total == 0


def test_image_selection_refuses_a_target_that_scores_one_row_per_batch():
    from attacks.pipeline import select_images
    from lazyapps.data.splits import split_from_arrays
    import numpy as np

    split = split_from_arrays(np.zeros((6, 3, 3, 2), np.uint8), np.zeros(6, np.int64), what="test")
    with pytest.raises(LazyAppsError, match=r"answered a batch of 6 images with shape \(1, 4\)"):
        select_images(FirstRowOnly(), split, 2, device="cpu")


def test_pixels_exactly_on_the_box_are_taken_and_just_outside_refused():
    """[0, 1] is closed and exact: an attack that forgets to clip by a hair is told so, not silently queried."""
    bb = BlackBox(CountingNet().double())
    edge = images(2).double()
    edge[0, 0, 0, 0], edge[1, 1, 2, 2] = 0.0, 1.0
    bb.query(edge)
    for bad in (1.0 + 1e-9, -1e-9):
        x = edge.clone()
        x[1, 0, 1, 1] = bad
        with pytest.raises(LazyAppsError, match="must lie in \\[0, 1\\]"):
            bb.query(x)
    assert bb.total == 2


def test_the_target_runs_without_autograd():
    """Queries run under no_grad: the target builds no graph (memory on big query batches), whatever the caller's mode."""
    seen = []
    net = CountingNet()
    net.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    bb = BlackBox(net)
    with torch.enable_grad():
        bb.query(images(3))
    assert seen == [False]
