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
