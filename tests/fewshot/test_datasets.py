"""Few-shot benchmarks: Omniglot protocols on the real data, sine tasks, CIFAR-FS and image folders on tiny files."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from fewshot.datasets import CIFAR_FS_TEST, CIFAR_FS_VAL, SineTasks, omniglot_character_split, omniglot_sampler, task_source
from lazyapps.data import load_dataset
from lazyapps.errors import DataNotFoundError, LazyAppsError, UnknownNameError


@pytest.fixture(scope="module")
def omniglot(data_root, session_cache):
    return load_dataset("omniglot", root=data_root, cache_dir=session_cache, image_size=28)


def test_finn_split_is_1200_rotated_training_characters_and_423_test_characters(omniglot) -> None:
    train_chars, test_chars = omniglot_character_split(omniglot, "finn")
    assert len(train_chars) == 1200 and len(test_chars) == 423
    assert set(train_chars.tolist()).isdisjoint(test_chars.tolist())
    assert set(train_chars.tolist()) | set(test_chars.tolist()) == set(range(1623))
    train = omniglot_sampler(omniglot, split="train", ways=5, shots=1, queries=1)
    test = omniglot_sampler(omniglot, split="test", ways=5, shots=1, queries=1)
    assert train.num_classes == 4800 and test.num_classes == 423
    lake_train = omniglot_sampler(omniglot, split="train", protocol="lake", ways=5, shots=1, queries=1)
    lake_test = omniglot_sampler(omniglot, split="test", protocol="lake", ways=5, shots=1, queries=1)
    assert lake_train.num_classes == 964 * 4 and lake_test.num_classes == 659


def test_rotated_classes_really_are_rotated(omniglot) -> None:
    sampler = omniglot_sampler(omniglot, split="train", ways=5, shots=1, queries=1)
    char = int(omniglot_character_split(omniglot, "finn")[0][0])
    members = (sampler.labels == 4 * char).nonzero().flatten()
    base = sampler._images(int((sampler.class_ids == 4 * char).nonzero()), members)
    for r in (1, 2, 3):
        cls = int((sampler.class_ids == 4 * char + r).nonzero())
        rotated = sampler._images(cls, (sampler.labels == 4 * char + r).nonzero().flatten())
        assert torch.equal(rotated, torch.rot90(base, k=r, dims=(-2, -1)))
        assert not torch.equal(rotated, base)
    raw = omniglot.train.images[omniglot.train.labels == char] if char < 964 else omniglot.test.images[omniglot.test.labels == char]
    assert torch.equal(base, raw.float() / 255)  # rotation 0 is the image itself


def test_sine_tasks_follow_finn_et_al() -> None:
    tasks = SineTasks(shots=5, queries=10, seed=0)
    batch, amp, phase = tasks.sample(4000, return_params=True)
    assert batch.support_x.shape == (4000, 5, 1) and batch.query_y.shape == (4000, 10, 1)
    assert 0.1 <= float(amp.min()) and float(amp.max()) <= 5.0 and abs(float(amp.mean()) - 2.55) < 0.08
    assert 0 <= float(phase.min()) and float(phase.max()) <= math.pi and abs(float(phase.mean()) - math.pi / 2) < 0.05
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert -5 <= float(x.min()) and float(x.max()) <= 5 and abs(float(x.mean())) < 0.05
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert torch.allclose(y, amp.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1)))
    again = SineTasks(shots=5, queries=10, seed=3).fixed_tasks(3, seed=1)[0]
    assert torch.equal(again.support_x, SineTasks(shots=5, queries=10, seed=4).fixed_tasks(3, seed=1)[0].support_x)


def _write_cifar100(root, per_class_train: int = 3, per_class_test: int = 2):
    names = sorted(list(CIFAR_FS_VAL + CIFAR_FS_TEST) + [f"filler{i:02d}" for i in range(64)])
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        fine = np.repeat(np.arange(100), n)
        data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        data[:, 0] = fine  # the first red pixel encodes the class
        with open(folder / split, "wb") as handle:
            pickle.dump({"data": data, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()}, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]}, handle)
    return names


def test_cifar_fs_splits_64_16_20_classes_with_train_and_test_images(tmp_path, cache_dir) -> None:
    names = _write_cifar100(tmp_path)
    sizes = {}
    for split, expect in (("train", 64), ("val", 16), ("test", 20)):
        sampler = task_source("cifar-fs", split=split, ways=5, shots=2, queries=3, root=tmp_path, cache_dir=cache_dir)
        sizes[split] = sampler.num_classes
        assert sampler.num_classes == expect
        batch = sampler.sample(2)
        assert batch.support_x.shape == (2, 10, 3, 32, 32)
        seen = {names[int(round(float(v) * 255))] for v in batch.support_x[..., 0, 0, 0].flatten()}
        allowed = {"val": set(CIFAR_FS_VAL), "test": set(CIFAR_FS_TEST)}.get(split, {n for n in names if n.startswith("filler")})
        assert seen <= allowed
    with pytest.raises(LazyAppsError, match="smallest class .* has 5"):  # 3 train + 2 test images per class
        task_source("cifar-fs", split="test", ways=5, shots=3, queries=3, root=tmp_path, cache_dir=cache_dir)


def test_cifar_fs_fetches_cifar100_as_every_dataset_does(tmp_path, cache_dir, monkeypatch) -> None:
    import lazyapps.data as data_module

    def offline(name, root):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data_module, "_download", offline)
    with pytest.raises(DataNotFoundError, match="dataset 'cifar100' not found; .*downloading it with torchvision failed"):
        task_source("cifar-fs", split="test", ways=5, shots=1, queries=1, root=tmp_path, cache_dir=cache_dir)
    fetched = []

    def fake_download(name, root):  # stands in for torchvision's download into the data root
        fetched.append(name)
        _write_cifar100(root)

    monkeypatch.setattr(data_module, "_download", fake_download)
    sampler = task_source("cifar-fs", split="test", ways=5, shots=1, queries=1, root=tmp_path, cache_dir=cache_dir)
    assert fetched == ["cifar100"] and sampler.num_classes == 20


def _write_folder(root, classes, per_class=4, size=10):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size + 3, 3), 10 * c + i, dtype=np.uint8)).save(root / name / f"{i}.png")


def test_folder_dataset_with_split_files_and_with_split_folders(tmp_path, cache_dir) -> None:
    flat = tmp_path / "mini"
    _write_folder(flat / "images", ["n01", "n02", "n03", "n04"])
    (flat / "train.txt").write_text("n01\nn02\nn03\n")
    (flat / "test.txt").write_text("n04\n")
    sampler = task_source(f"folder:{flat}", split="train", ways=3, shots=1, queries=2, cache_dir=cache_dir)
    assert sampler.num_classes == 3
    batch = sampler.sample(1)
    assert batch.support_x.shape == (1, 3, 3, 84, 84)
    values = sorted({int(round(float(v) * 255)) for v in batch.support_x[0, :, 0, 40, 40]})
    assert all(v // 10 in (0, 1, 2) for v in values)  # only the train classes
    with pytest.raises(DataNotFoundError, match="has no val split"):
        task_source(f"folder:{flat}", split="val", ways=1, shots=1, queries=1, cache_dir=cache_dir)

    nested = tmp_path / "tiered"
    _write_folder(nested / "test", ["a", "b"], per_class=3)
    sampler = task_source(f"folder:{nested}", split="test", ways=2, shots=1, queries=2, cache_dir=cache_dir)
    assert sampler.num_classes == 2
    with pytest.raises(LazyAppsError, match="--ways 3 is larger than the 2 classes"):
        task_source(f"folder:{nested}", split="test", ways=3, shots=1, queries=1, cache_dir=cache_dir)
    with pytest.raises(UnknownNameError, match="valid: .*cifar-fs"):
        task_source("omniglot2", split="test")


def test_miniimagenet_and_tieredimagenet_are_folders_under_the_data_root(tmp_path, cache_dir) -> None:
    _write_folder(tmp_path / "miniimagenet" / "val", ["n1", "n2", "n3"], per_class=3, size=20)
    sampler = task_source("miniimagenet", split="val", ways=3, shots=1, queries=2, root=tmp_path, cache_dir=cache_dir)
    batch = sampler.sample(2)
    assert sampler.num_classes == 3 and batch.support_x.shape == (2, 3, 3, 84, 84)
    with pytest.raises(DataNotFoundError, match="tieredimagenet does not exist; it holds train/ val/ test/ folders of class folders, or class folders"):
        task_source("tieredimagenet", split="train", ways=2, shots=1, queries=1, root=tmp_path, cache_dir=cache_dir)
    with pytest.raises(LazyAppsError, match="shots \\+ queries = 2 \\+ 2 = 4 .* has 3"):
        task_source("miniimagenet", split="val", ways=3, shots=2, queries=2, root=tmp_path, cache_dir=cache_dir)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataNotFoundError, match="afile is a file, not a folder of class folders"):
        task_source("folder:" + str(tmp_path / "afile"), split="train", ways=2, shots=1, queries=1, cache_dir=cache_dir)


def test_folder_dataset_refuses_repeated_or_shared_classes_and_unreadable_images(tmp_path, cache_dir) -> None:
    root = tmp_path / "mini"
    _write_folder(root / "images", ["n01", "n02", "n03"])
    (root / "train.txt").write_text("n01\nn02\nn01\n")
    with pytest.raises(LazyAppsError, match="train.txt lists 'n01' more than once; name each class once"):
        task_source(f"folder:{root}", split="train", ways=2, shots=1, queries=1, cache_dir=cache_dir)
    (root / "train.txt").write_text("n01\nn02\n")
    (root / "test.txt").write_text("n02\nn03\n")
    for split in ("train", "test"):  # meta-test classes must not be seen in meta-training, whichever split loads
        with pytest.raises(LazyAppsError, match="'n02' is listed in both .* a class belongs to one split"):
            task_source(f"folder:{root}", split=split, ways=2, shots=1, queries=1, cache_dir=cache_dir)
    (root / "test.txt").write_text("n03\n")
    (root / "images" / "n01" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(LazyAppsError, match="broken.png is not a readable image .*; remove or replace it"):
        task_source(f"folder:{root}", split="train", ways=2, shots=1, queries=1, cache_dir=cache_dir)


def test_finn_split_is_the_documented_seeded_permutation_of_all_characters(omniglot) -> None:
    train_chars, test_chars = omniglot_character_split(omniglot, "finn")
    perm = torch.randperm(1623, generator=torch.Generator().manual_seed(1))  # seed 1, first 1,200 meta-train
    assert train_chars.tolist() == sorted(perm[:1200].tolist()) and test_chars.tolist() == sorted(perm[1200:].tolist())
    # a shuffle over both of Lake's sets (964 background, 659 evaluation characters), not the file order
    assert (train_chars >= 964).any() and (test_chars < 964).any()


def test_sine_seed_device_and_argument_checks() -> None:
    draw = lambda seed: SineTasks(shots=2, queries=2, seed=seed).sample(3)  # noqa: E731
    assert torch.equal(draw(5).support_x, draw(5).support_x) and not torch.equal(draw(5).support_x, draw(6).support_x)
    on_meta = SineTasks(shots=2, queries=2, device="meta").sample(2)
    assert on_meta.support_x.device.type == "meta" and on_meta.query_y.device.type == "meta"
    for shots, queries in ((0, 1), (1, 0)):
        with pytest.raises(LazyAppsError, match=f"shots and queries must be >= 1, got shots={shots} queries={queries}"):
            SineTasks(shots=shots, queries=queries)


def test_folder_class_lists_may_sit_in_splits_beside_class_folders_and_hold_comments(tmp_path, cache_dir) -> None:
    from fewshot.datasets import load_image_folder

    root = tmp_path / "flat"
    _write_folder(root, ["a", "b", "c"], per_class=2)  # class folders in the dataset folder itself, no images/
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("# the training classes\na\n\nc\n")
    images, labels, names = load_image_folder(root, "train", image_size=8, cache_dir=cache_dir)
    assert names == ["a", "c"] and labels.tolist() == [0, 0, 1, 1]
    assert images[:, 0, 0, 0].tolist() == [0, 1, 20, 21]  # pixel value 10·class + example


def test_folder_images_are_rgb_channels_first_pixel_for_pixel(tmp_path, cache_dir) -> None:
    from PIL import Image

    from fewshot.datasets import load_image_folder

    root = tmp_path / "pix" / "train"
    (root / "rgb").mkdir(parents=True)
    (root / "gray").mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)  # no symmetry to hide a transpose
    Image.fromarray(rgb).save(root / "rgb" / "0.PNG")  # an upper-case suffix is an image too
    gray = np.arange(36, dtype=np.uint8).reshape(6, 6) * 7
    Image.fromarray(gray, mode="L").save(root / "gray" / "0.png")
    images, labels, names = load_image_folder(tmp_path / "pix", "train", image_size=6, cache_dir=cache_dir)
    assert names == ["gray", "rgb"] and labels.tolist() == [0, 1] and images.shape == (2, 3, 6, 6)
    assert torch.equal(images[1], torch.from_numpy(rgb).permute(2, 0, 1))  # (same size: PIL's resize copies)
    assert all(torch.equal(images[0, c], torch.from_numpy(gray)) for c in range(3))  # grey as three equal channels


def test_folder_cache_is_keyed_by_image_size_split_and_file_contents(tmp_path, cache_dir) -> None:
    import os

    from PIL import Image

    from fewshot.datasets import load_image_folder

    def write(path, value, stamp):  # BMP: the same size in bytes whatever the pixels
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10, 13, 3), value, dtype=np.uint8)).save(path)
        os.utime(path, ns=(stamp, stamp))

    root = tmp_path / "mini"
    write(root / "train" / "a" / "0.bmp", 3, 10**18)
    write(root / "test" / "a" / "0.bmp", 99, 10**18)  # the same name, size and time in the other split
    assert load_image_folder(root, "train", image_size=8, cache_dir=cache_dir)[0].shape == (1, 3, 8, 8)
    assert load_image_folder(root, "train", image_size=5, cache_dir=cache_dir)[0].shape == (1, 3, 5, 5)
    assert int(load_image_folder(root, "test", image_size=8, cache_dir=cache_dir)[0].max()) == 99
    write(root / "train" / "a" / "0.bmp", 4, 2 * 10**18)  # rewritten in place, same size: its time tells the cache
    assert int(load_image_folder(root, "train", image_size=8, cache_dir=cache_dir)[0].max()) == 4


def test_task_source_hands_seed_class_shuffling_and_device_to_the_sampler(tmp_path, cache_dir) -> None:
    _write_folder(tmp_path / "mini" / "train", [f"n{i}" for i in range(6)], per_class=3)
    source = lambda **kw: task_source(f"folder:{tmp_path / 'mini'}", split="train", ways=3, shots=1, queries=1,  # noqa: E731
                                      cache_dir=cache_dir, **kw).sample(6)
    assert torch.equal(source(seed=1).support_x, source(seed=1).support_x)
    assert not torch.equal(source(seed=1).support_x, source(seed=2).support_x)
    ordered = source(seed=1, shuffle_classes=False)  # labels follow the class order: the pixel value is 10·class
    assert all(torch.all(t[1:] > t[:-1]) for t in ordered.support_x[:, :, 0, 0, 0])
    assert source(device="meta").support_x.device.type == "meta"
    sine = lambda **kw: task_source("sine", split="test", shots=2, queries=1, **kw).sample(2)  # noqa: E731
    assert torch.equal(sine(seed=3).support_x, sine(seed=3).support_x) and not torch.equal(sine(seed=3).support_x, sine(seed=4).support_x)
    assert sine(device="meta").query_y.device.type == "meta"
    with pytest.raises(UnknownNameError, match="unknown split 'valid'; valid: test, train, val"):
        task_source("sine", split="valid")


def test_omniglot_through_task_source_rotations_and_no_validation_split(omniglot, data_root, session_cache) -> None:
    lake = task_source("omniglot-lake", split="test", ways=5, shots=1, queries=1, root=data_root, cache_dir=session_cache)
    assert lake.num_classes == 659  # Lake's evaluation characters, not Finn's 423
    with pytest.raises(LazyAppsError, match="Omniglot has no validation classes in this protocol; use split train or test"):
        omniglot_sampler(omniglot, split="val", ways=5, shots=1, queries=1)
    # rotations default to train only; asked for, they apply to either split
    assert omniglot_sampler(omniglot, split="test", rotations=True, ways=5, shots=1, queries=1).num_classes == 4 * 423
    assert omniglot_sampler(omniglot, split="train", rotations=False, ways=5, shots=1, queries=1).num_classes == 1200
