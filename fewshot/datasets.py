"""Few-shot benchmarks as task sources: Omniglot, sine waves, CIFAR-FS, and image folders.

* ``omniglot`` — the protocol of Finn et al., "Model-Agnostic Meta-Learning",
  ICML 2017 (after Vinyals et al. 2016 and Santoro et al. 2016): 28×28 images;
  the 1,623 characters (background + evaluation sets) are permuted with a
  fixed seed (1) and the first 1,200 are the meta-training classes, the other
  423 the meta-test classes; every meta-training character rotated by 0, 90,
  180 and 270 degrees is a class of its own (4,800 classes). Meta-test
  characters are not rotated. (Finn et al.'s own shuffle used Python's
  ``random`` over a directory listing, which cannot be reproduced exactly; the
  split sizes and rotations are theirs.)
* ``omniglot-lake`` — the background/evaluation split of Lake et al. (Science
  2015): the 964 background characters (×4 rotations) meta-train, the 659
  evaluation characters meta-test.
* ``sine`` — Finn et al.'s regression tasks: y = A·sin(x − φ), A ~ U[0.1, 5],
  φ ~ U[0, π], x ~ U[−5, 5]; K support and Q query points; MSE.
* ``cifar-fs`` — Bertinetto et al., "Meta-learning with differentiable
  closed-form solvers", ICLR 2019: CIFAR-100's 100 classes split 64/16/20
  (train/val/test) by their class-name lists, all 600 images per class
  (CIFAR-100's train and test files together), 32×32.
* ``miniimagenet``, ``tieredimagenet`` (Vinyals et al. 2016 / Ravi & Larochelle
  2017; Ren et al. 2018) and ``folder:PATH`` — a user's folder, see
  :func:`load_image_folder`, resized to 84×84.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lazyapps.errors import DataNotFoundError, LazyAppsError, UnknownNameError

from .tasks import EpisodeSampler, TaskBatch, fixed_task_batches

SPLITS = ("train", "val", "test")
FOLDER_PREFIX = "folder:"

#: Bertinetto et al.'s CIFAR-FS validation and test classes (CIFAR-100 fine label names); train = the other 64.
CIFAR_FS_VAL = ("otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly", "beaver",
                "beetle", "tractor", "flatfish", "maple_tree", "camel", "crab", "sea", "cattle")
CIFAR_FS_TEST = ("baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy",
                 "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm")

OMNIGLOT_TRAIN_CHARACTERS = 1200  # Finn et al. / Vinyals et al.
OMNIGLOT_SPLIT_SEED = 1


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a benchmark."""

    problem: str  # "classification" or "regression"
    in_channels: int
    image_size: int | None
    arch: str  # the standard architecture for it


INFO = {
    "omniglot": DatasetInfo("classification", 1, 28, "conv4"),
    "omniglot-lake": DatasetInfo("classification", 1, 28, "conv4"),
    "sine": DatasetInfo("regression", 1, None, "sine_mlp"),
    "cifar-fs": DatasetInfo("classification", 3, 32, "conv4"),
    "miniimagenet": DatasetInfo("classification", 3, 84, "conv4"),
    "tieredimagenet": DatasetInfo("classification", 3, 84, "conv4"),
}


def available() -> list[str]:
    return sorted(INFO) + [FOLDER_PREFIX + "PATH"]


def dataset_info(name: str) -> DatasetInfo:
    """The problem type, image shape and standard architecture of benchmark ``name``."""
    if name.startswith(FOLDER_PREFIX):
        return DatasetInfo("classification", 3, 84, "conv4")
    if name not in INFO:
        raise UnknownNameError("few-shot dataset", name, available())
    return INFO[name]


def resolved_name(name: str) -> str:
    """``name`` with the path of a ``folder:PATH`` made absolute (``~`` expanded, links resolved); others as given.

    Checkpoints record this form, so a run can be evaluated from any working folder, and two spellings of one
    folder (relative from different folders, or absolute) compare equal.
    """
    if not name.startswith(FOLDER_PREFIX):
        return name
    return FOLDER_PREFIX + str(Path(name[len(FOLDER_PREFIX):]).expanduser().resolve())


