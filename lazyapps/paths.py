"""Where data and cached artefacts live.

Order of precedence: an explicit argument (``--data-dir``/``--cache-dir``), then
the environment (``LAZYAPPS_DATA``/``LAZYAPPS_CACHE``), then
``~/.cache/lazyapps/{data,cache}``.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

DATA_ENV = "LAZYAPPS_DATA"
CACHE_ENV = "LAZYAPPS_CACHE"
#: The ``format`` a checkpoint's metadata file records (:func:`lazyapps.checkpoint.save_checkpoint`).
CHECKPOINT_FORMAT = "lazyapps-checkpoint-1"


def meta_path(path: str | os.PathLike) -> Path:
    """The JSON metadata file that goes with checkpoint ``path`` (also :func:`lazyapps.checkpoint.meta_path`)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


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


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why ``path`` (a file, or with ``folder`` a folder) cannot be written, or None if it can.

    Checked before a command's work starts, so an output path that cannot be made (a parent that is a
    file, a folder without write permission, a read-only or virtual file system) is one line at once
    instead of an error after training. The folder that would hold it is probed with a temporary file
    (permission bits alone do not tell: root passes them everywhere); nothing else is created.
    """
    import tempfile

    path = Path(path).absolute()  # (no ~ expansion: the writers do none, so "~" is a folder name to both)
    if path.exists() and not path.is_file() and not path.is_dir():  # a device or a pipe (/dev/stdout): written in place
        return None if os.access(path, os.W_OK) else f"no permission to write {path}"
    if path.is_symlink():  # the writers replace the file a link points to
        path = path.resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing == path:
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder, not a file"
        if not folder:
            # (a results file may be rewritten; a run's checkpoint may not: it would lose the run, resume and all)
            if _is_checkpoint_metadata(meta_path(path)):
                return f"{path} is a lazyapps checkpoint, which this would overwrite; give the output another path"
            if path.suffix == ".json" and _is_checkpoint_metadata(path):
                return (f"{path} is the metadata of checkpoint {path.with_suffix('').name}, which this would overwrite; "
                        f"give the output another path")
        probe = path if folder else path.parent
    elif not existing.is_dir():
        return f"{existing} is a file, so nothing can be made under it"
    else:
        probe = existing
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # an existing folder that refuses new files (/proc): the OS says "no such file"
            return f"cannot write in {probe}: it takes no new files"
        return f"cannot write in {probe}: {exc.strerror or exc}"
    return None


def require_writable(path: str | os.PathLike, *, option: str, folder: bool = False) -> None:
    """:class:`~lazyapps.errors.LazyAppsError` naming ``option`` when :func:`check_writable` finds a reason."""
    from .errors import LazyAppsError

    reason = check_writable(path, folder=folder)
    if reason is not None:
        raise LazyAppsError(f"{option} {path}: cannot write there ({reason})")


def _is_checkpoint_metadata(path: Path) -> bool:
    """Whether ``path`` is a lazyapps checkpoint's metadata file (a small JSON object with its ``format``)."""
    import json

    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return False
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT
