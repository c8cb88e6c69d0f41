"""Keep large freed blocks in the C heap for reuse (glibc), instead of handing them back to the OS.

Every product builds and drops large autograd graphs and batched activations
many times a second: the γ grid of the lazy long-tail step, vmapped few-shot
meta-batches. glibc's malloc serves blocks above its mmap threshold with a
fresh ``mmap`` and unmaps them on free, so each new block page-faults on first
touch. Measured on this project's 2-core CPU: a new 120 MB elementwise result
103 ms by default, 56 ms with the threshold raised; vmapped MAML 2.55 → 4.23
tasks/s (docs/fewshot.md, Speed); lazy two-component 4.9× → 4.3–4.5× a CE step
(docs/longtail.md). The cost is that the process keeps its peak heap until it
exits, which is what a training or attack run does anyway.

Only on glibc, and never over a choice the user made in the environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``);
``LAZYAPPS_KEEP_MALLOC=1`` leaves the allocator at its defaults.
"""
from __future__ import annotations

import ctypes
import os
import sys

#: mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks below this come from the reusable heap (1 GiB: covers batched activations of a meta-batch).
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap is returned to the OS only above this (mallopt takes a C int: 2 GiB − 1).
TRIM_THRESHOLD = (1 << 31) - 1

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LAZYAPPS_KEEP_MALLOC")


def keep_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set.

    Does nothing (returns False) off Linux, without glibc, or when the
    environment already says how malloc should behave.
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or any(name in env for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: its own allocator, left alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; a glibc that refuses a value keeps its default for it.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


__all__ = ["keep_freed_memory"]
