"""scikit-learn's bundled 8×8 handwritten digits (the UCI optdigits test set): real data, no files.

1,797 images with 17 grey levels (0..16), stored here as uint8 ``round(v * 255 / 16)``
so that they read like every other dataset (0..255). Split, deterministic
and unshuffled: the first 1,437 images train, the last 360 test (80/20; the
set cycles through the digits, so both parts hold every class ~evenly).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .splits import DatasetSplits, split_from_arrays

NUM_TRAIN = 1437


def load_digits(root: Path | None = None, **_: object) -> DatasetSplits:
    """The digits dataset (``root`` is ignored: the data ships with scikit-learn)."""
    from sklearn.datasets import load_digits as sklearn_digits  # sklearn is slow to import; only here

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    return DatasetSplits(
        "digits",
        split_from_arrays(images[:NUM_TRAIN], labels[:NUM_TRAIN], what="digits train"),
        split_from_arrays(images[NUM_TRAIN:], labels[NUM_TRAIN:], what="digits test"),
        [str(d) for d in range(10)],
        source="sklearn.datasets.load_digits",
    )
