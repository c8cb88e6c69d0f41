"""attacks.pipeline: choosing the attacked images."""
from __future__ import annotations

import pytest

from attacks.pipeline import select_images
from lazyapps.data import load_dataset
from lazyapps.errors import LazyAppsError


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
    from types import SimpleNamespace

    import numpy as np
    import torch

    from attacks import pipeline as P
    from lazyapps.checkpoint import save_checkpoint
    from lazyapps.data.splits import DatasetSplits, split_from_arrays

    rng = np.random.RandomState(0)
    split = split_from_arrays(rng.randint(0, 256, (8, 28, 28)).astype(np.uint8), np.arange(8) % 10, what="train")
    data = DatasetSplits("mnist", split, split, [str(c) for c in range(10)])
    trained = SimpleNamespace(path=tmp_path / "zoo" / "m.pt", model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
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
