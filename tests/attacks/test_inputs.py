"""Bad arguments to every Python attack entry point: one clear LazyAppsError, before any query is spent."""
from __future__ import annotations

import foolbox as fb
import pytest
import torch
from torch import nn

from attacks import BlackBox, ZOOEstimator, run_baseline, score_attack
from attacks.foolbox_bridge import run_hsja
from attacks.foolbox_meta import MetaAttackFoolbox
from attacks.inputs import check_images, check_targets
from attacks.meta_attack import meta_attack
from attacks.meta_attacker import MetaAttacker
from lazyapps.errors import LazyAppsError


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _entry_points():
    """Each public attack, as ``run(blackbox, x, y, target)``."""
    net = MetaAttacker(1, (4,))
    return {
        "score_attack": lambda bb, x, y, t: score_attack(bb, x, y, ZOOEstimator(coordinates=4), target=t, max_queries=50),
        "run_baseline": lambda bb, x, y, t: run_baseline("nes", bb, x, y, target=t, max_queries=50),
        "meta_attack": lambda bb, x, y, t: meta_attack(bb, x, y, net, target=t, max_queries=50, q=4),
        "hsja": lambda bb, x, y, t: run_hsja(bb, x, y, target=t, max_queries=50,
                                            starting_points=None if t is None else x),
    }


@pytest.mark.parametrize("name", list(_entry_points()))
@pytest.mark.parametrize(("case", "message"), [
    ("above_one", r"must lie in \[0, 1\]"),
    ("below_zero", r"must lie in \[0, 1\]"),
    ("uint8", "must be float"),
    ("target_is_label", "equals the true class of image 1"),
    ("target_out_of_range", "target class 4 of image 0 is out of range: the target has classes 0..3"),
    ("negative_label", "label -1 of image 2 is out of range"),
    ("labels_short", r"need \(N,\) labels and targets for 3 images, got labels \(2,\)"),
    # a float label compares unequal to every prediction: without the check, a "success" after one query
    ("float_labels", "labels must be an integer tensor of class numbers, got dtype torch.float32"),
    ("float_targets", "target classes must be an integer tensor of class numbers, got dtype torch.float64"),
    # a boolean mask (which images are right, say) passed as labels: 0/1 would pass for class numbers
    ("bool_labels", "labels must be an integer tensor of class numbers, got dtype torch.bool"),
])
def test_bad_arguments_are_refused_before_any_query(name, case, message):
    model, x, y = _setup()
    target = None
    if case == "above_one":
        x = x + 0.5
    elif case == "below_zero":
        x = x - 0.5
    elif case == "uint8":
        x = (x * 255).to(torch.uint8)
    elif case == "target_is_label":
        target = (y + 1) % 4
        target[1] = y[1]
    elif case == "target_out_of_range":
        target = torch.full_like(y, 4)
    elif case == "negative_label":
        y = y.clone()
        y[2] = -1
    elif case == "labels_short":
        y = y[:2]
    elif case == "float_labels":
        y = y.float() + 0.5
    elif case == "float_targets":
        target = ((y + 1) % 4).double()
    elif case == "bool_labels":
        y = y > 0
    bb = BlackBox(model, output="label" if name == "hsja" else "logits")
    with pytest.raises(LazyAppsError, match=message):
        _entry_points()[name](bb, x, y, target)
    assert bb.total == 0


@pytest.mark.parametrize(("settings", "message"), [
    ({"x": lambda x: x[:0]}, "meta_attack needs at least one image, got an empty batch"),
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"q": 0}, "need q >= 1, every >= 1 and finetune_steps >= 0, got q=0, every=5"),
    ({"every": 0}, "need q >= 1, every >= 1 and finetune_steps >= 0, got q=4, every=0"),
    ({"net": MetaAttacker.for_dataset("cifar10")},
     "the meta-attacker takes 3-channel images, but the attacked images have 1 channel"),
])
def test_bad_meta_attack_settings_are_refused_before_any_query(settings, message):
    model, x, y = _setup()
    x = settings.get("x", lambda v: v)(x)
    bb = BlackBox(model)
    kwargs = {k: v for k, v in settings.items() if k in ("batch_size", "q", "every")}
    with pytest.raises(LazyAppsError, match=message):
        meta_attack(bb, x, y[:len(x)], settings.get("net", MetaAttacker(1, (4,))), max_queries=50, **{"q": 4, **kwargs})
    assert bb.total == 0


def test_foolbox_meta_attack_refuses_images_outside_the_bounds_with_a_message():
    """foolbox's own check is a bare assert (an empty AssertionError); ours says what is wrong."""
    model, x, y = _setup()
    attack = MetaAttackFoolbox(MetaAttacker(1, (4,)), max_queries=40, q=4)
    with pytest.raises(LazyAppsError, match=r"attacked images must lie in \[0, 1\], got range \[0\.01346, 2\]"):
        attack(fb.PyTorchModel(model, bounds=(0, 1)), x * 2, fb.criteria.Misclassification(y), epsilons=None)
    assert attack.last_outcome is None


def test_valid_arguments_pass():
    _, x, y = _setup()
    check_images(x)
    check_images(x[:0])
    check_targets(y, (y + 1) % 4, 4)
    check_targets(y, None, None)


def test_num_classes_costs_no_query():
    model, x, _ = _setup()
    bb = BlackBox(model, budget=1)
    assert bb.num_classes((1, 8, 8)) == 4 and bb.total == 0 and bb.counts.sum() == 0


def test_foolbox_meta_attack_targeted_labels_stay_in_range():
    """The foolbox wrapper makes up a label ≠ target for targeted criteria; it must be a valid class."""
    model, x, y = _setup()
    target = (y + 1) % 4
    target[0] = 3  # (3 + 1) would be class 4 of a 4-class model
    attack = MetaAttackFoolbox(MetaAttacker(1, (4,)), max_queries=40, q=4, every=2, step=0.05)
    _, adv, ok = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, fb.criteria.TargetedMisclassification(target),
                        epsilons=None)
    assert adv.shape == x.shape and ok.shape == (3,)
    assert attack.last_outcome.target_classes.tolist() == target.tolist()


def test_targets_of_the_wrong_length_and_images_that_are_not_4d_are_refused():
    _, x, y = _setup()
    with pytest.raises(LazyAppsError, match=r"need \(N,\) labels and targets for 3 images, got labels \(3,\) and targets \(2,\)"):
        check_targets(y, ((y + 1) % 4)[:2], 4, images=3)
    with pytest.raises(LazyAppsError, match=r"must be float \(N, C, H, W\), got torch.float32 \(1, 8, 8\)"):
        check_images(x[0])


def test_foolbox_meta_attack_uses_the_given_parameters():
    """``params`` (e.g. meta-trained ones) drive the attack, not the module's own initial weights."""
    model, x, y = _setup()
    torch.manual_seed(1)
    trained = MetaAttacker(1, (4,))
    torch.manual_seed(2)
    fresh = MetaAttacker(1, (4,))
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    runs = []
    for net, params in ((trained, None), (fresh, {k: v.detach().clone() for k, v in trained.named_parameters()})):
        torch.manual_seed(0)
        attack = MetaAttackFoolbox(net, params, max_queries=40, q=4, every=2, step=0.05, finetune_steps=2)
        raw, _, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
        runs.append((raw, attack.last_outcome.queries))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    assert torch.equal(runs[0][1], runs[1][1])
