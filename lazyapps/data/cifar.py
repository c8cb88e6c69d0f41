"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the official python pickles or an array bundle.

Official layout (what torchvision downloads):

* ``<root>/cifar-10-batches-py/`` with ``data_batch_1`` … ``data_batch_5``,
  ``test_batch`` and ``batches.meta`` (``label_names``);
* ``<root>/cifar-100-python/`` with ``train``, ``test`` and ``meta``
  (``fine_label_names``, ``coarse_label_names``); labels are the fine labels.

Each pickle is a dict whose ``data`` is ``N×3072`` uint8, one image per row
as the red, green, blue 32×32 planes in row-major order — that is already
``C×H×W``, so rows reshape to ``N×3×32×32`` without reordering. The pickles are
read with an unpickler that only builds numpy arrays and plain containers.

Array bundles are found at ``<root>/cifar10/*.npz`` and ``<root>/cifar100/*.npz``.

``extra``: ``train_index`` (original training-set position of each train row:
``arange(50000)`` for the official files, the bundle's ``train_index`` for a
subset); CIFAR-100 adds ``train_coarse``, ``test_coarse`` (int64) and
``coarse_classes``.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LazyAppsError
from .bundle import load_bundle
from .sources import FilesMissing, find_bundle
from .splits import DatasetSplits, Split

# What the official pickles (written by Python 2 numpy) may reference.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 pickles of arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts and strings; refuses any other global (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_pickle(path: Path) -> dict[str, Any]:
    """The dict in CIFAR pickle ``path``, with ``str`` keys (the files may have ``bytes`` keys)."""
    try:
        with open(path, "rb") as handle:
            content = _ArrayUnpickler(handle, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise LazyAppsError(f"cannot read CIFAR file {path} ({type(exc).__name__}: {exc}); it is corrupt, delete it and download it again") from None
    if not isinstance(content, dict):
        raise LazyAppsError(f"CIFAR file {path} does not hold a dict; it is not an official CIFAR pickle")
    return {_str(key): value for key, value in content.items()}


def _batch(path: Path, label_key: str, extra_keys: tuple[str, ...] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
    batch = read_pickle(path)
    for key in ("data", label_key, *extra_keys):
        if key not in batch:
            raise LazyAppsError(f"CIFAR file {path} lacks {key!r} (has: {', '.join(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise LazyAppsError(f"CIFAR file {path}: data has shape {data.shape}, expected N×3072")
    labels = [np.asarray(batch[key], dtype=np.int64) for key in (label_key, *extra_keys)]
    for values in labels:
        if values.shape != (len(data),):
            raise LazyAppsError(f"CIFAR file {path}: {len(data)} images but {values.shape} labels")
    return data, labels


def _split(data: np.ndarray, labels: np.ndarray) -> Split:
    data = np.ascontiguousarray(data)
    if not data.flags.writeable:  # arrays unpickled from a buffer are read-only views
        data = data.copy()
    return Split(torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels))


def _names(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    if key not in meta:
        raise LazyAppsError(f"CIFAR meta file {path} lacks {key!r}")
    return [_str(name) for name in meta[key]]


def load_cifar10(root: Path, **_: object) -> DatasetSplits:
    """CIFAR-10 from ``root`` (official pickles, else ``cifar10/*.npz``). Raises :class:`FilesMissing` when absent."""
    folder = root / "cifar-10-batches-py"
    files = [folder / f"data_batch_{i}" for i in range(1, 6)] + [folder / "test_batch", folder / "batches.meta"]
    if all(f.is_file() for f in files):
        parts = [_batch(f, "labels") for f in files[:5]]
        train = _split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1][0] for p in parts]))
        test_data, (test_labels,) = _batch(files[5], "labels")
        classes = _names(read_pickle(files[6]), "label_names", files[6])
        return DatasetSplits("cifar10", train, _split(test_data, test_labels), classes,
                             extra={"train_index": torch.arange(len(train))}, source=str(folder))
    bundle = find_bundle(root / "cifar10")
    if bundle is not None:
        return load_bundle(bundle, "cifar10")
    raise FilesMissing([str(f) for f in files if not f.is_file()] + [str(root / "cifar10" / "*.npz")])


def load_cifar100(root: Path, **_: object) -> DatasetSplits:
    """CIFAR-100 (fine labels) from ``root`` (official pickles, else ``cifar100/*.npz``). Raises :class:`FilesMissing` when absent."""
    folder = root / "cifar-100-python"
    files = [folder / "train", folder / "test", folder / "meta"]
    if all(f.is_file() for f in files):
        splits, coarse = [], []
        for path in files[:2]:
            data, (fine, coarse_labels) = _batch(path, "fine_labels", ("coarse_labels",))
            splits.append(_split(data, fine))
            coarse.append(torch.from_numpy(coarse_labels))
        meta = read_pickle(files[2])
        extra = {
            "train_index": torch.arange(len(splits[0])),
            "train_coarse": coarse[0],
            "test_coarse": coarse[1],
            "coarse_classes": _names(meta, "coarse_label_names", files[2]),
        }
        return DatasetSplits("cifar100", splits[0], splits[1], _names(meta, "fine_label_names", files[2]), extra, source=str(folder))
    bundle = find_bundle(root / "cifar100")
    if bundle is not None:
        return load_bundle(bundle, "cifar100")
    raise FilesMissing([str(f) for f in files if not f.is_file()] + [str(root / "cifar100" / "*.npz")])
