"""The CLI's malloc setting: applied on glibc, never over the user's own choice."""
import ctypes
import sys

import pytest

from lazyapps.allocator import keep_freed_memory


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LAZYAPPS_KEEP_MALLOC"])
def test_a_users_malloc_setting_is_left_alone(name):
    assert keep_freed_memory({name: "1"}) is False


def test_glibc_accepts_the_thresholds():
    if not _glibc():
        pytest.skip("not glibc: the function is a no-op there")
    assert keep_freed_memory({}) is True  # mallopt returned 1 for both: the values are in glibc's accepted range


def test_cli_main_sets_it_before_running(monkeypatch):
    import lazyapps.allocator as allocator
    import lazyapps.cli as cli

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(cli, "cli", lambda **kw: calls.append("cli"))
    cli.main()
    assert calls == ["malloc", "cli"]
