"""How every benchmark script runs: as ``lazyapps`` runs a command."""
from __future__ import annotations

import sys
from collections.abc import Callable


def run_script(main: Callable[[], object], *, allocator: bool = True) -> None:
    """Run a benchmark's ``main`` with the CLI's allocator setting and its handling of bad input.

    ``allocator``: keep freed memory for reuse (:mod:`lazyapps.allocator`), so the numbers are what
    ``lazyapps ...`` gets; off where the script sets it itself. A user error (:class:`lazyapps.errors.LazyAppsError`:
    missing data, a bad option) ends as one line on stderr and exit code 2, never a traceback.
    """
    from lazyapps.allocator import keep_freed_memory
    from lazyapps.errors import LazyAppsError

    if allocator:
        keep_freed_memory()
    try:
        main()
    except LazyAppsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
