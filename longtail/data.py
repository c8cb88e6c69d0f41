"""CIFAR-LT: long-tailed CIFAR-10/100 training sets with a small balanced validation set.

A long-tailed training set keeps n_c = int(n_max · (1/imbalance)^(c/(C−1)))
images of class c (c = 0 … C−1), so class 0 has n_max images and class C−1
has n_max/imbalance (Cui et al., CVPR 2019; Cao et al., NeurIPS 2019).

Two split rules pick *which* images:

``first`` (default, as Jamal et al.'s code, CVPR 2020)
    per class, in original file order, the first ``val_per_class`` images form
    the balanced validation set that the meta-reweighting methods use, and the
    next n_c images the training set. Deterministic without a seed, and exact on
    the CIFAR-10 subset in the shared data folder for every imbalance ≥ 10.
``ldam``
    Cao et al.'s IMBALANCECIFAR draws the first n_c images of a seeded random
    permutation of each class (``np.random`` seeded once, classes in order). Here
    the first ``val_per_class`` images of that permutation are held out for
    validation first, then the next n_c train. Needs the full datasets.

The test set is the dataset's full (balanced) test set, or its first
``test_per_class`` images per class in file order when that is set (the smoke
and quick presets use it to keep evaluation cheap).
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from lazyapps.errors import DataNotFoundError, LazyAppsError, UnknownNameError

SPLIT_RULES = ("first", "ldam")

#: The largest class of the long-tailed training set (Jamal et al.'s code):
#: 5000 − 10 images per class, the 10 held out for validation.
N_MAX = {"cifar10": 4990, "cifar100": 490}
#: Training images of the full CIFAR-10 and CIFAR-100 (fewer: a subset, such as the shared data's CIFAR-10).
FULL_TRAIN_IMAGES = 50_000


def check_imbalance(imbalance: float) -> None:
    """:class:`LazyAppsError` unless ``imbalance`` (largest / smallest class size) is a finite number >= 1."""
    if not (math.isfinite(imbalance) and imbalance >= 1):
        raise LazyAppsError(f"--imbalance must be a finite number >= 1 (largest / smallest class size), got {imbalance}")


def longtail_counts(num_classes: int, imbalance: float, n_max: int) -> list[int]:
    """Training images per class: n_c = int(n_max · (1/imbalance)^(c/(C−1))).

    ``imbalance`` is the ratio of the largest to the smallest class (≥ 1).
    """
    check_imbalance(imbalance)
    if n_max < 1:
        raise LazyAppsError(f"n_max (images of the largest class) must be >= 1, got {n_max}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / imbalance) ** (c / (num_classes - 1))) for c in range(num_classes)]


def split_indices(
    labels: torch.Tensor,
    counts: list[int],
    *,
    val_per_class: int = 10,
    rule: str = "first",
    seed: int = 0,
    class_names: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, val_indices)`` into ``labels`` for the per-class ``counts``.

    See the module docstring for the two rules. Indices come out grouped by
    class (class 0 first), each class in file order for ``first`` and in
    permutation order for ``ldam``. A class with fewer than
    ``val_per_class + counts[c]`` images is a :class:`LazyAppsError`.
    """
    if rule not in SPLIT_RULES:
        from lazyapps.errors import UnknownNameError

        raise UnknownNameError("split rule", rule, SPLIT_RULES)
    if val_per_class < 0:
        raise LazyAppsError(f"--val-per-class must be >= 0, got {val_per_class}")
    labels_np = labels.cpu().numpy()
    rng = np.random.RandomState(seed) if rule == "ldam" else None
    train, val = [], []
    for c, n_c in enumerate(counts):
        idx = np.flatnonzero(labels_np == c)
        if rng is not None:
            rng.shuffle(idx)
        if len(idx) < val_per_class + n_c:
            name = f"{c} ({class_names[c]})" if class_names else str(c)
            # Only the remedies that can meet this class's need: class 0 keeps n_max whatever the imbalance, and
            # fewer training images help only where validation leaves at least one (every class trains on >= 1).
            fewer = len(idx) - val_per_class >= 1
            fixes = (["a larger --imbalance"] if c > 0 and fewer else []) + (["fewer --val-per-class"] if val_per_class else [])
            fixes += (["a smaller --n-max"] if fewer else []) + ["a dataset with more images of the class"]
            raise LazyAppsError(
                f"class {name} has {len(idx)} training images but the split needs {val_per_class} for validation "
                f"+ {n_c} for training; use {' or '.join([', '.join(fixes[:-1]), fixes[-1]] if len(fixes) > 1 else fixes)}")
        val.append(idx[:val_per_class])
        train.append(idx[val_per_class:val_per_class + n_c])
    return torch.from_numpy(np.concatenate(train)).long(), torch.from_numpy(np.concatenate(val)).long()


def _first_per_class(labels: torch.Tensor, per_class: int, num_classes: int) -> torch.Tensor:
    labels_np = labels.cpu().numpy()
    picked = [np.flatnonzero(labels_np == c)[:per_class] for c in range(num_classes)]
    return torch.from_numpy(np.sort(np.concatenate(picked))).long()