# -- sine waves ---------------------------------------------------------------------
class SineTasks:
    """Sinusoid regression tasks of Finn et al. (2017): y = A·sin(x − φ).

    ``shots`` support and ``queries`` query points per task, each x drawn from
    ``x_range``; A from ``amplitude``, φ from ``phase``. Tensors are
    ``(T, K, 1)``. ``sample(..., return_params=True)`` also gives (A, φ).
    """

    problem = "regression"

    def __init__(self, *, shots: int, queries: int, seed: int = 0, device: str | torch.device = "cpu",
                 amplitude: tuple[float, float] = (0.1, 5.0), phase: tuple[float, float] = (0.0, math.pi),
                 x_range: tuple[float, float] = (-5.0, 5.0)) -> None:
        if shots < 1 or queries < 1:
            raise LazyAppsError(f"shots and queries must be >= 1, got shots={shots} queries={queries}")
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], gen: torch.Generator) -> Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(shape, generator=gen)

    def sample(self, num_tasks: int, *, generator: torch.Generator | None = None, return_params: bool = False):
        gen = self.generator if generator is None else generator
        amp = self._uniform((num_tasks, 1, 1), self.amplitude, gen)
        phase = self._uniform((num_tasks, 1, 1), self.phase, gen)
        x = self._uniform((num_tasks, self.shots + self.queries, 1), self.x_range, gen)
        y = amp * torch.sin(x - phase)
        k = self.shots
        batch = TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:]).to(self.device)
        return (batch, amp.flatten(), phase.flatten()) if return_params else batch

    def fixed_tasks(self, num_tasks: int, *, seed: int, batch_size: int = 25) -> list[TaskBatch]:
        """A fixed, seeded set of evaluation tasks (:func:`~fewshot.tasks.fixed_task_batches`)."""
        return fixed_task_batches(self, num_tasks, seed=seed, batch_size=batch_size)


# -- Omniglot -----------------------------------------------------------------------
def omniglot_character_split(data: Any, protocol: str = "finn") -> tuple[Tensor, Tensor]:
    """``(train_classes, test_classes)``: indices into ``data.classes`` of the meta-train and meta-test characters.

    ``finn``: a seeded permutation of all 1,623 characters, 1,200 / 423.
    ``lake``: background / evaluation characters.
    """
    num = len(data.classes)
    if protocol == "finn":
        perm = torch.randperm(num, generator=torch.Generator().manual_seed(OMNIGLOT_SPLIT_SEED))
        return perm[:OMNIGLOT_TRAIN_CHARACTERS].sort().values, perm[OMNIGLOT_TRAIN_CHARACTERS:].sort().values
    if protocol == "lake":
        sets = data.extra["class_set"]
        background = torch.tensor([i for i in range(num) if sets[i] == "background"])
        evaluation = torch.tensor([i for i in range(num) if sets[i] != "background"])
        return background, evaluation
    raise UnknownNameError("Omniglot protocol", protocol, ("finn", "lake"))


def rotate_class(class_id: int, images: Tensor) -> Tensor:
    """Images of rotated class ``class_id`` (= 4·character + r): rotated by r·90° counter-clockwise, as floats in [0, 1]."""
    return torch.rot90(images.float().div(255), k=class_id % 4, dims=(-2, -1))


def omniglot_sampler(data: Any, *, split: str, protocol: str = "finn", rotations: bool | None = None, **sampler: Any) -> EpisodeSampler:
    """An :class:`EpisodeSampler` over one split of Omniglot (``data`` from ``load_dataset("omniglot")``).

    ``rotations`` (default: on for ``train``, off otherwise) makes each
    character at 0/90/180/270 degrees four classes (labels 4·c + r).
    """
    if split == "val":
        raise LazyAppsError("Omniglot has no validation classes in this protocol; use split train or test")
    images = torch.cat([data.train.images, data.test.images])
    labels = torch.cat([data.train.labels, data.test.labels])
    train_chars, test_chars = omniglot_character_split(data, protocol)
    chars = train_chars if split == "train" else test_chars
    keep = torch.isin(labels, chars).nonzero().flatten()
    rotations = (split == "train") if rotations is None else rotations
    name = f"omniglot-{protocol} {split} split"
    if not rotations:
        return EpisodeSampler(images, labels[keep], index=keep, name=name, **sampler)
    index = keep.repeat(4)
    rot_labels = torch.cat([labels[keep] * 4 + r for r in range(4)])
    return EpisodeSampler(images, rot_labels, index=index, class_transform=rotate_class, name=name, **sampler)


