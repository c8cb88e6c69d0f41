"""The data layer: named image datasets as uint8 tensors in original file order.

    >>> from lazyapps.data import load_dataset
    >>> data = load_dataset("mnist")                 # root: --data-dir > $LAZYAPPS_DATA > ~/.cache/lazyapps/data
    >>> data.train.images.shape, data.train.labels[:3], data.classes[:3]
    (torch.Size([60000, 1, 28, 28]), tensor([5, 0, 4]), ['0', '1', '2'])
    >>> x = data.train.floats()                      # float32 in [0, 1]
    >>> data.mean, data.std                          # per channel, train split

Datasets (``available_datasets()``), each with train/test splits and class names:

==============  =====================================================================
``mnist``       IDX files ``MNIST/raw/*-idx?-ubyte[.gz]`` (:mod:`.mnist`)
``cifar10``     ``cifar-10-batches-py/`` pickles or ``cifar10/*.npz`` (:mod:`.cifar`)
``cifar100``    ``cifar-100-python/`` pickles (fine labels) or ``cifar100/*.npz``
``omniglot``    ``omniglot-py/images_{background,evaluation}.zip`` (:mod:`.omniglot`);
                options ``image_size=28``, ``resample="lanczos"``
``digits``      scikit-learn's 8×8 digits, first 1,437 train / last 360 test (:mod:`.digits`)
``npz:PATH``    any array bundle (:mod:`.bundle`); a relative PATH is tried as given,
                then under the data root
==============  =====================================================================

Missing files are downloaded with torchvision unless ``download=False``;
when that is off or fails, :class:`~lazyapps.errors.DataNotFoundError` names
every path searched and the fix. Loads are memoised in-process (the last
few), so repeated calls are free; the returned tensors are shared, treat them
as read-only.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataNotFoundError, LazyAppsError, UnknownNameError
from ..paths import data_root
from .bundle import load_bundle
from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .download import download as _download
from .mnist import load_mnist
from .omniglot import load_omniglot
from .sources import FilesMissing
from .splits import DatasetSplits, Split, class_indices

__all__ = [
    "DatasetSplits", "Split", "anchored_name", "class_indices", "load_dataset", "available_datasets", "clear_memory_cache",
]

# name -> (reader, its options with defaults, can torchvision download it)
_DATASETS: dict[str, tuple[Callable[..., DatasetSplits], dict[str, Any], bool]] = {
    "mnist": (load_mnist, {}, True),
    "cifar10": (load_cifar10, {}, True),
    "cifar100": (load_cifar100, {}, True),
    "omniglot": (load_omniglot, {"image_size": 28, "resample": "lanczos"}, True),
    "digits": (load_digits, {}, False),
}
BUNDLE_PREFIX = "npz:"
_MEMORY: OrderedDict[tuple, DatasetSplits] = OrderedDict()
MEMORY_SLOTS = 4


def available_datasets() -> list[str]:
    """The named datasets (besides ``npz:PATH``, which loads any array bundle)."""
    return sorted(_DATASETS)


def anchored_name(name: str) -> str:
    """``name`` as a run should record it: an ``npz:`` bundle found from the working directory gets its absolute
    path, so a checkpoint naming it loads from any directory (a path under the data root stays relative to it)."""
    if name.startswith(BUNDLE_PREFIX):
        path = Path(name[len(BUNDLE_PREFIX):]).expanduser()
        if path.is_file():
            return BUNDLE_PREFIX + str(path.resolve())
    return name


def clear_memory_cache() -> None:
    """Forget the in-process copies of loaded datasets (the next load reads the files again)."""
    _MEMORY.clear()


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    download: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    **options: Any,
) -> DatasetSplits:
    """Load dataset ``name`` (see the module docstring) with its train and test splits.

    ``root`` is the data root (default ``$LAZYAPPS_DATA``, then
    ``~/.cache/lazyapps/data``); ``cache_dir`` the cache root for decoded data
    (Omniglot). ``download=None`` or ``True`` fetches missing files with
    torchvision; ``False`` never touches the network. ``options`` are the
    dataset's own (e.g. ``image_size`` for Omniglot); unknown ones are an error.

    Raises :class:`UnknownNameError` for an unknown name or option,
    :class:`DataNotFoundError` when the files are missing and cannot be
    downloaded, :class:`LazyAppsError` for unreadable or malformed files.
    """
    base = data_root(root)
    if name.startswith(BUNDLE_PREFIX):
        if options:
            raise LazyAppsError(f"npz datasets take no options, got {', '.join(options)}")
        path = _bundle_path(name[len(BUNDLE_PREFIX):], base)
        stat = path.stat()
        key = (name, str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        return _remember(key, lambda: load_bundle(path, name))
    if name not in _DATASETS:
        raise UnknownNameError("dataset", name, [*_DATASETS, BUNDLE_PREFIX + "PATH"])
    reader, defaults, downloadable = _DATASETS[name]
    for option in options:
        if option not in defaults:
            raise UnknownNameError(f"option of dataset {name}", option, defaults)
    settings = {**defaults, **options}
    key = (name, str(base.resolve()), tuple(sorted(settings.items())))
    return _remember(key, lambda: _read_or_download(name, reader, base, settings, download, downloadable, cache_dir))


def _remember(key: tuple, load: Callable[[], DatasetSplits]) -> DatasetSplits:
    try:
        hash(key)
    except TypeError:  # unhashable option value: nothing to memoise by
        return load()
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    data = load()
    _MEMORY[key] = data
    while len(_MEMORY) > MEMORY_SLOTS:
        _MEMORY.popitem(last=False)
    return data


def _read_or_download(name, reader, base: Path, settings, download, downloadable, cache_dir) -> DatasetSplits:
    try:
        return reader(base, cache_dir=cache_dir, **settings)
    except FilesMissing as missing:
        searched = missing.searched
    if download is False:
        raise DataNotFoundError(_not_found(name, searched, "downloading is off (download=False)"))
    try:
        _download(name, base)
    except Exception as exc:  # any failure (offline, read-only root, bad archive) ends the same way
        raise DataNotFoundError(_not_found(name, searched, f"downloading it with torchvision failed ({type(exc).__name__}: {_one_line(exc)})")) from None
    try:
        return reader(base, cache_dir=cache_dir, **settings)
    except FilesMissing as missing:
        raise DataNotFoundError(_not_found(name, missing.searched, "torchvision's download did not produce these files")) from None


def _not_found(name: str, searched: list[str], why: str) -> str:
    return (f"dataset {name!r} not found; searched: {', '.join(searched)}; {why}. "
            f"Fix: pass --data-dir DIR (or set LAZYAPPS_DATA=DIR) to a folder that holds it, "
            f"or run online with downloads allowed so torchvision fetches it into the data root")


def _bundle_path(text: str, base: Path) -> Path:
    if not text:
        raise LazyAppsError("npz dataset needs a path: npz:PATH")
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [path, base / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    folders = [c for c in candidates if c.is_dir()]
    if folders:
        raise LazyAppsError(f"array bundle {BUNDLE_PREFIX}{text}: {folders[0]} is a folder, not a .npz file. "
                            f"Fix: give the path of the .npz inside it")
    raise DataNotFoundError(f"array bundle for dataset {BUNDLE_PREFIX}{text} not found; searched: {', '.join(str(c) for c in candidates)}. "
                            f"Fix: give the path of an existing .npz with keys x_train, y_train, x_test, y_test")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
