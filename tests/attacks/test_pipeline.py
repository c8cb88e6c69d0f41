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
