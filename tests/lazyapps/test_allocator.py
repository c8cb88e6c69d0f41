"""The CLI's malloc setting: applied on glibc, never over the user's own choice."""
import ctypes
import os
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


_PROBE = r"""
import ctypes, sys
from lazyapps.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "set":
    assert keep_freed_memory({}) is True
size = 200 << 20  # 200 MiB: mmapped by default (above glibc's dynamic 32 MiB cap), from the heap under the new threshold
before = libc.mallinfo2()
block = libc.malloc(size)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(during.hblkhd - before.hblkhd >= size, after.arena - before.arena >= size)
"""


@pytest.mark.parametrize("mode", ["set", "default"])
def test_large_blocks_come_from_the_heap_and_stay_there(mode):
    """Behaviour, not return codes: after keep_freed_memory a 200 MiB block is not mmapped, and freeing it keeps the heap."""
    import subprocess

    if not _glibc() or not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LAZYAPPS_KEEP_MALLOC")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    mmapped, kept = out.stdout.split()
    if mode == "set":
        assert (mmapped, kept) == ("False", "True")
    else:
        assert (mmapped, kept) == ("True", "False")  # glibc's defaults: the probe itself tells the two apart
