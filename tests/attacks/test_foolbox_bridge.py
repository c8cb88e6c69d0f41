"""HopSkipJump and Boundary through the BlackBox: adversarials found, every query counted, budget kept."""
from __future__ import annotations

import pytest
import torch

from attacks import BlackBox
from attacks.foolbox_bridge import BlackBoxFoolboxModel, run_boundary, run_foolbox_attack, run_hsja
from lazyapps.data import load_dataset
from lazyapps.errors import LazyAppsError


@pytest.fixture(scope="module")
def mnist_target(mnist_softmax):
    """The real-MNIST softmax regression and 4 test digits it gets right."""
    model, x, y = mnist_softmax
    return model, x[:4], y[:4]


def fooled(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


@pytest.mark.parametrize("runner", [run_hsja, run_boundary], ids=["hsja", "boundary"])
def test_finds_adversarials_within_budget_and_counts_match(mnist_target, runner):
    model, x, y = mnist_target
    torch.manual_seed(0)
    bb = BlackBox(model, output="label")
    index = torch.arange(4) + 10
    out = runner(bb, x, y, max_queries=300, index=index)
    assert out.success.all()
    assert torch.equal(fooled(model, out.x_adv, y), out.success)
    assert out.queries.tolist() == bb.counts[index].tolist()
    assert (out.queries <= 300).all() and (out.queries > 0).all()
    torch.testing.assert_close(out.l2, (out.x_adv - x).flatten(1).norm(dim=1))
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1


def test_blackbox_budget_stops_the_attack_gracefully(mnist_target):
    model, x, y = mnist_target
    torch.manual_seed(0)
    bb = BlackBox(model, budget=150)  # scores blackbox: only decisions are used
    out = run_hsja(bb, x, y, max_queries=10_000)
    assert out.success.all()
    assert out.queries.tolist() == bb.counts.tolist()
    assert (bb.counts <= 150).all()


def test_targeted_needs_and_uses_starting_points(mnist_target, data_root):
    model, x, y = mnist_target
    target = (y + 1) % 10
    with pytest.raises(LazyAppsError, match="starting_points"):
        run_hsja(BlackBox(model), x, y, target=target)
    # starting points: training digits the target classifies as the target class
    ds = load_dataset("mnist", root=data_root)
    pool = ds.train.images[3000:4000].float().div(255)
    with torch.no_grad():
        pred = model(pool).argmax(1)
    starts = torch.stack([pool[(pred == t).nonzero()[0, 0]] for t in target.tolist()])
    torch.manual_seed(0)
    bb = BlackBox(model, output="label")
    out = run_hsja(bb, x, y, target=target, starting_points=starts, max_queries=300)
    assert out.success.all()
    with torch.no_grad():
        assert (model(out.x_adv).argmax(1) == target).all()
    assert out.queries.tolist() == bb.counts.tolist()
    assert (out.l2 < (starts - x).flatten(1).norm(dim=1)).all()  # the distance shrank from the start


def test_model_rejects_mismatched_batches(mnist_target):
    model, x, y = mnist_target
    wrapper = BlackBoxFoolboxModel(BlackBox(model), x, y)
    assert tuple(wrapper.bounds) == (0.0, 1.0)
    with pytest.raises(LazyAppsError, match="rows for 4 images"):
        wrapper(x[:2])
    with pytest.raises(LazyAppsError, match="at least 1"):
        run_foolbox_attack(None, BlackBox(model), x, y, max_queries=0)


def test_queries_count_from_the_start_of_the_attack(mnist_target):
    """Queries an image spent before (another attack on the same blackbox) are neither reported nor charged to this budget."""
    model, x, y = mnist_target
    bb = BlackBox(model, output="label")
    for _ in range(5):
        bb.query(x)
    torch.manual_seed(0)
    out = run_hsja(bb, x, y, max_queries=100)
    assert out.queries.tolist() == (bb.counts - 5).tolist()
    assert (out.queries <= 100).all() and (out.queries > 90).all()  # the whole budget of 100 was available


def test_images_without_a_starting_point_are_charged_only_their_check(mnist_target):
    """With image 1 left out (its start is not adversarial) the attack runs on rows 0, 2, 3: each row's queries go to its own image."""
    model, x, y = mnist_target
    starts = x[[1, 2, 3, 0]].clone()
    assert (y[[1, 2, 3, 0]] != y).all()
    starts[1] = x[1]  # classified as its own label: not adversarial
    index = torch.arange(4) + 20
    bb = BlackBox(model, output="label")
    torch.manual_seed(0)
    out = run_hsja(bb, x, y, starting_points=starts, max_queries=200, index=index)
    assert out.success.tolist() == [True, False, True, True]
    assert out.queries.tolist() == bb.counts[index].tolist()
    assert out.queries[1] == 1 and (out.queries[[0, 2, 3]] > 100).all()


@pytest.mark.parametrize("runner", [run_hsja, run_boundary], ids=["hsja", "boundary"])
def test_first_success_is_the_budget_a_shorter_run_needs(mnist_target, runner):
    """A minimisation attack spends its whole budget, so its budget curve counts an image from its first adversarial.

    Rerun with that many queries (same seed), the attack succeeds; with one fewer it does not.
    """
    model, x, y = mnist_target

    def attack(budget, rows):
        torch.manual_seed(0)
        return runner(BlackBox(model, output="label"), x[rows], y[rows], max_queries=budget)

    full = attack(300, slice(None))
    assert full.success.all() and (full.queries == 300).all()
    assert full.rows()[0]["first_success"] == int(full.first_success[0])
    # the starting-point search finds an adversarial at once (query 1) on most digits; take the latest
    i = int(full.first_success.argmax())
    assert full.first_success[i] > 1
    alone = attack(300, [i])
    first = int(alone.first_success[0])
    assert 1 < first < 300
    assert alone.budget_curve([first - 1, first, 300]) == [0.0, 1.0, 1.0]
    assert attack(first, [i]).success.all()
    assert not attack(first - 1, [i]).success.any()


def test_the_wrapper_keeps_the_closest_adversarial_queried_not_the_last():
    """HopSkipJump's gradient probes are adversarial points farther out than its boundary point: the outcome must be
    the closest adversarial seen (its L2 is the reported distortion), with the queries spent when the first was found."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
    with torch.no_grad():  # class 1 exactly when the first pixel is above 0.5
        net[1].weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        net[1].bias.copy_(torch.tensor([0.5, -0.5]))
    x, y = torch.tensor([[[[0.2, 0.2]]]]), torch.tensor([0])
    wrapper = BlackBoxFoolboxModel(BlackBox(net, output="label"), x, y, max_queries=10)
    for point in ([0.6, 0.2], [0.9, 0.9], [0.3, 0.2], [0.55, 0.6]):  # near, farther, not adversarial, farther
        wrapper(torch.tensor([[[point]]]))
    out = wrapper.outcome()
    assert out.success.tolist() == [True] and out.queries.tolist() == [4] and out.first_success.tolist() == [1]
    torch.testing.assert_close(out.x_adv, torch.tensor([[[[0.6, 0.2]]]]))
    assert out.l2.tolist() == pytest.approx([0.4])
