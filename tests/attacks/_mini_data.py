"""A small real-data root for the attack product's end-to-end tests.

The first images of the real MNIST and CIFAR-10 files, written in the same
formats (IDX for MNIST, an array bundle for CIFAR-10). The pipeline then
trains, evaluates and selects images on hundreds of images instead of tens
of thousands, so the end-to-end tests stay within seconds.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = {
    "train-images-idx3-ubyte": ("train", "images"), "train-labels-idx1-ubyte": ("train", "labels"),
    "t10k-images-idx3-ubyte": ("test", "images"), "t10k-labels-idx1-ubyte": ("test", "labels"),
}


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def build_mini_root(data_root: Path, out: Path, *, train: int = 1024, test: int = 200) -> Path:
    """``out`` with ``MNIST/raw`` (first ``train``/``test`` images) and ``cifar10/mini.npz`` (same counts)."""
    from lazyapps.data.mnist import read_idx

    raw = out / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, (split, kind) in MNIST_FILES.items():
        array = read_idx(data_root / "MNIST" / "raw" / f"{name}.gz")
        _write_idx(raw / f"{name}.gz", array[: train if split == "train" else test])
    cifar = np.load(data_root / "cifar10" / "cifar10_subset.npz")
    (out / "cifar10").mkdir(exist_ok=True)
    np.savez(out / "cifar10" / "mini.npz", x_train=cifar["x_train"][:train], y_train=cifar["y_train"][:train],
             x_test=cifar["x_test"][:test], y_test=cifar["y_test"][:test], classes=cifar["classes"])
    return out
