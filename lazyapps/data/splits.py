"""In-memory image datasets: a :class:`Split` per train/test part, bundled in :class:`DatasetSplits`.

Images are kept as ``uint8`` tensors ``N×C×H×W`` in the order of the original
files (a quarter of the memory of float32, and exact); code that trains on them
converts a batch at a time with :meth:`Split.floats` or through the
``Dataset`` interface. Labels are ``int64`` class indices into
:attr:`DatasetSplits.classes`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import LazyAppsError


@dataclass(eq=False)
class Split(Dataset):
    """One split of a dataset held in memory.

    ``images`` is ``uint8`` ``N×C×H×W`` and ``labels`` is ``int64`` ``N``, both
    in original file order. As a :class:`torch.utils.data.Dataset`, item ``i``
    is ``(float32 image C×H×W in [0, 1], int64 label)``, so a ``DataLoader``
    works on it directly. Treat the tensors as read-only: loads are cached in
    memory and shared between callers.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be int64 N, got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"Split(images={tuple(self.images.shape)} uint8, labels={len(self.labels)})"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float().div_(255), self.labels[index]

    def floats(self, device: str | torch.device | None = None) -> torch.Tensor:
        """All images as float32 in [0, 1] (``N×C×H×W``), optionally on ``device``.

        The uint8 tensor moves first and converts there, so a GPU copy costs a
        quarter of the transfer.
        """
        images = self.images if device is None else self.images.to(device)
        return images.float().div_(255)

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> Split:
        """The images and labels at ``indices`` (in that order), as a new split."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return Split(self.images[index], self.labels[index])


@dataclass(eq=False)
class DatasetSplits:
    """A dataset's train and test splits with its class names.

    ``extra`` holds what a particular dataset adds, e.g. ``train_index`` (the
    original training-set positions of a subset's rows) or Omniglot's
    alphabet/character/drawer metadata; each loader's docstring lists its keys.
    ``source`` is the file or folder the data was read from (for reports).
    """

    name: str
    train: Split
    test: Split
    classes: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def channels(self) -> int:
        """Image channels (1 for grayscale, 3 for RGB)."""
        return int(self.train.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(int(s) for s in self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def image_size(self) -> int | tuple[int, int]:
        """Side length of the (square) images; ``(H, W)`` for non-square ones."""
        _, height, width = self.image_shape
        return height if height == width else (height, width)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def _moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # A 256-bin histogram per channel gives the exact mean and std of the
        # [0, 1] values without materialising a float copy of the split.
        means, stds = [], []
        values = torch.arange(256, dtype=torch.float64) / 255
        for c in range(self.channels):
            hist = torch.bincount(self.train.images[:, c].reshape(-1), minlength=256).double()
            total = hist.sum()
            mean = (hist * values).sum() / total
            var = (hist * (values - mean) ** 2).sum() / total
            means.append(float(mean))
            # at least one grey level: a constant channel would otherwise be divided by zero (every input nan)
            stds.append(max(float(var.sqrt()), 1 / 255))
        return tuple(means), tuple(stds)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the train split's pixels in [0, 1] (for normalisation)."""
        return self._moments[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel (population) standard deviation of the train split's pixels in [0, 1] (at least 1/255)."""
        return self._moments[1]

    def __repr__(self) -> str:
        return (f"DatasetSplits({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
                f"image_shape={self.image_shape}, classes={self.num_classes})")


def class_indices(labels: torch.Tensor, num_classes: int | None = None) -> list[torch.Tensor]:
    """Indices of each class's examples, ascending (i.e. in original order).

    Entry ``c`` holds the positions ``i`` with ``labels[i] == c``; classes with
    no examples get an empty tensor. ``num_classes`` defaults to
    ``labels.max() + 1``.
    """
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"labels go up to {len(counts) - 1} but num_classes={num_classes}")
    return list(torch.split(order, counts.tolist()))


#: Label values at or above this are refused: the class count is the largest label + 1, and a stray 10**9
#: would size every per-class table (and the classifier's head) by it.
MAX_CLASSES = 100_000


def split_from_arrays(images: np.ndarray, labels: np.ndarray, *, what: str) -> Split:
    """A :class:`Split` from ``uint8`` images ``N×H×W×C`` (or ``N×H×W`` grayscale) and integer labels.

    ``what`` names the source in error messages. Raises :class:`LazyAppsError`
    for wrong dtypes, shapes or lengths.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise LazyAppsError(f"{what}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:  # grayscale N×H×W
        images = images[..., None]
    if images.ndim != 4:
        raise LazyAppsError(f"{what}: images must be N×H×W×C or N×H×W, got shape {images.shape}")
    if images.shape[1] in (1, 3, 4) and images.shape[3] > 4:
        # torch's N×C×H×W read as N×H×W×C would train on C×H "images" with W channels, silently
        raise LazyAppsError(f"{what}: images of shape {images.shape} look channels-first (N×C×H×W); store them "
                            f"N×H×W×C, e.g. x.transpose(0, 2, 3, 1)")
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise LazyAppsError(f"{what}: labels must be a 1-D integer array, got {labels.dtype} with shape {labels.shape}")
    if len(images) != len(labels):
        raise LazyAppsError(f"{what}: {len(images)} images but {len(labels)} labels")
    if len(labels) and labels.min() < 0:
        raise LazyAppsError(f"{what}: labels must be >= 0, found {labels.min()}")
    if len(labels) and int(labels.max()) >= MAX_CLASSES:  # (also what int64 cannot hold: uint64 labels >= 2**63)
        raise LazyAppsError(f"{what}: labels must number the classes 0..C-1 (at most {MAX_CLASSES:,} classes), "
                            f"found label {int(labels.max())}")
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if not chw.flags.writeable:  # e.g. np.frombuffer over file bytes: torch needs its own memory
        chw = chw.copy()
    return Split(torch.from_numpy(chw), torch.from_numpy(labels.astype(np.int64)))
