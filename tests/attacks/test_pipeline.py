"""attacks.pipeline: choosing the attacked images."""
from __future__ import annotations

import pytest

import torch

from attacks.losses import MarginLoss
from attacks.pipeline import Target, as_logit_target, returns_probabilities, select_images
from lazyapps.data import load_dataset
from lazyapps.errors import LazyAppsError


def _random_mnist(n: int):
    """n random 28 × 28 images labelled 0, 1, …, 9, 0, … as an MNIST training split (and its test split)."""
    import numpy as np

    from lazyapps.data.splits import DatasetSplits, split_from_arrays

    rng = np.random.RandomState(0)
    split = split_from_arrays(rng.randint(0, 256, (n, 28, 28)).astype(np.uint8), np.arange(n) % 10, what="train")
    return DatasetSplits("mnist", split, split, [str(c) for c in range(10)])


def _linear_zoo_model(path):
    """A trained zoo model as the pipeline sees one: an (untrained) linear MNIST classifier cached at ``path``."""
    from types import SimpleNamespace

    return SimpleNamespace(path=path, model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))


@pytest.mark.parametrize("n", [0, -2])
def test_select_images_refuses_a_count_below_one(n, mnist_softmax, data_root):
    """Every caller is covered: a negative count once sliced the selection from its end."""
    model, _, _ = mnist_softmax
    with pytest.raises(LazyAppsError, match=f"--n-images must be at least 1, got {n}"):
        select_images(model, load_dataset("mnist", root=data_root).test, n, device="cpu")


def test_select_images_takes_the_first_correctly_classified(mnist_softmax, data_root):
    model, _, _ = mnist_softmax
    test = load_dataset("mnist", root=data_root).test
    x, y, index = select_images(model, test, 3, device="cpu")
    assert len(index) == 3 and index.tolist() == sorted(index.tolist())
    assert (model(x).argmax(1) == y).all() and y.tolist() == test.labels[index].tolist()


def test_cached_gradient_sets_and_meta_attackers_that_load_but_do_not_fit_are_rebuilt(tmp_path, capsys):
    """A cached file that is a dict of tensors, but not the artefact (another version's, a hand-made one), is rebuilt
    with a warning as a corrupt one is, not a KeyError."""
    from attacks import pipeline as P
    from lazyapps.checkpoint import save_checkpoint

    data, trained = _random_mnist(8), _linear_zoo_model(tmp_path / "zoo" / "m.pt")
    settings = {"meta_iterations": 1, "meta_batch": 2}

    def build_both():
        sets = [P.gradient_set(trained, "m", data, n_images=8, mode="untargeted", seed=0, device="cpu", cache_dir=tmp_path)]
        return sets, P.meta_attacker("lazy-meta", "mnist", sets, settings, seed=0, device="cpu", cache_dir=tmp_path, in_channels=1)

    sets, (_, params, attacker_path) = build_both()
    set_path = sets[0][1]
    save_checkpoint(set_path, {"maps": torch.zeros(2)})
    save_checkpoint(attacker_path, {"params": {"x": torch.zeros(1)}})
    capsys.readouterr()
    again, (_, rebuilt, _) = build_both()
    said = capsys.readouterr().err  # (the pipeline relays the cache's warnings as status lines)
    assert "warning: cached gradient set of m holds no images, labels and maps of matching shapes; rebuilding it" in said
    assert "warning: cached meta-attacker lazy-meta does not fit the network; rebuilding it" in said
    assert torch.equal(again[0][0]["maps"], sets[0][0]["maps"]) and all(torch.equal(rebuilt[k], params[k]) for k in params)