@dataclass(eq=False)
class CIFARLongTail:
    """A long-tailed training set, a balanced validation set and the test set, as uint8 tensors.

    ``train_images``/``val_images``/``test_images`` are ``uint8`` N×C×H×W;
    ``train_index``/``val_index`` are the positions in the dataset's train split
    (file order); ``counts`` the training images per class; ``mean``/``std`` the
    per-channel statistics of the dataset's whole train split, for normalisation.
    """

    dataset: str
    imbalance: float
    rule: str
    classes: list[str]
    counts: list[int]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    train_index: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    val_index: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # How the split was cut, so a trainer can record (and --resume / eval rebuild) exactly these data.
    n_max: int = 0
    val_per_class: int = 10
    test_per_class: int | None = None
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def digest(self) -> str:
        """A hash of the training, validation and test images and labels, which checkpoints record: data rewritten
        since a run (an ``npz:`` bundle, files in the data root) are then told from the run's, even at equal class
        sizes and pixel statistics."""
        from lazyapps.cache import content_digest

        return content_digest((self.train_images, self.train_labels, self.val_images, self.val_labels,
                               self.test_images, self.test_labels))

    @classmethod
    def load(
        cls,
        dataset: str = "cifar100",
        *,
        imbalance: float = 100.0,
        root: str | os.PathLike | None = None,
        rule: str = "first",
        val_per_class: int = 10,
        n_max: int | None = None,
        test_per_class: int | None = None,
        seed: int = 0,
    ) -> CIFARLongTail:
        """Load ``dataset`` (``cifar10``, ``cifar100`` or ``npz:PATH``) and cut the long-tailed split.

        ``n_max`` defaults to 4990 (CIFAR-10) / 490 (CIFAR-100), or for an array
        bundle to the smallest class size minus ``val_per_class``; ``seed`` only
        matters for ``rule="ldam"``.
        """
        from lazyapps.data import anchored_name, load_dataset

        check_imbalance(imbalance)
        try:
            data = load_dataset(dataset, root=root)
        except UnknownNameError as exc:  # (not offering Omniglot, which is refused below: its test classes are unseen)
            raise UnknownNameError(exc.kind, exc.name, [name for name in exc.valid if name != "omniglot"]) from None
        except DataNotFoundError as exc:
            if dataset != "cifar100":
                raise
            raise DataNotFoundError(
                "CIFAR-100 is not in the data root and could not be downloaded; to get it, run once online "
                "(torchvision downloads it) or put the official cifar-100-python/ folder (train, test, meta) "
                "in --data-dir / $LAZYAPPS_DATA; or train on CIFAR-10-LT with --dataset cifar10 "
                f"[{str(exc).split(';')[0]}]") from None
        num_classes = len(data.classes)
        unseen = sorted(set(data.test.labels.unique().tolist()) - set(data.train.labels.unique().tolist()))
        if unseen:  # (Omniglot: its test split is the evaluation alphabets)
            raise LazyAppsError(f"{dataset}'s test split holds {len(unseen)} classes with no training image "
                                f"({data.classes[unseen[0]]}, ...): a classifier trained on it would score chance on "
                                f"them by construction" + ("; Omniglot is for lazyapps fewshot" if "omniglot" in dataset else ""))
        if rule == "ldam" and dataset in N_MAX and len(data.train.labels) < FULL_TRAIN_IMAGES:
            # The permutation is seeded as Cao et al.'s, but over other images: a split of its own, not theirs.
            warnings.warn(f"--split ldam on a {len(data.train.labels)}-image subset of {dataset}'s "
                          f"{FULL_TRAIN_IMAGES} training images is not Cao et al.'s split (that needs the full dataset)",
                          stacklevel=2)
        if n_max is None:
            if dataset in N_MAX:
                n_max = N_MAX[dataset]
            else:
                smallest = int(torch.bincount(data.train.labels, minlength=num_classes).min())
                n_max = smallest - val_per_class
        counts = longtail_counts(num_classes, imbalance, n_max)
        if min(counts) < 1:
            raise LazyAppsError(f"imbalance {imbalance} with n_max={n_max} leaves class {counts.index(min(counts))} "
                                f"without training images (counts {counts}); use a larger --n-max or a smaller --imbalance")
        train_idx, val_idx = split_indices(data.train.labels, counts, val_per_class=val_per_class, rule=rule,
                                           seed=seed, class_names=list(data.classes))
        test = data.test
        if test_per_class is not None and test_per_class < 1:
            raise LazyAppsError(f"test_per_class must be >= 1 (None for the whole test set), got {test_per_class}")
        if test_per_class is not None:
            keep = _first_per_class(test.labels, test_per_class, num_classes)
            test = test.subset(keep)
        return cls(
            dataset=anchored_name(dataset), imbalance=float(imbalance), rule=rule, classes=list(data.classes), counts=counts,
            train_images=data.train.images[train_idx], train_labels=data.train.labels[train_idx], train_index=train_idx,
            val_images=data.train.images[val_idx], val_labels=data.train.labels[val_idx], val_index=val_idx,
            test_images=test.images, test_labels=test.labels,
            mean=tuple(data.mean), std=tuple(data.std),
            n_max=int(n_max), val_per_class=int(val_per_class), test_per_class=test_per_class, seed=int(seed),
        )

    def describe(self) -> str:
        """One line with the class counts (printed before training)."""
        return (f"{self.dataset}-LT imbalance {self.imbalance:g} ({self.rule} split): {len(self.train_labels)} train images, "
                f"per class {self.counts}; {len(self.val_labels)} validation, {len(self.test_labels)} test")
