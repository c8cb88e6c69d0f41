"""Omniglot (Lake, Salakhutdinov, Tenenbaum, Science 2015), read straight from its zips.

Sources, per set (``background``, ``evaluation``): ``<root>/omniglot-py/images_<set>.zip``
(read with :mod:`zipfile`, never extracted, no md5 check — re-zipped copies
are fine), else the extracted folder ``<root>/omniglot-py/images_<set>/``.
Inside: ``<Alphabet>/characterNN/<id>_<drawer>.png``, 105×105 1-bit, black
strokes on white.

What you get:

* train split = the background set (964 characters of 30 alphabets), test
  split = the evaluation set (659 characters of 20 alphabets), as in Lake et
  al.; 20 drawings per character. Few-shot code re-splits characters itself
  (e.g. 1,200/423 as in Vinyals et al. and Finn et al.) using the labels.
* One class per character, 1,623 in all: background characters then
  evaluation characters, each sorted by (alphabet, character folder); class
  names are ``"<Alphabet>/characterNN"``. Train labels are 0..963, test labels
  964..1622 (indices into the shared class list). Within a character, images
  are in drawer order.
* Pixels: ink = 255 on a background of 0 — the PNG is converted to 8-bit,
  resized to ``image_size`` (default 28, as in Finn et al. 2017) with the
  ``resample`` filter (default Lanczos, antialiased), then inverted, which is
  what Finn et al.'s pipeline feeds the network (``1 - image``). Note that
  their resize script passed Lanczos to a 1-bit image, which Pillow resizes
  with nearest neighbour; ``resample="nearest"`` reproduces that.
* ``extra``: ``class_alphabet``, ``class_character``, ``class_set``
  (``"background"``/``"evaluation"``), ``class_id`` (the official 1..1623
  character number from the file names) — lists with one entry per class;
  ``train_drawer``, ``test_drawer`` — int64 tensors with each image's drawer
  (1..20).

Decoding 32,460 PNGs takes seconds, so the decoded arrays are cached under
the cache root (``<cache>/data/omniglot-…``), keyed by ``image_size``,
``resample`` and what the sources hold: for a zip its listing of names, sizes
and CRC-32s (so a copied or touched zip keeps its cache), for an extracted
folder its file names and newest modification time.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..cache import cached
from ..errors import LazyAppsError
from ..progress import progress, status
from .sources import FilesMissing
from .splits import DatasetSplits, Split

SETS = ("background", "evaluation")
NATIVE_SIZE = 105
RESAMPLE_FILTERS = ("lanczos", "bilinear", "bicubic", "box", "nearest")
FORMAT_VERSION = 1

# (alphabet, character folder, png file name) plus a function that returns the png's bytes.
_Entry = tuple[str, str, str, Callable[[], bytes]]


class _Source:
    """One Omniglot set, as a zip or an extracted folder."""

    def __init__(self, set_name: str, path: Path):
        self.set_name, self.path = set_name, path
        self.is_zip = path.is_file()

    def fingerprint(self) -> dict[str, object]:
        if self.is_zip:
            # The zip's own directory (each file's name, size and CRC-32) says what it holds without reading the
            # images: a copied or touched zip keeps its decoded cache, a changed one does not.
            try:
                with zipfile.ZipFile(self.path) as archive:
                    listing = sorted(f"{i.filename} {i.file_size} {i.CRC}" for i in archive.infolist())
            except (OSError, zipfile.BadZipFile) as exc:
                raise LazyAppsError(f"cannot open Omniglot zip {self.path} ({exc}); it is corrupt, delete it and download it again") from None
            return {"zip": self.path.name, "size": self.path.stat().st_size, "contents": hash_names(listing)}
        names, newest = [], 0
        for folder, _, files in os.walk(self.path):
            for name in files:
                if name.endswith(".png"):
                    full = os.path.join(folder, name)
                    names.append(os.path.relpath(full, self.path))
                    newest = max(newest, os.stat(full).st_mtime_ns)
        return {"folder": self.path.name, "files": len(names), "names": hash_names(sorted(names)), "mtime_ns": newest}

    def entries(self) -> tuple[list[_Entry], Callable[[], None]]:
        """Every png as an entry, and a function that closes what was opened."""
        entries: list[_Entry] = []
        if self.is_zip:
            try:
                archive = zipfile.ZipFile(self.path)
            except (OSError, zipfile.BadZipFile) as exc:
                raise LazyAppsError(f"cannot open Omniglot zip {self.path} ({exc}); it is corrupt, delete it and download it again") from None
            for name in archive.namelist():
                parts = name.split("/")
                if name.endswith(".png") and len(parts) >= 3:
                    entries.append((parts[-3], parts[-2], parts[-1], lambda name=name: archive.read(name)))
            return entries, archive.close
        for png in self.path.glob("*/*/*.png"):
            entries.append((png.parent.parent.name, png.parent.name, png.name, png.read_bytes))
        return entries, lambda: None


def hash_names(names: list[str]) -> str:
    """A short hash of a list of file names (detects added, removed or renamed images)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _find_sources(root: Path) -> list[_Source]:
    folder = root / "omniglot-py"
    sources, missing = [], []
    for set_name in SETS:
        archive, extracted = folder / f"images_{set_name}.zip", folder / f"images_{set_name}"
        if archive.is_file():
            sources.append(_Source(set_name, archive))
        elif extracted.is_dir() and any(extracted.iterdir()):
            sources.append(_Source(set_name, extracted))
        else:
            missing += [str(archive), str(extracted) + "/"]
    if missing:
        raise FilesMissing(missing)
    return sources


