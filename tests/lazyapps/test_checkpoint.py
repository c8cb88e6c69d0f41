import json
import os
import stat
from pathlib import Path

import pytest
import torch

from lazyapps.checkpoint import load_checkpoint, meta_path, save_checkpoint, with_metadata, write_json_atomic
from lazyapps.errors import CheckpointError


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = tmp_path / "m.pt"
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3}
    save_checkpoint(path, state, {"kind": "zoo", "arch": "net4"})
    loaded, meta = load_checkpoint(path, expect={"kind": "zoo"})
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["epoch"] == 3
    assert meta["arch"] == "net4" and meta["format"] == "lazyapps-checkpoint-1"
    assert not list(tmp_path.glob(".*tmp")), "temporary files must not be left behind"


def test_metadata_mismatch_names_the_key(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", {"x": torch.zeros(1)}, {"dataset": "cifar10"})
    with pytest.raises(CheckpointError, match=r"dataset='cifar10', but dataset='cifar100'"):
        load_checkpoint(path, expect={"dataset": "cifar100"})


def test_corrupt_and_missing_files_are_user_errors(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        load_checkpoint(tmp_path)


def test_pickled_code_is_refused(tmp_path):
    # weights_only=True: an arbitrary object is not loadable.
    path = tmp_path / "evil.pt"
    torch.save({"obj": _Opaque()}, path)
    with pytest.raises(CheckpointError, match=r"not a file of tensors that torch.load\(weights_only=True\) accepts") as caught:
        load_checkpoint(path)
    assert "weights_only=False" not in str(caught.value) and "weights_only` set to `False" not in str(caught.value)
    # torch's advice to load it unsafely is not passed on by the user-model loader either
    import models_zoo

    with pytest.raises(CheckpointError, match="cannot be read as a state dict \\(not a file of tensors"):
        models_zoo.load_user_model(f"net4:{path}")


def test_a_plain_pickle_is_refused_without_torchs_advice_to_its_developers(tmp_path):
    import pickle
    import warnings

    import models_zoo

    path = tmp_path / "list.pt"
    path.write_bytes(pickle.dumps([1, 2], protocol=4))  # not torch.save's protocol: torch warns before refusing it
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="cannot be read"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="cannot be read as a state dict"):
            models_zoo.load_user_model(f"net4:{path}")
    assert not [w for w in seen if "pickle protocol" in str(w.message)]


class _Opaque:
    pass


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", {"v": torch.ones(2)}, {"n": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"v": Unsaveable()}, {"n": 2})
    state, meta = load_checkpoint(path)
    assert torch.equal(state["v"], torch.ones(2)) and meta["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json"]


def test_write_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert meta_path(tmp_path / "x.pt").name == "x.pt.json"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_written_files_get_the_umask_mode_not_a_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(2)}, {"kind": "x"})
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        os.umask(0o077)
        write_json_atomic(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("c.pt", "c.pt.json", "r.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_links_are_followed_and_devices_written_in_place(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("{}")
    (tmp_path / "link.json").symlink_to(target)
    write_json_atomic(tmp_path / "link.json", {"a": 1})
    assert (tmp_path / "link.json").is_symlink() and json.loads(target.read_text()) == {"a": 1}
    # a link to a pipe (as /dev/stdout may be): written through, the link kept, the pipe never replaced by a file.
    # (A pipe of our own, not /dev/null: a regression would replace what it links to, and tests may run as root.)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # open before the write, so the writer's open does not block
    try:
        (tmp_path / "out").symlink_to(pipe)
        write_json_atomic(tmp_path / "out", {"b": 2})
        assert json.loads(os.read(reader, 1 << 16)) == {"b": 2}
    finally:
        os.close(reader)
    assert (tmp_path / "out").is_symlink() and pipe.is_fifo()
    from lazyapps.paths import check_writable

    assert check_writable(tmp_path / "out") is None and check_writable("/dev/null") is None


def test_json_has_no_nan_or_infinity(tmp_path):
    # e.g. an attack summary with no success: mean L2 and queries are NaN
    write_json_atomic(tmp_path / "r.json", {"mean_l2": float("nan"), "curve": [1.0, float("inf")], "n": 0})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"mean_l2": None, "curve": [1.0, None], "n": 0}


def test_expected_settings_must_be_recorded(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", {"x": torch.zeros(1)}, {"kind": "zoo"})
    with pytest.raises(CheckpointError, match=r"dataset=None, but dataset='mnist'"):
        load_checkpoint(path, expect={"kind": "zoo", "dataset": "mnist"})
    meta_path(path).unlink()
    assert load_checkpoint(path)[1] == {}  # no expectation: a bare .pt loads
    with pytest.raises(CheckpointError, match="has no metadata file m.pt.json"):
        load_checkpoint(path, expect={"kind": "zoo"})


def test_unreadable_metadata_and_non_dict_files_are_checkpoint_errors(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", {"x": torch.zeros(1)}, {"kind": "zoo"})
    meta_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"metadata .* is unreadable \(.*\); restore the .json written with the .pt, or pass another checkpoint$"):
        load_checkpoint(path)  # (a checkpoint the user passed: the advice is theirs to follow)
    for text, kind in (("[1, 2]", "list"), ('"kind"', "str"), ("null", "NoneType")):  # JSON, but not an object of settings
        meta_path(path).write_text(text)
        with pytest.raises(CheckpointError, match=rf"holds a JSON {kind}, not an object of settings; restore the .json"):
            load_checkpoint(path, expect={"kind": "zoo"})
    torch.save(torch.zeros(2), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="does not hold a dict"):
        load_checkpoint(tmp_path / "t.pt")


def test_resumed_metadata_names_a_missing_checkpoint_or_its_missing_json(tmp_path):
    from lazyapps.checkpoint import resumed_metadata

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(CheckpointError, match=f"--resume {path}: no such checkpoint file"):
        resumed_metadata(path)
    save_checkpoint(path, {"w": torch.zeros(1)}, {"kind": "demo", "lr": 0.1})
    assert resumed_metadata(path)["lr"] == 0.1
    (tmp_path / "checkpoint.pt.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no metadata file beside it \(checkpoint.pt.json\), so its settings"):
        resumed_metadata(path)


def test_files_agree_only_when_the_json_keeps_every_setting_the_pt_records():
    from lazyapps.checkpoint import check_files_agree

    check_files_agree("c.pt", {"ways": 5, "lr": 0.1}, {"ways": 5, "lr": 0.1, "other": 1})
    with pytest.raises(CheckpointError, match=r"c.pt and its metadata disagree: ways is 5 in the .pt but '5' in the .json; "):
        check_files_agree("c.pt", {"ways": 5}, {"ways": "5"})
    with pytest.raises(CheckpointError, match=r"disagree: lr is 0.1 in the .pt but absent from the .json; the .json was edited"):
        check_files_agree("c.pt", {"ways": 5, "lr": 0.1}, {"ways": 5})


def test_with_metadata_names_each_checkpoint_and_its_json_and_skips_absent_ones():
    files = with_metadata({"--checkpoint": "runs/a/best.pt", "--resume": None})
    assert files == {"--checkpoint": Path("runs/a/best.pt"), "the .json of --checkpoint": Path("runs/a/best.pt.json")}


def test_first_load_problem_names_the_first_key_and_counts_every_other_problem():
    # The one-line reason a checkpoint does not fit: torch lists every missing key on one line; the count of the
    # rest must include them, or "(and N more)" hides how far the checkpoint is from the model.
    from lazyapps.checkpoint import first_load_problem

    with pytest.raises(RuntimeError) as caught:
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)).load_state_dict({"extra": torch.zeros(1)})
    # 4 missing keys (0.weight, 0.bias, 1.weight, 1.bias) and 1 unexpected one
    assert first_load_problem(caught.value) == "missing key '0.weight' (and 4 more)"
    assert first_load_problem(KeyError("model")) == "it holds no 'model' entry"