# -- image folders and CIFAR-FS -----------------------------------------------------
def _read_class_list(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # the same images would become two classes of one task
        raise LazyAppsError(f"{path} lists {', '.join(map(repr, twice))} more than once; name each class once")
    return names


def _class_list(folder: Path, split: str) -> Path | None:
    return next((c for c in (folder / f"{split}.txt", folder / "splits" / f"{split}.txt") if c.is_file()), None)


def _split_classes(folder: Path, split: str) -> tuple[Path, list[str]]:
    """Where the class sub-folders of ``split`` are, and which classes belong to it (a class list wins)."""
    listed = _class_list(folder, split)
    if listed is not None:
        base = folder / "images" if (folder / "images").is_dir() else folder
        classes = _read_class_list(listed)
        for other in SPLITS:  # meta-test classes seen in meta-training would inflate every score
            other_list = _class_list(folder, other) if other != split else None
            shared = sorted(set(classes) & set(_read_class_list(other_list))) if other_list is not None else []
            if shared:
                raise LazyAppsError(f"{', '.join(map(repr, shared[:5]))} {'is' if len(shared) == 1 else 'are'} listed in both "
                                    f"{listed} and {other_list}; a class belongs to one split")
        return base, classes
    if (folder / split).is_dir():
        base = folder / split
        return base, sorted(p.name for p in base.iterdir() if p.is_dir())
    raise DataNotFoundError(
        f"{folder} has no {split} split: expected {folder / split}/<class>/<images> or a class list "
        f"{folder / (split + '.txt')} (or splits/{split}.txt) naming sub-folders of {folder} or {folder / 'images'}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image_folder(folder: str | os.PathLike, split: str, *, image_size: int = 84, cache_dir: str | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """``(images uint8 N×3×S×S, labels, class names)`` of one split of a folder dataset.

    Layouts: ``<folder>/<split>/<class>/<image files>``, or class sub-folders
    in ``<folder>`` (or ``<folder>/images``) with a class-name list per split in
    ``<folder>/<split>.txt`` or ``<folder>/splits/<split>.txt`` (one name per
    line). Images are converted to RGB and resized to ``image_size`` (bilinear,
    antialiased); decoded arrays are cached, keyed by the files' names, sizes
    and times and the image size.
    """
    from PIL import Image

    from lazyapps.cache import cached

    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder of class folders" if folder.exists() else "does not exist"
        raise DataNotFoundError(f"few-shot image folder {folder} {what}; it holds train/ val/ test/ folders of class "
                                f"folders, or class folders (optionally under images/) with train.txt, val.txt and "
                                f"test.txt class lists (docs/fewshot.md)")
    base, classes = _split_classes(folder, split)
    files: list[tuple[int, Path]] = []
    for c, name in enumerate(classes):
        cdir = base / name
        if not cdir.is_dir():
            raise DataNotFoundError(f"class {name!r} of the {split} split has no folder {cdir}")
        files += [(c, p) for p in sorted(cdir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {base} for split {split}")
    stamp = [(str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns) for _, p in files]
    settings = {"folder": str(folder.resolve()), "split": split, "image_size": image_size, "files": stamp}

    def build() -> dict[str, Tensor]:
        arrays = []
        for _, path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            except OSError as exc:  # (PIL's UnidentifiedImageError too)
                raise LazyAppsError(f"{path} is not a readable image ({exc.__class__.__name__}); remove or replace it") from None
            arrays.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3))
        return {"images": torch.stack(arrays).permute(0, 3, 1, 2).contiguous(), "labels": torch.tensor([c for c, _ in files])}

    state, _ = cached("fewshot-folder", folder.name or "folder", settings, build, root=cache_dir)
    return state["images"], state["labels"], classes


def cifar_fs_split(root: str | None, split: str, *, cache_dir: str | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """``(images, labels, class names)`` of a CIFAR-FS split from CIFAR-100 (``lazyapps.data.load_dataset("cifar100")``).

    CIFAR-100 resolves as for every other command: from the data root, else downloaded by torchvision when online.
    """
    from lazyapps.data import load_dataset

    data = load_dataset("cifar100", root=root, cache_dir=cache_dir)
    names = list(data.classes)
    missing = [c for c in CIFAR_FS_VAL + CIFAR_FS_TEST if c not in names]
    if missing:
        raise LazyAppsError(f"CIFAR-100 class names lack {', '.join(missing)}; the files are not CIFAR-100")
    wanted = {"val": list(CIFAR_FS_VAL), "test": list(CIFAR_FS_TEST),
              "train": [c for c in names if c not in CIFAR_FS_VAL + CIFAR_FS_TEST]}[split]
    ids = torch.tensor([names.index(c) for c in wanted])
    images = torch.cat([data.train.images, data.test.images])
    labels = torch.cat([data.train.labels, data.test.labels])
    keep = torch.isin(labels, ids).nonzero().flatten()
    return images[keep], labels[keep], wanted


# -- one entry point ----------------------------------------------------------------
def task_source(
    name: str,
    *,
    split: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    shuffle_classes: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> EpisodeSampler | SineTasks:
    """The tasks of benchmark ``name`` for ``split`` (see the module docstring for the protocols)."""
    if split not in SPLITS:
        raise UnknownNameError("split", split, SPLITS)
    info = dataset_info(name)
    if name == "sine":
        return SineTasks(shots=shots, queries=queries, seed=seed, device=device)
    sampler: dict[str, Any] = {"ways": ways, "shots": shots, "queries": queries, "shuffle_classes": shuffle_classes,
                               "seed": seed, "device": device}
    if name.startswith("omniglot"):
        from lazyapps.data import load_dataset

        data = load_dataset("omniglot", root=root, cache_dir=cache_dir, image_size=info.image_size)
        return omniglot_sampler(data, split=split, protocol="lake" if name == "omniglot-lake" else "finn", **sampler)
    if name == "cifar-fs":
        images, labels, _ = cifar_fs_split(root, split, cache_dir=cache_dir)
    else:
        from lazyapps.paths import data_root

        folder = Path(name[len(FOLDER_PREFIX):]) if name.startswith(FOLDER_PREFIX) else data_root(root) / name
        images, labels, _ = load_image_folder(folder, split, image_size=info.image_size or 84, cache_dir=cache_dir)
    return EpisodeSampler(images, labels, name=f"{name} {split} split", **sampler)

