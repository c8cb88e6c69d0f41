"""CIFAR-LT splits: counts from the closed form, validation = first images per class, errors."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

from lazyapps.data import load_dataset
from lazyapps.errors import DataNotFoundError, LazyAppsError, UnknownNameError
from longtail.data import CIFARLongTail, longtail_counts, split_indices


def test_counts_closed_form_imbalance_100():
    counts = longtail_counts(10, 100, 4990)
    expected = [int(4990 * 0.01 ** (c / 9)) for c in range(10)]
    # The rule with n_max = 4990: the smallest class has int(49.9) = 49 images.
    assert counts == expected == [4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49]
    assert longtail_counts(100, 100, 490)[0] == 490 and longtail_counts(100, 100, 490)[-1] == 4
    assert longtail_counts(10, 1, 7) == [7] * 10


def test_default_split_on_real_subset(data_root):
    lt = CIFARLongTail.load("cifar10", imbalance=100, root=data_root)
    assert lt.counts == [4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49]
    assert torch.bincount(lt.train_labels, minlength=10).tolist() == lt.counts
    labels = load_dataset("cifar10", root=data_root).train.labels.numpy()
    start = 0
    for c, n_c in enumerate(lt.counts):
        in_file_order = np.flatnonzero(labels == c)
        # validation: the first 10 images of the class in file order; training: the next n_c
        assert lt.val_index[10 * c:10 * (c + 1)].tolist() == in_file_order[:10].tolist()
        assert lt.train_index[start:start + n_c].tolist() == in_file_order[10:10 + n_c].tolist()
        start += n_c
    assert len(set(lt.val_index.tolist()) & set(lt.train_index.tolist())) == 0
    assert len(lt.test_labels) == 10000 and lt.val_images.shape == (100, 3, 32, 32)


def test_ldam_split_on_real_subset_holds_out_validation_first(data_root):
    with pytest.warns(UserWarning, match="--split ldam on a .*-image subset of cifar10's 50000 .* not Cao et al.'s split") as caught:
        lt = CIFARLongTail.load("cifar10", imbalance=10, root=data_root, rule="ldam", n_max=100, test_per_class=1, seed=5)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert torch.bincount(lt.train_labels, minlength=10).tolist() == lt.counts == longtail_counts(10, 10, 100)
    labels = load_dataset("cifar10", root=data_root).train.labels.numpy()
    rng = np.random.RandomState(5)  # Cao et al.: one seeded stream, classes in order
    start = 0
    for c, n_c in enumerate(lt.counts):
        perm = np.flatnonzero(labels == c)
        rng.shuffle(perm)
        assert lt.val_index[10 * c:10 * (c + 1)].tolist() == perm[:10].tolist()
        assert lt.train_index[start:start + n_c].tolist() == perm[10:10 + n_c].tolist()
        start += n_c
    assert "per class [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]" in lt.describe() and "ldam split" in lt.describe()


def test_ldam_split_is_seeded_shuffle():
    labels = torch.arange(4).repeat_interleave(50)
    counts = [40, 20, 10, 5]
    a = split_indices(labels, counts, val_per_class=5, rule="ldam", seed=3)
    b = split_indices(labels, counts, val_per_class=5, rule="ldam", seed=3)
    c = split_indices(labels, counts, val_per_class=5, rule="ldam", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    rng = np.random.RandomState(3)
    perm0 = np.arange(50)
    rng.shuffle(perm0)
    assert a[1][:5].tolist() == perm0[:5].tolist() and a[0][:40].tolist() == perm0[5:45].tolist()


def test_too_few_images_is_a_clear_error(data_root):
    with pytest.raises(LazyAppsError, match=r"class 1 \(automobile\) has 3874 training images but the split needs 10 for validation \+ 4172"):
        CIFARLongTail.load("cifar10", imbalance=5, root=data_root)
    with pytest.raises(LazyAppsError, match="needs 3000 for validation"):
        CIFARLongTail.load("cifar10", imbalance=100, root=data_root, val_per_class=3000)
    with pytest.raises(LazyAppsError, match="--imbalance must be a finite number >= 1"):
        CIFARLongTail.load("cifar10", imbalance=0.5, root=data_root)


def test_missing_cifar100_says_how_to_get_it(tmp_path, monkeypatch):
    import lazyapps.data as data_module

    monkeypatch.setattr(data_module, "_download", lambda name, root: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DataNotFoundError, match="cifar-100-python.*--dataset cifar10"):
        CIFARLongTail.load("cifar100", imbalance=100, root=tmp_path)


def _write_cifar100(root, per_class_train=8, per_class_test=2):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name, per in (("train", per_class_train), ("test", per_class_test)):
        fine = np.tile(np.arange(100), per)  # interleaved classes, as in the real files
        data = rng.randint(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, handle)


def test_cifar100_lt_from_official_format(tmp_path):
    _write_cifar100(tmp_path)
    lt = CIFARLongTail.load("cifar100", imbalance=3, root=tmp_path, val_per_class=2, n_max=6)
    assert lt.counts == [int(6 * (1 / 3) ** (c / 99)) for c in range(100)] and lt.counts[0] == 6 and lt.counts[-1] == 2
    assert torch.bincount(lt.train_labels, minlength=100).tolist() == lt.counts
    # class 0 sits at rows 0, 100, 200, ...: validation rows 0 and 100, training from row 200 on
    assert lt.val_index[:2].tolist() == [0, 100] and lt.train_index[:6].tolist() == [200, 300, 400, 500, 600, 700]
    assert len(lt.test_labels) == 200 and lt.num_classes == 100


def test_test_per_class_keeps_the_first_images_of_each_class_in_file_order(tmp_path):
    _write_cifar100(tmp_path, per_class_train=8, per_class_test=3)
    with open(tmp_path / "cifar-100-python" / "test", "rb") as handle:
        raw = pickle.load(handle)
    rows = torch.from_numpy(np.asarray(raw[b"data"])).reshape(-1, 3, 32, 32)
    lt = CIFARLongTail.load("cifar100", imbalance=3, root=tmp_path, val_per_class=2, n_max=6, test_per_class=2)
    # classes are interleaved: the first two images of every class are file rows 0..199, kept in file order
    assert lt.test_labels.tolist() == list(range(100)) * 2
    assert torch.equal(lt.test_images, rows[:200])


def test_array_bundle_n_max_defaults_to_smallest_class_minus_validation(tmp_path):
    path = tmp_path / "lt.npz"
    y_train = np.repeat(np.arange(3), [30, 25, 40])
    x_train = np.random.default_rng(0).integers(0, 256, (len(y_train), 4, 4, 3), dtype=np.uint8)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_train[:6], y_test=np.array([0, 1, 2, 0, 1, 2]))
    lt = CIFARLongTail.load(f"npz:{path}", imbalance=4, root=tmp_path, val_per_class=5)
    assert lt.counts == longtail_counts(3, 4, 25 - 5) == [20, 10, 5]
    assert torch.bincount(lt.train_labels, minlength=3).tolist() == [20, 10, 5] and len(lt.val_labels) == 15


def test_a_bundle_found_from_the_working_directory_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    from longtail.trainer import TrainConfig, describe_data

    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "lt.npz", x_train=np.zeros((len(y), 4, 4, 3), np.uint8), y_train=y, x_test=np.zeros((3, 4, 4, 3), np.uint8),
             y_test=np.arange(3))
    monkeypatch.chdir(tmp_path)
    lt = CIFARLongTail.load("npz:lt.npz", imbalance=2, root=tmp_path / "elsewhere", val_per_class=5)
    config = TrainConfig(dataset="npz:./lt.npz", imbalance=2, val_per_class=5)
    assert lt.dataset == config.dataset == f"npz:{tmp_path / 'lt.npz'}"  # (the Python API records what the CLI does)
    assert describe_data(config, lt).n_max == 15
    assert TrainConfig(dataset="npz:missing.npz").dataset == "npz:missing.npz"  # (not found here: left to the data root)


def test_a_class_too_small_for_its_split_names_only_the_remedies_that_help_it():
    labels = torch.tensor([0] * 5 + [1] * 5)
    with pytest.raises(LazyAppsError, match=r"class 0 has 5 training images but the split needs 2 for validation \+ 6 "
                                            r"for training; use fewer --val-per-class, a smaller --n-max or a dataset"):
        split_indices(labels, [6, 3], val_per_class=2)  # class 0 keeps n_max whatever the imbalance
    with pytest.raises(LazyAppsError, match=r"class 1 .* use a larger --imbalance, a smaller --n-max or a dataset"):
        split_indices(labels, [5, 6], val_per_class=0)
    # validation alone takes the whole class: no imbalance or n_max can help
    with pytest.raises(LazyAppsError, match=r"class 1 has 5 training images but the split needs 5 for validation \+ 1 "
                                            r"for training; use fewer --val-per-class or a dataset with more images of the class$"):
        split_indices(torch.tensor([0] * 10 + [1] * 5), [1, 1], val_per_class=5)
    with pytest.raises(LazyAppsError, match=r"class 2 has 0 training images .* use a dataset with more images of the class$"):
        split_indices(labels, [1, 1, 1], val_per_class=0)


def _in_memory(name, num_classes, per_class, per_class_test=1):
    """A dataset of 1×1 grey images in memory, classes interleaved as in the CIFAR files."""
    from lazyapps.data.splits import DatasetSplits, Split

    def split(per):
        labels = torch.arange(num_classes).repeat(per)
        return Split(torch.arange(len(labels)).remainder(256).to(torch.uint8).reshape(-1, 1, 1, 1), labels)

    return DatasetSplits(name, split(per_class), split(per_class_test), [f"c{i}" for i in range(num_classes)])


def test_full_cifar100_defaults_to_490_images_imbalance_100_and_ldam_warns_only_on_a_subset(monkeypatch):
    import lazyapps.data as data_module

    full = _in_memory("cifar100", 100, 500)  # the full 50,000-image training set
    monkeypatch.setattr(data_module, "load_dataset", lambda name, root=None: full)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Cao et al.'s split on the full set: no warning
        lt = CIFARLongTail.load("cifar100", rule="ldam")
    # Jamal et al.: n_max = 500 − 10 validation images; imbalance 100: the smallest class has int(4.9) = 4
    assert (lt.n_max, lt.imbalance, lt.val_per_class, lt.seed) == (490, 100.0, 10, 0)
    assert lt.counts == [int(490 * 0.01 ** (c / 99)) for c in range(100)] and lt.counts[-1] == 4
    balanced = CIFARLongTail.load("cifar100", imbalance=1)  # imbalance 1 is a balanced training set, not an error
    assert balanced.counts == [490] * 100


def test_bad_split_arguments_are_refused_before_the_data_load(monkeypatch, tmp_path):
    import lazyapps.data as data_module

    def no_load(name, root=None):
        raise AssertionError("the data must not be loaded for a bad argument")

    monkeypatch.setattr(data_module, "load_dataset", no_load)
    for imbalance in (0.5, 0.0):
        with pytest.raises(LazyAppsError, match="--imbalance must be a finite number >= 1"):
            CIFARLongTail.load("cifar100", imbalance=imbalance, root=tmp_path)
    # another dataset's missing files are its own error, not CIFAR-100's advice
    monkeypatch.setattr(data_module, "load_dataset",
                        lambda name, root=None: (_ for _ in ()).throw(DataNotFoundError("cifar10 not found; nowhere")))
    with pytest.raises(DataNotFoundError, match="^cifar10 not found; nowhere$"):
        CIFARLongTail.load("cifar10", root=tmp_path)


def test_counts_refuse_bad_arguments_and_take_one_class():
    assert longtail_counts(1, 10, 7) == [7]  # one class: no exponent c/(C−1) to take
    assert longtail_counts(3, 4, 1) == [1, 0, 0]  # n_max = 1 is allowed (the loader refuses empty classes)
    with pytest.raises(LazyAppsError, match="--imbalance must be a finite number >= 1"):
        longtail_counts(3, 0.5, 10)
    with pytest.raises(LazyAppsError, match="--imbalance must be a finite number >= 1 .*, got nan"):
        longtail_counts(3, float("nan"), 10)
    with pytest.raises(LazyAppsError, match="n_max .* must be >= 1"):
        longtail_counts(3, 2, 0)


def test_a_dataset_whose_test_classes_have_no_training_image_is_refused(data_root, session_cache, monkeypatch):
    monkeypatch.setenv("LAZYAPPS_CACHE", str(session_cache))  # (the decoded Omniglot, shared with the few-shot tests)
    # Omniglot's test split is its evaluation alphabets: no split rule could give those classes training images
    with pytest.raises(LazyAppsError, match="omniglot's test split holds 659 classes with no training image .*Omniglot is for lazyapps fewshot"):
        CIFARLongTail.load("omniglot", imbalance=10, root=data_root, n_max=10, val_per_class=2)


def test_an_unknown_dataset_lists_only_datasets_that_can_be_cut(data_root):
    with pytest.raises(UnknownNameError) as caught:
        CIFARLongTail.load("cifar1O", imbalance=10, root=data_root)
    assert str(caught.value).startswith("unknown dataset 'cifar1O'; valid: ")
    assert {"cifar10", "cifar100", "mnist", "npz:PATH"} <= set(caught.value.valid)
    assert "omniglot" not in caught.value.valid  # (offered, it would only be refused: see the test above)


def test_split_defaults_and_bad_split_arguments():
    from lazyapps.errors import UnknownNameError

    labels = torch.arange(3).repeat(40)  # interleaved: class c at rows c, c + 3, c + 6, ...
    train, val = split_indices(labels, [20, 10, 5])
    # 10 validation images per class by default (Jamal et al.), then the training images, in file order
    assert val.tolist() == [c + 3 * i for c in range(3) for i in range(10)]
    assert train[:20].tolist() == [3 * i for i in range(10, 30)]
    # the ldam rule's permutation is seeded with 0 by default
    rng = np.random.RandomState(0)
    perm = np.flatnonzero(labels.numpy() == 0)
    rng.shuffle(perm)
    ldam_train, ldam_val = split_indices(labels, [20, 10, 5], rule="ldam")
    assert ldam_val[:10].tolist() == perm[:10].tolist() and ldam_train[:20].tolist() == perm[10:30].tolist()
    with pytest.raises(UnknownNameError):
        split_indices(labels, [20, 10, 5], rule="random")
    with pytest.raises(LazyAppsError, match="--val-per-class must be >= 0"):
        split_indices(labels, [20, 10, 5], val_per_class=-1)


def test_a_class_left_without_training_images_or_a_test_set_without_images_is_refused(tmp_path):
    path = tmp_path / "lt.npz"
    y = np.repeat(np.arange(3), 20)
    np.savez(path, x_train=np.zeros((len(y), 4, 4, 3), np.uint8), y_train=y, x_test=np.zeros((6, 4, 4, 3), np.uint8),
             y_test=np.arange(3).repeat(2))
    # n_max 10 at imbalance 20: the last class would keep int(0.5) = 0 images
    with pytest.raises(LazyAppsError, match=r"leaves class 2 without training images \(counts \[10, 2, 0\]\)"):
        CIFARLongTail.load(f"npz:{path}", imbalance=20, root=tmp_path, val_per_class=5, n_max=10)
    # one training image is enough: imbalance 10 keeps 10, int(3.16) = 3 and 1
    assert CIFARLongTail.load(f"npz:{path}", imbalance=10, root=tmp_path, val_per_class=5, n_max=10).counts == [10, 3, 1]
    with pytest.raises(LazyAppsError, match="test_per_class must be >= 1"):
        CIFARLongTail.load(f"npz:{path}", imbalance=2, root=tmp_path, val_per_class=5, test_per_class=0)


@pytest.mark.parametrize("rule", ["first", "ldam"])
def test_split_images_and_labels_are_the_rows_its_indices_name(tmp_path, rule):
    # Every image is filled with its row number, so each tensor of the split can be traced back to its file row:
    # the training and validation images and labels must be the dataset's rows at train_index / val_index (the
    # meta methods learn their weights on val_images/val_labels; a slip there is invisible in the counts).
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat(np.arange(4), 30))  # classes shuffled through the file
    x = np.broadcast_to(np.arange(len(y), dtype=np.uint8)[:, None, None, None], (len(y), 2, 2, 3)).copy()
    y_test = np.arange(4).repeat(3)
    np.savez(tmp_path / "lt.npz", x_train=x, y_train=y, x_test=x[:12] + 1, y_test=y_test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the subset warning is CIFAR's: a bundle has no Cao et al. split to miss)
        lt = CIFARLongTail.load(f"npz:{tmp_path / 'lt.npz'}", imbalance=4, root=tmp_path, val_per_class=3, rule=rule, seed=2)
    for images, labels, index in ((lt.train_images, lt.train_labels, lt.train_index),
                                  (lt.val_images, lt.val_labels, lt.val_index)):
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 2, 2)
        assert images[:, 0, 0, 0].tolist() == index.tolist() and bool((images == images[:, :1, :1, :1]).all())
        assert labels.tolist() == y[index.numpy()].tolist()
    assert lt.val_labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3  # balanced, grouped by class
    assert torch.bincount(lt.train_labels, minlength=4).tolist() == lt.counts == longtail_counts(4, 4, 27)
    assert lt.test_labels.tolist() == y_test.tolist() and lt.test_images[:, 0, 0, 0].tolist() == list(range(1, 13))