def _parse_name(file_name: str, where: str) -> tuple[int, int]:
    """``"0709_01.png"`` -> (character id 709, drawer 1)."""
    stem = file_name.rsplit(".", 1)[0]
    try:
        character_id, drawer = stem.split("_")
        return int(character_id), int(drawer)
    except ValueError:
        raise LazyAppsError(f"Omniglot file {where}/{file_name} is not named <id>_<drawer>.png") from None


def _decode(sources: list[_Source], image_size: int, resample: str) -> dict[str, object]:
    from PIL import Image

    filters = {"lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX, "nearest": Image.NEAREST}
    class_alphabet, class_character, class_set, class_id = [], [], [], []
    images, labels, drawers = [], [], []
    counts = {}
    for source in sources:
        entries, close = source.entries()
        try:
            by_class: dict[tuple[str, str], list[tuple[str, Callable[[], bytes]]]] = {}
            for alphabet, character, file_name, read in entries:
                by_class.setdefault((alphabet, character), []).append((file_name, read))
            if not by_class:
                raise LazyAppsError(f"Omniglot source {source.path} holds no <Alphabet>/<character>/*.png images")
            total = sum(len(v) for v in by_class.values())
            status(f"decoding {total} Omniglot {source.set_name} images from {source.path} (cached after the first time)")
            bar = progress(total=total, desc=f"omniglot {source.set_name}")
            for alphabet, character in sorted(by_class):
                files = sorted(by_class[(alphabet, character)])
                label = len(class_alphabet)
                ids = set()
                for file_name, read in files:
                    character_number, drawer = _parse_name(file_name, f"{source.path}/{alphabet}/{character}")
                    ids.add(character_number)
                    picture = Image.open(io.BytesIO(read())).convert("L")
                    if picture.size != (image_size, image_size):
                        picture = picture.resize((image_size, image_size), resample=filters[resample])
                    images.append(255 - np.asarray(picture, dtype=np.uint8))  # ink = 255
                    labels.append(label)
                    drawers.append(drawer)
                    bar.update()
                if len(ids) != 1:
                    raise LazyAppsError(f"Omniglot character {source.path}/{alphabet}/{character} mixes character ids {sorted(ids)}")
                class_alphabet.append(alphabet)
                class_character.append(character)
                class_set.append(source.set_name)
                class_id.append(ids.pop())
            bar.close()
            counts[source.set_name] = total
        finally:
            close()
    return {
        "images": torch.from_numpy(np.stack(images)[:, None]),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "drawers": torch.tensor(drawers, dtype=torch.int64),
        "num_train": counts[SETS[0]],
        "class_alphabet": class_alphabet,
        "class_character": class_character,
        "class_set": class_set,
        "class_id": class_id,
    }


def load_omniglot(root: Path, *, cache_dir: str | os.PathLike | None = None, image_size: int = 28, resample: str = "lanczos", **_: object) -> DatasetSplits:
    """Omniglot from ``root`` at ``image_size``×``image_size`` (cached decode). Raises :class:`FilesMissing` when absent."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise LazyAppsError(f"omniglot image_size must be a positive integer, got {image_size!r}")
    if resample not in RESAMPLE_FILTERS:
        raise LazyAppsError(f"omniglot resample must be one of {', '.join(RESAMPLE_FILTERS)}, got {resample!r}")
    sources = _find_sources(root)
    # No resize happens at the native size, so the filter is irrelevant there.
    settings = {
        "dataset": "omniglot",
        "format": FORMAT_VERSION,
        "image_size": image_size,
        "resample": resample if image_size != NATIVE_SIZE else None,
        "sources": {s.set_name: s.fingerprint() for s in sources},
    }
    state, _ = cached("data", f"omniglot-{image_size}px", settings, lambda: _decode(sources, image_size, resample), root=cache_dir)
    n = int(state["num_train"])
    images, labels, drawers = state["images"], state["labels"], state["drawers"]
    extra = {key: list(state[key]) for key in ("class_alphabet", "class_character", "class_set", "class_id")}
    extra["train_drawer"], extra["test_drawer"] = drawers[:n], drawers[n:]
    classes = [f"{a}/{c}" for a, c in zip(extra["class_alphabet"], extra["class_character"])]
    return DatasetSplits("omniglot", Split(images[:n], labels[:n]), Split(images[n:], labels[n:]), classes, extra,
                         source=", ".join(str(s.path) for s in sources))
