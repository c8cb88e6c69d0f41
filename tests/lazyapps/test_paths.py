"""lazyapps.paths: the data and cache roots (argument > environment > ~/.cache/lazyapps) and linked outputs."""
from __future__ import annotations

from pathlib import Path

from lazyapps.paths import cache_root, check_writable, data_root


def test_roots_take_the_argument_then_their_own_variable_then_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LAZYAPPS_DATA", raising=False)
    monkeypatch.delenv("LAZYAPPS_CACHE", raising=False)
    assert data_root() == tmp_path / "home" / ".cache" / "lazyapps" / "data"
    assert cache_root() == tmp_path / "home" / ".cache" / "lazyapps" / "cache"
    monkeypatch.setenv("LAZYAPPS_DATA", str(tmp_path / "d"))
    assert data_root() == tmp_path / "d" and cache_root() == tmp_path / "home" / ".cache" / "lazyapps" / "cache"
    monkeypatch.setenv("LAZYAPPS_CACHE", "~/c")
    assert cache_root() == tmp_path / "home" / "c" and data_root() == tmp_path / "d"  # ~ expanded
    assert data_root(tmp_path / "x") == tmp_path / "x" and cache_root("~/y") == tmp_path / "home" / "y"


def test_a_linked_output_is_checked_where_the_link_points(tmp_path):
    (tmp_path / "afile").write_text("")
    link = tmp_path / "r.json"
    link.symlink_to(tmp_path / "afile" / "r.json")  # the writers would write under a file: impossible
    assert check_writable(link) == f"{tmp_path / 'afile'} is a file, so nothing can be made under it"
    good = tmp_path / "ok.json"
    good.symlink_to(tmp_path / "sub" / "r.json")
    assert check_writable(good) is None and not Path(tmp_path / "sub").exists()


def test_a_checkpoint_with_long_metadata_is_still_refused_as_an_output(tmp_path):
    """A long run's metadata (its per-epoch history) runs to many kilobytes; its checkpoint is protected all the same."""
    import torch

    from lazyapps.checkpoint import save_checkpoint

    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_accuracy": 0.5} for e in range(2000)]
    ckpt = save_checkpoint(tmp_path / "best.pt", {"w": torch.zeros(1)}, {"kind": "zoo", "history": history})
    assert (tmp_path / "best.pt.json").stat().st_size > 100_000
    assert check_writable(ckpt) == f"{ckpt} is a lazyapps checkpoint, which this would overwrite; give the output another path"
    assert check_writable(tmp_path / "best.pt.json").startswith(f"{tmp_path / 'best.pt.json'} is the metadata of checkpoint best.pt")
