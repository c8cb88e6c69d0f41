"""MNIST (LeCun, Bottou, Bengio, Haffner 1998) read straight from its IDX files.

Layout (torchvision's): ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``,
each file optionally gzipped (``.gz``); the original names with a dot
(``train-images.idx3-ubyte``) are accepted too. Alternatively an array bundle
``<root>/mnist/*.npz`` (see :mod:`lazyapps.data.bundle`). 60,000 train and
10,000 test images, 1×28×28, in file order.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import LazyAppsError
from .bundle import load_bundle
from .sources import FilesMissing, find_bundle, first_existing
from .splits import DatasetSplits, Split

CLASSES = [str(d) for d in range(10)]
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# IDX type codes (the third magic byte) -> numpy dtype, big-endian as the format says.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in IDX file ``path`` (gzipped when its name ends in ``.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise LazyAppsError(f"cannot read MNIST file {path} ({exc}); the file is corrupt, delete it and download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise LazyAppsError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise LazyAppsError(f"{path} has {len(data)} bytes but its header promises {expected}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(tuple(dims))


def _candidates(folder: Path, stem: str) -> list[Path]:
    dotted = stem.replace("-idx", ".idx")  # the names on the original site
    return [folder / name for base in (stem, dotted) for name in (base, base + ".gz")]


def load_mnist(root: Path, **_: object) -> DatasetSplits:
    """MNIST from ``root`` (IDX files, else an array bundle). Raises :class:`FilesMissing` when absent."""
    folder = root / "MNIST" / "raw"
    found = {key: first_existing(_candidates(folder, stem)) for key, stem in FILES.items()}
    if all(found.values()):
        splits = {}
        for part in ("train", "test"):
            images = read_idx(found[(part, "images")])
            labels = read_idx(found[(part, "labels")])
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise LazyAppsError(f"MNIST {part} files disagree: images {images.shape}, labels {labels.shape}")
            if len(labels) and int(labels.max()) > 9:
                raise LazyAppsError(f"MNIST {part} labels go up to {int(labels.max())}, not 0..9: "
                                    f"{found[(part, 'labels')]} is corrupt; download it again")
            # frombuffer views are read-only; torch wants memory it may own.
            splits[part] = Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
        return DatasetSplits("mnist", splits["train"], splits["test"], list(CLASSES), source=str(folder))
    bundle = find_bundle(root / "mnist")
    if bundle is not None:
        return load_bundle(bundle, "mnist")
    missing = [str(folder / (stem + "[.gz]")) for key, stem in FILES.items() if not found[key]]
    raise FilesMissing(missing + [str(root / "mnist" / "*.npz")])
