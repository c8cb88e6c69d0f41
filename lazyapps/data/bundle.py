"""Array bundles: a ``.npz`` holding a whole dataset.

Required keys: ``x_train``, ``y_train``, ``x_test``, ``y_test`` — images
``uint8`` ``N×H×W×C`` (or ``N×H×W`` for grayscale, read as one channel) and
integer labels of matching length. Optional: ``classes`` (class names, one
per label value; default ``"0"``, ``"1"``, ...), and any other arrays (e.g.
``train_index``, the original positions of a subset's training rows), which
land in :attr:`DatasetSplits.extra` — numbers as tensors, strings as lists.
The file is read with ``allow_pickle=False``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import LazyAppsError
from .splits import DatasetSplits, split_from_arrays

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_bundle(path: Path, name: str) -> DatasetSplits:
    """Read the array bundle at ``path`` as dataset ``name`` (validating keys, dtypes and shapes)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        # (numpy calls any file it cannot parse "pickled data" and suggests allow_pickle=True: not repeated)
        why = "not a numpy file" if "allow_pickle" in str(exc) else f"{type(exc).__name__}: {_first_line(exc)}"
        raise LazyAppsError(f"array bundle {path} cannot be read ({why}); it must be a .npz written by numpy.savez") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise LazyAppsError(f"array bundle {path} holds a single array, not a .npz with keys {', '.join(REQUIRED_KEYS)}")
    with archive:
        missing = [key for key in REQUIRED_KEYS if key not in archive.files]
        if missing:
            raise LazyAppsError(f"array bundle {path} lacks key(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_KEYS)} (found: {', '.join(archive.files) or 'none'})")
        try:
            arrays = {key: archive[key] for key in archive.files}
        except ValueError as exc:  # object arrays need pickle, which we refuse
            raise LazyAppsError(f"array bundle {path}: {_first_line(exc)}; store plain numeric/string arrays") from None
    train = split_from_arrays(arrays.pop("x_train"), arrays.pop("y_train"), what=f"{path} train")
    test = split_from_arrays(arrays.pop("x_test"), arrays.pop("y_test"), what=f"{path} test")
    for part, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise LazyAppsError(f"array bundle {path}: the {part} split holds no images")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise LazyAppsError(f"array bundle {path}: train images are {tuple(train.images.shape[1:])} (C×H×W) but test images are {tuple(test.images.shape[1:])}")
    top = max((int(split.labels.max()) for split in (train, test) if len(split)), default=-1)
    if "classes" in arrays:
        classes = [str(c) for c in arrays.pop("classes").reshape(-1).tolist()]
        if len(classes) <= top:
            raise LazyAppsError(f"array bundle {path}: labels go up to {top} but only {len(classes)} class names are given")
    else:
        classes = [str(c) for c in range(top + 1)]
    extra = {key: _extra_value(value) for key, value in arrays.items()}
    return DatasetSplits(name=name, train=train, test=test, classes=classes, extra=extra, source=str(path))


def _extra_value(value: np.ndarray):
    if value.dtype.kind in "US":
        return [str(v) for v in value.reshape(-1).tolist()] if value.ndim else str(value)
    return torch.from_numpy(np.array(value))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
