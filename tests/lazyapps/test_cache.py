import pytest
import torch

from lazyapps.cache import artefact_path, cached, settings_key


def test_key_depends_on_every_setting_and_not_on_order():
    assert settings_key({"a": 1, "b": 2}) == settings_key({"b": 2, "a": 1})
    assert settings_key({"a": 1, "b": 2}) != settings_key({"a": 1, "b": 3})
    assert artefact_path("zoo", "net4", {"e": 1}, root="/c") != artefact_path("zoo", "net4", {"e": 2}, root="/c")


def test_cached_builds_once_then_loads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.randn(3)}

    first, path = cached("zoo", "m", {"e": 1}, build, root=tmp_path)
    second, path2 = cached("zoo", "m", {"e": 1}, build, root=tmp_path)
    assert path == path2 and len(calls) == 1
    assert torch.equal(first["w"], second["w"])
    cached("zoo", "m", {"e": 2}, build, root=tmp_path)
    assert len(calls) == 2


def test_corrupt_cache_is_rebuilt_with_warning(tmp_path):
    _, path = cached("zoo", "m", {}, lambda: {"w": torch.zeros(1)}, root=tmp_path)
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="rebuilding"):
        state, _ = cached("zoo", "m", {}, lambda: {"w": torch.ones(1)}, root=tmp_path)
    assert torch.equal(state["w"], torch.ones(1))


def test_a_corrupt_sidecar_is_rebuilt_with_a_warning_that_asks_nothing_of_the_user(tmp_path):
    import warnings

    from lazyapps.checkpoint import meta_path

    _, path = cached("zoo", "m", {}, lambda: {"w": torch.zeros(1)}, root=tmp_path)
    meta_path(path).write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, _ = cached("zoo", "m", {}, lambda: {"w": torch.ones(1)}, root=tmp_path)
    assert [str(w.message) for w in caught] == [
        f"checkpoint metadata {meta_path(path)} is unreadable (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)); rebuilding it"]
    assert torch.equal(state["w"], torch.ones(1))


def test_a_cached_state_the_validator_rejects_is_rebuilt(tmp_path):
    from lazyapps.errors import CheckpointError

    def validate(state):
        if state["w"].shape != (2,):
            raise CheckpointError("cached state has the wrong shape")

    cached("zoo", "m", {}, lambda: {"w": torch.zeros(1)}, root=tmp_path)  # e.g. written by an older version
    with pytest.warns(UserWarning, match="wrong shape; rebuilding"):
        state, path = cached("zoo", "m", {}, lambda: {"w": torch.ones(2)}, root=tmp_path, validate=validate)
    assert torch.equal(state["w"], torch.ones(2))
    assert torch.equal(cached("zoo", "m", {}, lambda: {}, root=tmp_path, validate=validate)[0]["w"], torch.ones(2))


def test_artefact_names_stay_inside_their_kind_folder_and_record_their_settings(tmp_path):
    from lazyapps.checkpoint import load_metadata

    path = artefact_path("zoo", "../net 4/x", {"e": 1}, root=tmp_path)
    assert path.parent == tmp_path / "zoo" and path.name.startswith(".._net_4_x-")
    _, path = cached("zoo", "m", {"e": 1, "arch": "net4"}, lambda: {"w": torch.zeros(1)}, root=tmp_path)
    meta = load_metadata(path)
    assert meta["settings"] == {"e": 1, "arch": "net4"} and meta["kind"] == "zoo" and meta["name"] == "m"


def test_content_digest_is_blake2b_of_the_raw_bytes_in_order():
    import hashlib

    import numpy as np

    from lazyapps.cache import content_digest

    images = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4).transpose(1, 2)  # not contiguous: hashed as laid out
    labels = np.array([3, 1], dtype=np.int64)
    reference = hashlib.blake2b(b"head" + images.contiguous().numpy().tobytes() + labels.tobytes(), digest_size=8)
    assert content_digest([b"head", images, labels]) == reference.hexdigest()
    assert content_digest([b"head", labels, images]) != reference.hexdigest()  # order matters


def test_a_validator_that_fails_for_another_reason_raises_instead_of_rebuilding(tmp_path):
    """Only a CheckpointError means "stale file, rebuild"; any other error is a bug and must surface as itself."""
    cached("zoo", "m", {}, lambda: {"w": torch.zeros(1)}, root=tmp_path)

    def broken(state):
        raise KeyError("bias")

    with pytest.raises(KeyError, match="bias"):
        cached("zoo", "m", {}, lambda: pytest.fail("rebuilt"), root=tmp_path, validate=broken)
