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


def add_json_option(parser, default: str) -> None:
    """``--json PATH``: where the result goes; ``default`` (the committed results file) unless the run is ``--smoke``.

    A smoke run checks the code path in seconds; its numbers must not overwrite the results the docs quote,
    so it writes JSON only where ``--json`` names. :func:`json_path` reads the choice back.
    """
    parser.add_argument("--json", default=None, help=f"where to write the JSON result (default: {default}; "
                                                     "a --smoke run writes none unless given)")
    parser.set_defaults(json_default=default)


def json_path(args) -> str | None:
    """The file :func:`add_json_option` chose for these parsed ``args`` (None: write no JSON)."""
    return args.json or (None if getattr(args, "smoke", False) else args.json_default)
