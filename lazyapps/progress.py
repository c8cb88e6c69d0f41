"""Progress bars on stderr (tqdm), off with ``--quiet`` or when stderr is not a terminal."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> bool:
    """Silence every progress bar and status line of this process (``--quiet``); returns the previous setting."""
    global _quiet
    previous, _quiet = _quiet, bool(quiet)
    return previous


@contextmanager
def quiet_while(quiet: bool = True) -> Iterator[None]:
    """``set_quiet(quiet)`` for a block (a command, a benchmark run), then the setting from before, also on error:
    a caller in the same process (a notebook, a test session) keeps its own."""
    previous = set_quiet(quiet)
    try:
        yield
    finally:
        set_quiet(previous)


def enabled() -> bool:
    from .distributed import is_main

    # Under torchrun only rank 0 shows progress: N bars fighting over one terminal help nobody.
    return not _quiet and sys.stderr.isatty() and is_main()


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr that is disabled when quiet or when stderr is not a terminal."""
    return tqdm(iterable, desc=desc, total=total, disable=not enabled(), leave=False, dynamic_ncols=True, **kwargs)


def status(message: str) -> None:
    """A one-line summary of what a long step is doing (stderr; silent with ``--quiet``)."""
    from .distributed import is_main

    if not _quiet and is_main():
        print(message, file=sys.stderr, flush=True)
