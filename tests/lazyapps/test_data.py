"""The data layer: real MNIST / CIFAR-10 subset / Omniglot / digits, official-format files, array bundles, errors."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import lazyapps.data as data_module
from lazyapps.data import DatasetSplits, Split, available_datasets, class_indices, clear_memory_cache, load_dataset
from lazyapps.errors import DataNotFoundError, LazyAppsError, UnknownNameError

# Known MNIST class counts (LeCun et al.'s files).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(*chunks: bytes) -> str:
    digest = hashlib.md5()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- real data

def test_mnist_matches_the_original_files(data_root):
    mnist = load_dataset("mnist", root=data_root, download=False)
    assert mnist.train.images.shape == (60000, 1, 28, 28) and mnist.test.images.shape == (10000, 1, 28, 28)
    assert mnist.train.images.dtype == torch.uint8 and mnist.train.labels.dtype == torch.int64
    assert torch.bincount(mnist.train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test.labels).tolist() == MNIST_TEST_COUNTS
    assert mnist.train.labels[0] == 5 and mnist.test.labels[0] == 7
    assert mnist.classes == [str(d) for d in range(10)] and mnist.num_classes == 10
    assert mnist.channels == 1 and mnist.image_size == 28
    assert mnist.source == str(data_root / "MNIST" / "raw")
    # The md5s of the decompressed IDX files (published with MNIST, quoted in the data README),
    # recomputed from header + our tensors: every byte is in place, in file order.
    assert md5(struct.pack(">iiii", 2051, 60000, 28, 28), mnist.train.images.numpy().tobytes()) == "6bbc9ace898e44ae57da46a324031adb"
    assert md5(struct.pack(">ii", 2049, 60000), mnist.train.labels.to(torch.uint8).numpy().tobytes()) == "a25bea736e30d166cdddb491f175f624"
    assert md5(struct.pack(">iiii", 2051, 10000, 28, 28), mnist.test.images.numpy().tobytes()) == "2646ac647ad5339dbf082846283269ea"
    # The normalisation constants everybody uses for MNIST.
    assert mnist.mean[0] == pytest.approx(0.1307, abs=1e-4) and mnist.std[0] == pytest.approx(0.3081, abs=1e-4)
    # Memoised: the second call returns the same object without reading the files.
    assert load_dataset("mnist", root=data_root, download=False) is mnist


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_files_uncompressed_and_original_names(tmp_path):
    rng = np.random.default_rng(3)
    raw = tmp_path / "MNIST" / "raw"
    train = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", train)
    _write_idx(raw / "train-labels.idx1-ubyte", np.array([3, 1, 4, 1, 5]))  # the name used on LeCun's site
    _write_idx(raw / "t10k-images-idx3-ubyte", train[:2])
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([9, 2]))
    tiny = load_dataset("mnist", root=tmp_path, download=False)
    assert torch.equal(tiny.train.images[:, 0], torch.from_numpy(train)) and tiny.train.labels.tolist() == [3, 1, 4, 1, 5]
    assert tiny.test.labels.tolist() == [9, 2]

    clear_memory_cache()
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(LazyAppsError, match="truncated"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_cifar10_subset_bundle(data_root):
    cifar = load_dataset("cifar10", root=data_root, download=False)
    assert cifar.train.images.shape == (26203, 3, 32, 32) and cifar.test.images.shape == (10000, 3, 32, 32)
    assert cifar.train.images.dtype == torch.uint8 and cifar.train.images.is_contiguous()
    assert torch.bincount(cifar.train.labels).tolist() == [5000, 3874, 3002, 2327] + [2000] * 6
    assert torch.bincount(cifar.test.labels).tolist() == [1000] * 10
    assert cifar.classes == CIFAR10_CLASSES and cifar.source == str(data_root / "cifar10" / "cifar10_subset.npz")
    index = cifar.extra["train_index"]
    assert len(index) == 26203 and bool((index[1:] > index[:-1]).all()) and int(index.max()) < 50000
    # The README's md5 of the bundle's x_train bytes (N×H×W×C): NCHW is the exact transpose.
    assert md5(cifar.train.images.permute(0, 2, 3, 1).contiguous().numpy().tobytes()) == "a675fc1c0812cb47938dc5c98cea73c7"
    assert md5(cifar.test.labels.numpy().tobytes()) == "c44956f095ec277e22e363b9b413ac99"


def test_digits_split_and_scaling():
    from sklearn.datasets import load_digits

    digits = load_dataset("digits")
    reference = load_digits()
    assert digits.train.images.shape == (1437, 1, 8, 8) and digits.test.images.shape == (360, 1, 8, 8)
    assert digits.classes == [str(d) for d in range(10)]
    # First 1,437 train, last 360 test, 0..16 scaled to 0..255.
    assert torch.equal(digits.test.labels, torch.from_numpy(reference.target[1437:]).long())
    expected = np.rint(reference.images[1437:] * 255 / 16).astype(np.uint8)
    assert torch.equal(digits.test.images[:, 0], torch.from_numpy(expected))
    assert int(digits.train.images.max()) == 255 and int(digits.train.images.min()) == 0
    assert torch.bincount(digits.test.labels).min() >= 30  # every class in the test part


# --------------------------------------------------------------------------- Omniglot

def test_omniglot_from_the_real_zips(data_root, session_cache, monkeypatch):
    omniglot = load_dataset("omniglot", root=data_root, download=False, cache_dir=session_cache)
    assert omniglot.train.images.shape == (19280, 1, 28, 28) and omniglot.test.images.shape == (13180, 1, 28, 28)
    assert omniglot.num_classes == 1623 and omniglot.image_size == 28
    extra = omniglot.extra
    assert extra["class_set"].count("background") == 964 and extra["class_set"].count("evaluation") == 659
    # Background characters first, then evaluation; 20 drawers each, in drawer order.
    assert set(omniglot.train.labels.tolist()) == set(range(964))
    assert set(omniglot.test.labels.tolist()) == set(range(964, 1623))
    assert torch.bincount(omniglot.train.labels).tolist() == [20] * 964
    assert torch.bincount(omniglot.test.labels, minlength=1623)[964:].tolist() == [20] * 659
    assert omniglot.extra["train_drawer"][:20].tolist() == list(range(1, 21))
    assert sorted(extra["class_id"]) == list(range(1, 1624))
    assert len(set(extra["class_alphabet"][:964])) == 30 and len(set(extra["class_alphabet"][964:])) == 20
    # Identity: class 0 is the first character of the first alphabet, file 0709_01.png.
    assert omniglot.classes[0] == "Alphabet_of_the_Magi/character01" and extra["class_id"][0] == 709
    assert omniglot.classes == [f"{a}/{c}" for a, c in zip(extra["class_alphabet"], extra["class_character"])]
    # Pixel check against the PNG itself: ink (black) becomes 255.
    with zipfile.ZipFile(data_root / "omniglot-py" / "images_evaluation.zip") as archive:
        name = f"images_evaluation/{extra['class_alphabet'][964]}/{extra['class_character'][964]}/"
        png = sorted(n for n in archive.namelist() if n.startswith(name) and n.endswith(".png"))[3]
        picture = Image.open(io.BytesIO(archive.read(png))).convert("L").resize((28, 28), Image.LANCZOS)
    assert torch.equal(omniglot.test.images[3, 0], torch.from_numpy(255 - np.asarray(picture)))
    assert omniglot.mean[0] < 0.2  # mostly background (0), little ink

    # The second load reads the decoded cache, never the PNGs.
    clear_memory_cache()
    monkeypatch.setattr(data_module.omniglot, "_decode", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    again = load_dataset("omniglot", root=data_root, download=False, cache_dir=session_cache)
    assert again is not omniglot and torch.equal(again.test.images, omniglot.test.images)
    assert again.extra["class_id"] == extra["class_id"]


def _extract_small_omniglot(data_root: Path, target: Path, characters_per_set: int = 2) -> None:
    """Copies the first characters of each real zip into an extracted-folder layout."""
    for set_name in ("background", "evaluation"):
        with zipfile.ZipFile(data_root / "omniglot-py" / f"images_{set_name}.zip") as archive:
            pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
            chosen = sorted({tuple(n.split("/")[1:3]) for n in pngs})[:characters_per_set]
            for name in pngs:
                if tuple(name.split("/")[1:3]) in chosen:
                    out = target / "omniglot-py" / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(archive.read(name))


def test_a_copied_or_touched_omniglot_zip_keeps_its_decoded_cache_and_a_changed_one_does_not(data_root, tmp_path, cache_dir,
                                                                                               monkeypatch):
    from lazyapps import data as data_module

    extracted = tmp_path / "extracted"
    _extract_small_omniglot(data_root, extracted)

    def zip_sets(root, swap=False):  # the small sets as zips, as Omniglot ships; swap: two drawings change places
        for set_name in ("background", "evaluation"):
            folder = extracted / "omniglot-py" / f"images_{set_name}"
            pngs = sorted(folder.glob("*/*/*.png"))
            contents = [png.read_bytes() for png in pngs]
            if swap and set_name == "background":
                contents[0], contents[1] = contents[1], contents[0]
            (root / "omniglot-py").mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(root / "omniglot-py" / f"images_{set_name}.zip", "w") as archive:
                for png, content in zip(pngs, contents):
                    archive.writestr(f"images_{set_name}/{png.relative_to(folder)}", content)

    zip_sets(tmp_path / "a")
    first = load_dataset("omniglot", root=tmp_path / "a", download=False, cache_dir=cache_dir)
    clear_memory_cache()
    zip_sets(tmp_path / "b")  # the same contents, written again: new modification times
    real_decode = data_module.omniglot._decode
    monkeypatch.setattr(data_module.omniglot, "_decode", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    copied = load_dataset("omniglot", root=tmp_path / "b", download=False, cache_dir=cache_dir)
    assert torch.equal(copied.train.images, first.train.images)
    clear_memory_cache()
    zip_sets(tmp_path / "b", swap=True)
    decoded = []
    monkeypatch.setattr(data_module.omniglot, "_decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    changed = load_dataset("omniglot", root=tmp_path / "b", download=False, cache_dir=cache_dir)
    assert decoded and torch.equal(changed.train.images[0], first.train.images[1])


def test_omniglot_extracted_folders_and_image_size(data_root, tmp_path, cache_dir):
    _extract_small_omniglot(data_root, tmp_path)
    native = load_dataset("omniglot", root=tmp_path, download=False, cache_dir=cache_dir, image_size=105)
    assert native.train.images.shape == (40, 1, 105, 105) and native.test.images.shape == (40, 1, 105, 105)
    assert native.classes == ["Alphabet_of_the_Magi/character01", "Alphabet_of_the_Magi/character02",
                              "Angelic/character01", "Angelic/character02"]
    # At the native size the image is exactly the inverted 1-bit PNG.
    first = sorted((tmp_path / "omniglot-py" / "images_background" / "Alphabet_of_the_Magi" / "character01").glob("*.png"))[0]
    ink = ~np.asarray(Image.open(first), dtype=bool)
    assert torch.equal(native.train.images[0, 0], torch.from_numpy(ink.astype(np.uint8) * 255))

    small = load_dataset("omniglot", root=tmp_path, download=False, cache_dir=cache_dir, image_size=20, resample="bilinear")
    assert small.image_size == 20 and small.train.images.shape == (40, 1, 20, 20)
    reference = Image.open(first).convert("L").resize((20, 20), Image.BILINEAR)
    assert torch.equal(small.train.images[0, 0], torch.from_numpy(255 - np.asarray(reference)))
    assert len(list((cache_dir / "data").glob("omniglot-*.pt"))) == 2  # one cache file per setting

    # A changed folder (one more drawing) is noticed: the cache key covers the file list.
    clear_memory_cache()
    extra_png = first.with_name("0709_21.png")
    extra_png.write_bytes(first.read_bytes())
    grown = load_dataset("omniglot", root=tmp_path, download=False, cache_dir=cache_dir, image_size=20, resample="bilinear")
    assert len(grown.train) == 41 and grown.extra["train_drawer"][20] == 21
    assert grown.extra["test_drawer"].tolist() == list(range(1, 21)) * 2  # the test part starts after the 41 train rows

    with pytest.raises(LazyAppsError, match="image_size"):
        load_dataset("omniglot", root=tmp_path, download=False, cache_dir=cache_dir, image_size=0)


# --------------------------------------------------------------------------- official CIFAR pickles

def _cifar_rows(images_hwc: np.ndarray) -> np.ndarray:
    """The official row layout: the R, G, B 32×32 planes one after another, row-major."""
    return images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), 3072)


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)  # the protocol of the original Python 2 files


def test_cifar100_official_pickles(tmp_path):
    rng = np.random.default_rng(0)
    train_hwc = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    test_hwc = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "cifar-100-python"
    fine_names = [f"fine{i}" for i in range(100)]
    for name, images, fine in (("train", train_hwc, [0, 99, 5, 5, 42, 1]), ("test", test_hwc, [3, 2, 1, 0])):
        _dump(folder / name, {b"data": _cifar_rows(images), b"fine_labels": fine, b"coarse_labels": [f % 20 for f in fine],
                              b"filenames": [f"img{i}.png".encode() for i in range(len(fine))], b"batch_label": name.encode()})
    _dump(folder / "meta", {b"fine_label_names": [n.encode() for n in fine_names],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})

    cifar = load_dataset("cifar100", root=tmp_path, download=False)
    assert cifar.classes == fine_names and cifar.extra["coarse_classes"][7] == "coarse7"
    assert cifar.train.images.shape == (6, 3, 32, 32) and cifar.train.labels.tolist() == [0, 99, 5, 5, 42, 1]
    assert cifar.extra["train_coarse"].tolist() == [0, 19, 5, 5, 2, 1] and cifar.extra["test_coarse"].tolist() == [3, 2, 1, 0]
    assert cifar.extra["train_index"].tolist() == list(range(6))  # one original position per train row
    # Pixel (row y, column x, channel c) of the HWC source must land at [c, y, x].
    for n, y, x, c in ((0, 0, 0, 0), (1, 0, 1, 0), (2, 1, 0, 1), (5, 31, 17, 2), (3, 7, 30, 1)):
        assert cifar.train.images[n, c, y, x] == train_hwc[n, y, x, c]
    assert torch.equal(cifar.test.images, torch.from_numpy(test_hwc).permute(0, 3, 1, 2))


class _RunsCode:
    """Pickles as a call to os.system: what a malicious data file would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar10_official_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    batches, labels = [], []
    for i in range(1, 6):
        images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        batch_labels = [(2 * i) % 10, (2 * i + 1) % 10]
        # str keys: what Python 2 pickles become when read with encoding="latin1".
        _dump(folder / f"data_batch_{i}", {"data": _cifar_rows(images), "labels": batch_labels, "batch_label": f"batch {i}"})
        batches.append(images)
        labels += batch_labels
    test_images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _dump(folder / "test_batch", {"data": _cifar_rows(test_images), "labels": [9, 8, 7]})
    _dump(folder / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_vis": 3072})

    cifar = load_dataset("cifar10", root=tmp_path, download=False)
    assert cifar.classes == CIFAR10_CLASSES
    assert cifar.train.labels.tolist() == labels  # batches 1..5 in order
    assert torch.equal(cifar.train.images, torch.from_numpy(np.concatenate(batches)).permute(0, 3, 1, 2))
    assert cifar.test.labels.tolist() == [9, 8, 7] and cifar.extra["train_index"].tolist() == list(range(10))

    # A pickle that would run code is refused, and the code never runs.
    marker = tmp_path / "pwned"
    _dump(folder / "test_batch", {"data": _RunsCode(f"touch {marker}"), "labels": [9, 8, 7]})
    clear_memory_cache()
    with pytest.raises(LazyAppsError, match="not allowed"):
        load_dataset("cifar10", root=tmp_path, download=False)
    assert not marker.exists()


# --------------------------------------------------------------------------- array bundles

def test_npz_bundle_round_trip_rgb_and_grayscale(tmp_path):
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)  # non-square on purpose
    x_test = rng.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    path = tmp_path / "bundle.npz"
    np.savez(path, x_train=x_train, y_train=np.array([0, 1, 2, 0, 1, 2, 2]), x_test=x_test, y_test=np.array([2, 1, 0], dtype=np.int32),
             classes=np.array(["a", "b", "c"]), train_index=np.arange(10, 17))
    rgb = load_dataset(f"npz:{path}")
    assert rgb.name == f"npz:{path}" and rgb.classes == ["a", "b", "c"]
    assert rgb.image_shape == (3, 5, 6) and rgb.image_size == (5, 6) and rgb.channels == 3
    assert torch.equal(rgb.train.images, torch.from_numpy(x_train).permute(0, 3, 1, 2))
    assert rgb.test.labels.dtype == torch.int64 and rgb.test.labels.tolist() == [2, 1, 0]
    assert rgb.extra["train_index"].tolist() == list(range(10, 17))
    # Per-channel mean/std equal a direct float computation.
    floats = rgb.train.images.double() / 255
    assert rgb.mean == pytest.approx(floats.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert rgb.std == pytest.approx(floats.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)

    gray = tmp_path / "sub" / "gray.npz"
    gray.parent.mkdir()
    g_train = rng.integers(0, 256, (4, 9, 9), dtype=np.uint8)
    np.savez_compressed(gray, x_train=g_train, y_train=np.array([3, 0, 3, 1]), x_test=g_train[:2], y_test=np.array([1, 3]))
    gray_data = load_dataset("npz:sub/gray.npz", root=tmp_path)  # relative: found under the data root
    assert gray_data.image_shape == (1, 9, 9) and gray_data.image_size == 9
    assert gray_data.classes == ["0", "1", "2", "3"]
    assert torch.equal(gray_data.train.images[:, 0], torch.from_numpy(g_train))

    # Rewriting the file is noticed by the in-memory cache.
    np.savez(path, x_train=x_train[:2], y_train=np.array([0, 1]), x_test=x_test, y_test=np.array([2, 1, 0]))
    os.utime(path, ns=(1, 1))
    assert len(load_dataset(f"npz:{path}").train) == 2


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.zeros(2, int)}, "lacks key\\(s\\) x_test, y_test"),
        ({"x_train": np.zeros((2, 4, 4), np.float32), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.zeros(1, int)}, "uint8"),
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.zeros(3, int), "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.zeros(1, int)}, "2 images but 3 labels"),
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.zeros(2), "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.zeros(1, int)}, "integer"),
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 5, 4), np.uint8), "y_test": np.zeros(1, int)}, "test images"),
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.array([0, 1]), "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.array([-1])}, "labels must be >= 0, found -1"),
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.array([0, 5]), "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.zeros(1, int), "classes": np.array(["a", "b"])}, "labels go up to 5"),
        # a stray huge label sized every per-class table by it (the process was killed for memory)
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.array([0, 10**9]), "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.zeros(1, int)}, "at most 100,000 classes.*found label 1000000000"),
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.array([0, 2**63 + 5], np.uint64), "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.zeros(1, int)}, "at most 100,000 classes"),
        ({"x_train": np.zeros((0, 4, 4), np.uint8), "y_train": np.zeros(0, int), "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.zeros(1, int)}, "the train split holds no images"),
        ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.zeros(2, int), "x_test": np.zeros((0, 4, 4), np.uint8), "y_test": np.zeros(0, int)}, "the test split holds no images"),
        # torch's layout stored as is: refused rather than trained as 3-row images with 32 channels
        ({"x_train": np.zeros((2, 3, 32, 32), np.uint8), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 3, 32, 32), np.uint8), "y_test": np.zeros(1, int)}, r"shape \(2, 3, 32, 32\) look channels-first.*x.transpose\(0, 2, 3, 1\)"),
        ({"x_train": np.zeros((2, 1, 28, 28), np.uint8), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 1, 28, 28), np.uint8), "y_test": np.zeros(1, int)}, "look channels-first"),
    ],
)
def test_npz_bundle_validation(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(LazyAppsError, match=message):
        load_dataset(f"npz:{path}")


def test_npz_missing_file_and_not_a_bundle(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("npz:nowhere/x.npz", root=tmp_path)
    assert str(tmp_path / "nowhere" / "x.npz") in str(info.value)
    with pytest.raises(LazyAppsError, match=f"npz:{tmp_path}: {tmp_path} is a folder, not a .npz file"):
        load_dataset(f"npz:{tmp_path}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(LazyAppsError, match="cannot be read"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_named_dataset_from_bundle_folder(tmp_path):
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "tiny.npz", x_train=np.full((2, 28, 28), 7, np.uint8), y_train=np.array([1, 2]),
             x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.array([0]))
    tiny = load_dataset("mnist", root=tmp_path, download=False)
    assert tiny.train.images.shape == (2, 1, 28, 28) and int(tiny.train.images[1, 0, 5, 5]) == 7


# --------------------------------------------------------------------------- errors and downloads

@pytest.mark.parametrize("name, expected_paths", [
    ("mnist", ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte", "mnist/*.npz"]),
    ("cifar10", ["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch", "cifar10/*.npz"]),
    ("cifar100", ["cifar-100-python/train", "cifar-100-python/meta", "cifar100/*.npz"]),
    ("omniglot", ["omniglot-py/images_background.zip", "omniglot-py/images_evaluation"]),
])
def test_missing_data_message(tmp_path, name, expected_paths):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, root=tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message and repr(name) in message
    for path in expected_paths:
        assert str(tmp_path / path) in message
    assert "--data-dir" in message and "LAZYAPPS_DATA" in message and "online" in message
    assert list(tmp_path.iterdir()) == []  # download=False writes nothing


def test_download_failure_and_success(tmp_path, monkeypatch):
    def offline(name, root):
        raise OSError("[Errno 101] Network is unreachable\nmore detail")

    monkeypatch.setattr(data_module, "_download", offline)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar100", root=tmp_path)
    assert "Network is unreachable more detail" in str(info.value) and "\n" not in str(info.value)
    assert str(tmp_path / "cifar-100-python" / "train") in str(info.value)

    calls = []

    def fake_download(name, root):  # stands in for torchvision: puts the files where the reader looks
        calls.append(name)
        (root / "cifar100").mkdir(parents=True)
        np.savez(root / "cifar100" / "c.npz", x_train=np.zeros((1, 32, 32, 3), np.uint8), y_train=np.array([4]),
                 x_test=np.zeros((1, 32, 32, 3), np.uint8), y_test=np.array([0]))

    monkeypatch.setattr(data_module, "_download", fake_download)
    fetched = load_dataset("cifar100", root=tmp_path)
    assert calls == ["cifar100"] and fetched.train.labels.tolist() == [4]


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    for name in ["mnist", "cifar10", "cifar100", "omniglot", "digits", "npz:PATH"]:
        assert name in message
    assert available_datasets() == ["cifar10", "cifar100", "digits", "mnist", "omniglot"]
    with pytest.raises(UnknownNameError, match="image_size"):
        load_dataset("omniglot", size=28)
    with pytest.raises(UnknownNameError):
        load_dataset("mnist", image_size=28)


# --------------------------------------------------------------------------- helpers

def test_class_indices_match_a_plain_loop():
    labels = torch.tensor([2, 0, 2, 3, 0, 0, 3, 2])
    indices = class_indices(labels, num_classes=5)
    expected = [[i for i, label in enumerate(labels.tolist()) if label == c] for c in range(5)]
    assert [idx.tolist() for idx in indices] == expected
    assert [idx.tolist() for idx in class_indices(labels)] == expected[:4]
    with pytest.raises(ValueError):
        class_indices(labels, num_classes=3)
    # each class's positions ascending (file order) also where an unstable sort would reorder ties
    labels = torch.tensor([2, 1, 0, 2, 0, 1, 1, 0, 2, 2, 1, 0, 0, 2, 1, 0, 2, 1, 1, 0])
    assert [idx.tolist() for idx in class_indices(labels)] == [
        [i for i, label in enumerate(labels.tolist()) if label == c] for c in range(3)]


def test_split_is_a_dataset_for_dataloader():
    images = torch.arange(6 * 2 * 2, dtype=torch.uint8).reshape(6, 1, 2, 2) * 10
    split = Split(images, torch.tensor([0, 1, 0, 1, 1, 0]))
    batches = list(DataLoader(split, batch_size=4))
    assert batches[0][0].dtype == torch.float32 and batches[0][0].shape == (4, 1, 2, 2)
    assert torch.allclose(torch.cat([b[0] for b in batches]), images.float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), split.labels)
    sub = split.subset([5, 0])
    assert torch.equal(sub.images, images[[5, 0]]) and sub.labels.tolist() == [0, 0]
    assert float(split.floats().max()) == pytest.approx(230 / 255)
    with pytest.raises(ValueError):
        Split(images.float(), split.labels)
    splits = DatasetSplits("toy", split, sub, ["a", "b"])
    assert splits.num_classes == 2 and splits.image_size == 2 and splits.channels == 1


def test_a_constant_channel_is_normalised_by_one_grey_level_not_by_zero(tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, x_train=np.zeros((4, 4, 4), np.uint8), y_train=np.array([0, 1, 0, 1]),
             x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([0, 1]))
    data = load_dataset(f"npz:{path}")
    assert data.mean == (0.0,) and data.std == (1 / 255,)


def test_a_file_that_is_not_numpy_is_named_so_without_numpys_advice(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("just some text\n")
    with pytest.raises(LazyAppsError, match="cannot be read \\(not a numpy file\\)") as caught:
        load_dataset(f"npz:{path}")
    assert "allow_pickle" not in str(caught.value)


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    from lazyapps.data import download as download_module

    def half_way(root):  # as torchvision does: its folders first, then the network fails
        (root / "MNIST" / "raw").mkdir(parents=True)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setitem(download_module.DOWNLOADERS, "mnist", half_way)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("the user's")
    with pytest.raises(OSError):
        download_module.download("mnist", tmp_path / "new" / "root")
    with pytest.raises(OSError):
        download_module.download("mnist", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["mine", "mine/keep.txt"]


# --------------------------------------------------------------------------- audit: alignment, options, cache keys

def test_digits_train_images_and_labels_stay_aligned():
    from sklearn.datasets import load_digits

    digits, reference = load_dataset("digits"), load_digits()
    assert torch.equal(digits.train.labels, torch.from_numpy(reference.target[:1437]).long())
    expected = np.rint(reference.images[:1437] * 255 / 16).astype(np.uint8)
    assert torch.equal(digits.train.images[:, 0], torch.from_numpy(expected))


def test_bundle_class_names_cover_the_test_labels_too(tmp_path):
    path = tmp_path / "b.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.array([0, 1]),
             x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([1, 3]))  # class 3 only in the test split
    assert load_dataset(f"npz:{path}").classes == ["0", "1", "2", "3"]
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.array([0, 2]),
             x_test=np.zeros((1, 4, 4), np.uint8), y_test=np.array([0]), classes=np.array(["a", "b"]))
    os.utime(path, ns=(2, 2))
    with pytest.raises(LazyAppsError, match="labels go up to 2 but only 2 class names"):  # exactly one name short
        load_dataset(f"npz:{path}")


def test_mnist_labels_above_nine_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    images = np.zeros((2, 28, 28), np.uint8)
    for stem in ("train", "t10k"):
        _write_idx(raw / f"{stem}-images-idx3-ubyte", images)
        _write_idx(raw / f"{stem}-labels-idx1-ubyte", np.array([3, 10]))
    with pytest.raises(LazyAppsError, match="labels go up to 10"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_omniglot_test_drawers_nearest_filter_and_edited_pngs(data_root, tmp_path, cache_dir):
    _extract_small_omniglot(data_root, tmp_path)
    native = load_dataset("omniglot", root=tmp_path, download=False, cache_dir=cache_dir, image_size=105)
    # drawers line up with the test images too (20 per character, in drawer order)
    assert len(native.extra["test_drawer"]) == len(native.test) == 40
    assert native.extra["test_drawer"].tolist() == list(range(1, 21)) * 2
    folder = tmp_path / "omniglot-py" / "images_background" / "Alphabet_of_the_Magi" / "character01"
    first, second = sorted(folder.glob("*.png"))[:2]
    # resample="nearest" is Pillow's NEAREST (Finn et al.'s effective filter)
    near = load_dataset("omniglot", root=tmp_path, download=False, cache_dir=cache_dir, image_size=20, resample="nearest")
    reference = Image.open(first).convert("L").resize((20, 20), Image.NEAREST)
    assert torch.equal(near.train.images[0, 0], torch.from_numpy(255 - np.asarray(reference)))
    # another filter at the same size is decoded again, not taken from the nearest-neighbour cache
    box = load_dataset("omniglot", root=tmp_path, download=False, cache_dir=cache_dir, image_size=20, resample="box")
    reference = Image.open(first).convert("L").resize((20, 20), Image.BOX)
    assert torch.equal(box.train.images[0, 0], torch.from_numpy(255 - np.asarray(reference)))
    assert not torch.equal(box.train.images, near.train.images)
    # an edited drawing (same names, same count) is noticed through the modification time
    clear_memory_cache()
    first.write_bytes(second.read_bytes())
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    edited = load_dataset("omniglot", root=tmp_path, download=False, cache_dir=cache_dir, image_size=20, resample="nearest")
    assert torch.equal(edited.train.images[0], edited.train.images[1])
    assert not torch.equal(edited.train.images[0], near.train.images[0])


def test_download_restores_the_socket_timeout(tmp_path, monkeypatch):
    import socket

    from lazyapps.data import download as download_module

    seen = []
    monkeypatch.setitem(download_module.DOWNLOADERS, "mnist", lambda root: seen.append(socket.getdefaulttimeout()))
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(7.0)
        download_module.download("mnist", tmp_path)
        assert seen == [download_module.SOCKET_TIMEOUT_S] and socket.getdefaulttimeout() == 7.0
    finally:
        socket.setdefaulttimeout(previous)


def test_memory_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "MEMORY_SLOTS", 2)
    clear_memory_cache()
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.npz")
        np.savez(paths[-1], x_train=np.full((1, 2, 2), i, np.uint8), y_train=np.array([0]),
                 x_test=np.zeros((1, 2, 2), np.uint8), y_test=np.array([0]))
    a = load_dataset(f"npz:{paths[0]}")
    load_dataset(f"npz:{paths[1]}")
    assert load_dataset(f"npz:{paths[0]}") is a  # touched: now the most recent
    c = load_dataset(f"npz:{paths[2]}")  # evicts paths[1], the least recently used
    assert load_dataset(f"npz:{paths[2]}") is c and load_dataset(f"npz:{paths[0]}") is a
    clear_memory_cache()


# --------------------------------------------------------------------------- audit: refusals and edge cases of the readers

def test_split_floats_lands_on_the_device_asked_for():
    split = Split(torch.full((2, 1, 2, 2), 51, dtype=torch.uint8), torch.tensor([0, 1]))
    moved = split.floats("meta")  # a device without memory: the conversion must happen there, not on the CPU
    assert moved.device.type == "meta" and moved.dtype == torch.float32 and moved.shape == (2, 1, 2, 2)


def test_split_refuses_mismatched_lengths_and_labels_that_are_not_int64():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        Split(images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be int64"):
        Split(images, torch.tensor([0, 1, 2], dtype=torch.int32))


def test_labels_up_to_the_class_limit_pass_and_bool_labels_become_classes_0_and_1():
    from lazyapps.data.splits import MAX_CLASSES, split_from_arrays

    images = np.zeros((2, 2, 2), np.uint8)
    assert split_from_arrays(images, np.array([0, MAX_CLASSES - 1]), what="t").labels.tolist() == [0, MAX_CLASSES - 1]
    with pytest.raises(LazyAppsError, match=f"found label {MAX_CLASSES}"):  # label C means C + 1 classes
        split_from_arrays(images, np.array([0, MAX_CLASSES]), what="t")
    binary = split_from_arrays(images, np.array([True, False]), what="t")
    assert binary.labels.dtype == torch.int64 and binary.labels.tolist() == [1, 0]


def _png(pixels: np.ndarray) -> bytes:
    """An uncompressed PNG: its size depends on the image's shape only, not on its pixels."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
    return out.getvalue()


def _tiny_omniglot_zips(root: Path, drawings: dict[str, list[np.ndarray]], *, top_folder: bool = True) -> None:
    """One character per set, as Omniglot's zips; ``top_folder=False`` is a re-zip without ``images_<set>/``."""
    (root / "omniglot-py").mkdir(parents=True, exist_ok=True)
    for number, (set_name, pictures) in enumerate(drawings.items(), start=1):
        with zipfile.ZipFile(root / "omniglot-py" / f"images_{set_name}.zip", "w") as archive:
            for drawer, pixels in enumerate(pictures, start=1):
                name = f"Alpha{number}/character01/{number:04d}_{drawer:02d}.png"
                archive.writestr(f"images_{set_name}/{name}" if top_folder else name, _png(pixels))


def test_omniglot_zip_without_its_top_folder_loads(tmp_path, cache_dir):
    rng = np.random.default_rng(5)
    drawings = {s: [rng.integers(0, 256, (10, 10), dtype=np.uint8) for _ in range(2)] for s in ("background", "evaluation")}
    _tiny_omniglot_zips(tmp_path, drawings, top_folder=False)
    data = data_module.omniglot.load_omniglot(tmp_path, cache_dir=cache_dir, image_size=10)
    assert data.classes == ["Alpha1/character01", "Alpha2/character01"] and data.extra["class_id"] == [1, 2]
    assert torch.equal(data.train.images[1, 0], torch.from_numpy(255 - drawings["background"][1]))
    assert torch.equal(data.test.images[0, 0], torch.from_numpy(255 - drawings["evaluation"][0]))


def test_an_omniglot_zip_edited_to_the_same_sizes_is_decoded_again(tmp_path, cache_dir):
    """The zip's CRC-32s are in the cache key: an edit that keeps every name and size still reaches the data."""
    rng = np.random.default_rng(6)
    drawings = {s: [rng.integers(0, 256, (10, 10), dtype=np.uint8) for _ in range(2)] for s in ("background", "evaluation")}
    _tiny_omniglot_zips(tmp_path, drawings)
    zip_path = tmp_path / "omniglot-py" / "images_background.zip"
    size = zip_path.stat().st_size
    first = data_module.omniglot.load_omniglot(tmp_path, cache_dir=cache_dir, image_size=10)
    drawings["background"][0] = 255 - drawings["background"][0]
    _tiny_omniglot_zips(tmp_path, drawings)
    assert zip_path.stat().st_size == size  # same names, same sizes: only the contents differ
    edited = data_module.omniglot.load_omniglot(tmp_path, cache_dir=cache_dir, image_size=10)
    assert torch.equal(edited.train.images[0, 0], torch.from_numpy(255 - drawings["background"][0]))
    assert torch.equal(edited.train.images[0, 0], 255 - first.train.images[0, 0])


def test_omniglot_refuses_an_unknown_filter_and_a_character_of_two_ids(tmp_path, cache_dir):
    with pytest.raises(LazyAppsError, match="resample must be one of lanczos.*got 'cubic'"):
        data_module.omniglot.load_omniglot(tmp_path, cache_dir=cache_dir, image_size=20, resample="cubic")
    for set_name, names in (("background", ["0001_01.png", "0002_02.png"]), ("evaluation", ["0003_01.png"])):
        folder = tmp_path / "omniglot-py" / f"images_{set_name}" / "Alpha" / "character01"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(_png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(LazyAppsError, match=r"mixes character ids \[1, 2\]"):
        data_module.omniglot.load_omniglot(tmp_path, cache_dir=cache_dir, image_size=4)


def test_empty_omniglot_folders_count_as_missing(tmp_path):
    """A left-over empty folder (e.g. an extraction that failed) must not stop the download or the missing-data message."""
    for set_name in ("background", "evaluation"):
        (tmp_path / "omniglot-py" / f"images_{set_name}").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="images_background.zip"):
        load_dataset("omniglot", root=tmp_path, download=False)


def test_read_idx_decodes_big_endian_types_and_refuses_bad_headers(tmp_path):
    from lazyapps.data.mnist import read_idx

    values = np.array([[1, -2, 300]], dtype=">i2")
    path = tmp_path / "shorts-idx2"
    path.write_bytes(bytes([0, 0, 0x0B, 2]) + struct.pack(">ii", 1, 3) + values.tobytes())
    assert read_idx(path).tolist() == [[1, -2, 300]]
    path.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">i", 2) + b"\x00\x00")  # 0x07 is no IDX type
    with pytest.raises(LazyAppsError, match="not an IDX file"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">i", 2) + b"\x01\x02\x03")  # one byte more than promised
    with pytest.raises(LazyAppsError, match="has 11 bytes but its header promises 10"):
        read_idx(path)
    gz = tmp_path / "labels-idx1.gz"
    gz.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">i", 100) + bytes(100))[:30])  # cut short
    with pytest.raises(LazyAppsError, match="cannot read MNIST file"):
        read_idx(gz)


def test_mnist_images_and_labels_of_different_counts_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    for stem in ("train", "t10k"):
        _write_idx(raw / f"{stem}-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
        _write_idx(raw / f"{stem}-labels-idx1-ubyte", np.array([1, 2]))
    with pytest.raises(LazyAppsError, match=r"MNIST train files disagree: images \(3, 28, 28\), labels \(2,\)"):
        data_module.mnist.load_mnist(tmp_path)


@pytest.mark.parametrize("content, message", [
    ({"data": np.zeros((2, 3072), np.uint8)}, "lacks 'labels'"),
    ({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, r"data has shape \(2, 1024\), expected N×3072"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1, 2]}, r"2 images but \(3,\) labels"),
    ([np.zeros((2, 3072), np.uint8), [0, 1]], "does not hold a dict"),
    (b"\x80\x09 a pickle of a protocol from the future", "cannot read CIFAR file"),
])
def test_a_malformed_cifar_batch_is_named_in_one_line(tmp_path, content, message):
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", {"data": np.zeros((1, 3072), np.uint8), "labels": [i]})
    _dump(folder / "batches.meta", {"label_names": CIFAR10_CLASSES})
    if isinstance(content, bytes):
        (folder / "test_batch").write_bytes(content)
    else:
        _dump(folder / "test_batch", content)
    with pytest.raises(LazyAppsError, match=message) as info:
        data_module.cifar.load_cifar10(tmp_path)
    assert str(folder / "test_batch") in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- bundle refusals and extras, downloads, sources

def _bundle_arrays(**changes) -> dict:
    arrays = {"x_train": np.zeros((2, 4, 4, 3), np.uint8), "y_train": np.array([0, 1]),
              "x_test": np.zeros((1, 4, 4, 3), np.uint8), "y_test": np.array([1])}
    return {**arrays, **changes}


def test_a_bundle_whose_test_images_have_other_channels_is_refused(tmp_path):
    path = tmp_path / "b.npz"
    np.savez(path, **_bundle_arrays(x_test=np.zeros((1, 4, 4), np.uint8)))  # RGB train, grayscale test
    with pytest.raises(LazyAppsError, match=r"train images are \(3, 4, 4\) \(C×H×W\) but test images are \(1, 4, 4\)"):
        load_dataset(f"npz:{path}")


def test_a_single_array_or_an_object_array_is_refused_in_one_line(tmp_path):
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:  # np.save's .npy format under a .npz name
        np.save(handle, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(LazyAppsError, match="holds a single array, not a .npz with keys x_train, y_train, x_test, y_test"):
        load_dataset(f"npz:{single}")
    objects = tmp_path / "objects.npz"
    np.savez(objects, **_bundle_arrays(notes=np.array([{"a": 1}], dtype=object)))
    with pytest.raises(LazyAppsError, match="store plain numeric/string arrays") as caught:
        load_dataset(f"npz:{objects}")
    assert "\n" not in str(caught.value)


def test_a_bundles_other_arrays_land_in_extra_strings_as_lists(tmp_path):
    path = tmp_path / "b.npz"
    np.savez(path, **_bundle_arrays(classes=np.array(["cat", "dog"]), source_files=np.array(["a.png", "b.png"]),
                                    note=np.array("made by hand"), train_index=np.array([4, 9])))
    data = load_dataset(f"npz:{path}")
    assert data.classes == ["cat", "dog"]
    assert sorted(data.extra) == ["note", "source_files", "train_index"]  # (classes are not repeated there)
    assert data.extra["source_files"] == ["a.png", "b.png"] and data.extra["note"] == "made by hand"
    assert data.extra["train_index"].tolist() == [4, 9]


def test_download_calls_each_datasets_torchvision_class_with_download_on(tmp_path, monkeypatch):
    """Every name fetches its own dataset, all of it: Omniglot's background and evaluation halves both."""
    from lazyapps.data import download as download_module

    calls = []
    fake = types.ModuleType("torchvision.datasets")  # stands in for torchvision (and spares its import)
    for cls in ("MNIST", "CIFAR10", "CIFAR100", "Omniglot"):
        setattr(fake, cls, lambda root, cls=cls, **kw: calls.append((cls, root, kw)))
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    for name in ("mnist", "cifar10", "cifar100", "omniglot"):
        download_module.download(name, tmp_path)
    root = str(tmp_path)
    assert calls == [("MNIST", root, {"train": True, "download": True}), ("CIFAR10", root, {"train": True, "download": True}),
                     ("CIFAR100", root, {"train": True, "download": True}),
                     ("Omniglot", root, {"background": True, "download": True}),
                     ("Omniglot", root, {"background": False, "download": True})]


def test_a_failed_or_interrupted_download_keeps_what_it_did_not_make_and_its_own_error(tmp_path, monkeypatch):
    from lazyapps.data import download as download_module

    def part_file(root):  # a file half-written when the network fails: kept, and the network's error is the one raised
        (root / "MNIST" / "raw").mkdir(parents=True)
        (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setitem(download_module.DOWNLOADERS, "mnist", part_file)
    (tmp_path / "empty_but_mine").mkdir()  # the user's own empty folder in the data root stays
    with pytest.raises(OSError, match="Network is unreachable"):
        download_module.download("mnist", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "MNIST", "MNIST/raw", "MNIST/raw/train-images-idx3-ubyte.gz", "empty_but_mine"]

    def ctrl_c(root):
        (root / "cifar-10-batches-py").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setitem(download_module.DOWNLOADERS, "cifar10", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        download_module.download("cifar10", tmp_path / "new")
    assert not (tmp_path / "new").exists()  # Ctrl-C cleans up as a failure does


def test_a_dataset_folder_with_two_bundles_is_ambiguous_and_a_nested_one_is_not_seen(tmp_path):
    folder = tmp_path / "cifar10"
    (folder / "old").mkdir(parents=True)
    np.savez(folder / "old" / "backup.npz", **_bundle_arrays())
    with pytest.raises(DataNotFoundError):  # only the folder itself is searched
        load_dataset("cifar10", root=tmp_path, download=False)
    np.savez(folder / "a.npz", **_bundle_arrays())
    np.savez(folder / "b.npz", **_bundle_arrays())
    with pytest.raises(LazyAppsError, match=r"several array bundles in .*cifar10 \(.*a.npz, .*b.npz\); name one with --dataset npz:PATH"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_a_folder_named_like_a_data_file_is_passed_over(tmp_path):
    from lazyapps.data.sources import first_existing

    (tmp_path / "train-images-idx3-ubyte").mkdir()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert first_existing([tmp_path / "train-images-idx3-ubyte", tmp_path / "train-images-idx3-ubyte.gz"]) == (
        tmp_path / "train-images-idx3-ubyte.gz")
    assert first_existing([tmp_path / "train-images-idx3-ubyte"]) is None
