"""Where data and cached artefacts live.

Order of precedence: an explicit argument (``--data-dir``/``--cache-dir``), then
the environment (``LAZYAPPS_DATA``/``LAZYAPPS_CACHE``), then
``~/.cache/lazyapps/{data,cache}``.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LAZYAPPS_DATA"
CACHE_ENV = "LAZYAPPS_CACHE"


def _resolve(explicit: str | os.PathLike | None, env: str, default: str) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return Path.home() / ".cache" / "lazyapps" / default


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: ``explicit``, else ``$LAZYAPPS_DATA``, else ``~/.cache/lazyapps/data``."""
    return _resolve(explicit, DATA_ENV, "data")


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """The cache root: ``explicit``, else ``$LAZYAPPS_CACHE``, else ``~/.cache/lazyapps/cache``."""
    return _resolve(explicit, CACHE_ENV, "cache")