def test_a_target_returning_probabilities_gets_the_margins_of_its_logits(mnist_softmax):
    """Through the log, the margin loss the attacks query is the logits' (not the much flatter one of raw probabilities)."""
    model, x, y = mnist_softmax
    probs = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    plain = Target(model, "mine.pt", "mnist", "user")
    assert as_logit_target(plain, x) is plain  # logits are left alone
    wrapped = as_logit_target(Target(probs, "probs.pt", "mnist", "user"), x)
    loss = MarginLoss(kind="logits")
    with torch.no_grad():
        logits, scores = model(x), wrapped.model(x)
        torch.testing.assert_close(loss(scores, y), loss(logits, y), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(loss(probs(x), y), loss(logits, y), atol=1e-2)
    assert returns_probabilities(torch.tensor([[0.2, 0.8], [1.0, 0.0]]))
    assert not returns_probabilities(torch.tensor([[0.2, 0.7]])) and not returns_probabilities(torch.tensor([[1.2, -0.2]]))
    assert not returns_probabilities(torch.zeros(0, 3))


def test_the_zoo_order_does_not_change_the_meta_attacker_its_key_names(tmp_path):
    """``--zoo a,b`` and ``--zoo b,a`` share one cache key, so they must train the same attacker."""
    from attacks import pipeline as P

    data = _random_mnist(8)
    sets = []
    for name in ("a", "b"):
        torch.manual_seed(len(sets))
        trained = _linear_zoo_model(tmp_path / "zoo" / f"{name}.pt")
        sets.append(P.gradient_set(trained, name, data, n_images=8, mode="untargeted", seed=0, device="cpu",
                                   cache_dir=tmp_path / "sets"))
    settings = {"meta_iterations": 3, "meta_batch": 2}
    trained_params = []
    for order, cache in ((sets, "one"), (sets[::-1], "two")):  # fresh caches: each order trains its own
        _, params, _ = P.meta_attacker("lazy-meta", "mnist", order, settings, seed=0, device="cpu",
                                       cache_dir=tmp_path / cache, in_channels=1)
        trained_params.append(params)
    assert all(torch.equal(trained_params[0][k], trained_params[1][k]) for k in trained_params[0])


def test_a_gradient_set_draws_its_images_with_its_seed_which_its_cache_key_holds(tmp_path, capsys):
    """Another seed is another draw of training images (and another cached set); the same seed loads the same set."""
    from attacks import pipeline as P

    data = _random_mnist(40)
    torch.manual_seed(0)
    trained = _linear_zoo_model(tmp_path / "zoo" / "m.pt")

    def images(seed):
        state, _ = P.gradient_set(trained, "m", data, n_images=8, mode="untargeted", seed=seed, device="cpu",
                                  cache_dir=tmp_path)
        return state["images"]

    first, other = images(0), images(1)
    assert len(first) == len(other) == 8 and not torch.equal(first, other)
    capsys.readouterr()
    assert torch.equal(images(0), first) and "8 maps loaded from cache" in capsys.readouterr().err


def test_a_zoo_listing_a_model_twice_is_refused():
    """A duplicated zoo model would be two identical meta-training tasks under a key that names it twice."""
    from attacks.pipeline import parse_zoo

    with pytest.raises(LazyAppsError, match="--zoo lists a model twice: lenet5, net2, lenet5"):
        parse_zoo("lenet5, net2,lenet5", "mnist", "net4")


def test_select_images_gives_the_first_correct_ones_in_any_batch_size(mnist_softmax, data_root):
    """The first n correctly classified test images, numbered in the whole split, whatever the batches they come in."""
    model, _, _ = mnist_softmax
    test = load_dataset("mnist", root=data_root).test
    with torch.no_grad():
        right = (model(test.images[:200].float().div(255)).argmax(1) == test.labels[:200]).nonzero().flatten()
    for batch_size in (500, 7):
        x, y, index = select_images(model, test, 12, device="cpu", batch_size=batch_size)
        assert index.tolist() == right[:12].tolist()
        assert torch.equal(x, test.images[index].float().div(255)) and torch.equal(y, test.labels[index])


def test_a_gradient_set_of_another_size_or_zoo_model_is_another_cached_set(tmp_path):
    """n_images and the zoo model's file are part of the gradient set's cache key: asking for 4 images after 8 gives 4,
    not the cached 8, and a retrained zoo model its own gradients."""
    from attacks import pipeline as P

    data = _random_mnist(16)
    torch.manual_seed(0)
    trained = _linear_zoo_model(tmp_path / "zoo" / "m.pt")
    sizes = [len(P.gradient_set(trained, "m", data, n_images=n, mode="untargeted", seed=0, device="cpu",
                                cache_dir=tmp_path)[0]["maps"]) for n in (8, 4)]
    assert sizes == [8, 4]
    # another zoo model of the same name (its own cached file: retrained with other settings) has its own gradients
    retrained = _linear_zoo_model(tmp_path / "zoo" / "m-other.pt")
    maps = [P.gradient_set(t, "m", data, n_images=4, mode="untargeted", seed=0, device="cpu", cache_dir=tmp_path)[0]["maps"]
            for t in (trained, retrained)]
    assert not torch.equal(maps[0], maps[1])


def test_every_meta_training_setting_is_in_the_meta_attackers_cache_key(tmp_path, monkeypatch):
    """Another iteration count, meta-batch, inner step count or seed meta-trains another attacker (meta_train stubbed
    to record its settings); the same settings load the cached one."""
    from types import SimpleNamespace

    import attacks.meta_training as meta_training
    from attacks import pipeline as P

    calls = []

    def fake_meta_train(model, tasks, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(params={k: v.detach().clone() for k, v in model.named_parameters()}, history=[])

    monkeypatch.setattr(meta_training, "meta_train", fake_meta_train)
    data, trained = _random_mnist(8), _linear_zoo_model(tmp_path / "zoo" / "m.pt")
    sets = [P.gradient_set(trained, "m", data, n_images=4, mode="untargeted", seed=0, device="cpu", cache_dir=tmp_path)]
    base = {"meta_iterations": 2, "meta_batch": 3}
    runs = [(base, 0), ({**base, "meta_iterations": 3}, 0), ({**base, "meta_batch": 4}, 0),
            ({**base, "inner_steps": 5}, 0), (base, 1), (base, 0)]
    for settings, seed in runs:
        P.meta_attacker("lazy-meta", "mnist", sets, settings, seed=seed, device="cpu", cache_dir=tmp_path, in_channels=1)
    assert [(c["iterations"], c["batch_size"], c["inner_steps"]) for c in calls] == [
        (2, 3, 8), (3, 3, 8), (2, 4, 8), (2, 3, 5), (2, 3, 8)]  # the last run loads the first one's attacker


def test_log_probabilities_of_probabilities_that_underflowed_stay_finite():
    """A confident target's probabilities of exactly 0 become log(tiny), not −∞ (which finite differences turn into NaN)."""
    from attacks.pipeline import LogProbabilities

    class OneHot(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x.flatten(1).sum(1).long() % 3, 3).to(x.dtype)

    out = LogProbabilities(OneHot())(torch.rand(4, 1, 2, 2))
    tiny = torch.finfo(torch.float32).tiny
    assert torch.isfinite(out).all() and set(out.flatten().tolist()) == {0.0, float(torch.tensor(tiny).log())}
