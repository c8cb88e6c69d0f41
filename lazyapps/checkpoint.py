"""Checkpoints: tensors in a ``.pt`` file plus a JSON metadata file beside it.

Both are written atomically (temporary file in the same folder, then
``os.replace``), so an interrupted write never leaves a half-written file and
never destroys the previous checkpoint. Loading uses
``torch.load(..., weights_only=True)``: a checkpoint can hold tensors, numbers,
strings, lists and dicts, never pickled code.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, describe
from .paths import CHECKPOINT_FORMAT, meta_path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    from .distributed import may_write

    if not may_write():  # under torchrun rank 0 writes (or the builder of lazyapps.distributed.main_first)
        return
    if path.exists() and not path.is_file():  # a device or a pipe (--json /dev/stdout): written in place, never replaced
        with open(path, "wb") as handle:
            write(handle)
        return
    if path.is_symlink():  # a linked results file: replace the file the link points to, and keep the link
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would, so a shared cache or
        # results folder stays readable by the group as the user's umask allows.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the whole new one)."""
    _atomic_write(Path(path), lambda handle: handle.write(data))


def _finite(obj: Any) -> Any:
    """``obj`` with inf/nan floats as None: JSON has no such numbers, and strict readers refuse Python's NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, standard JSON to ``path`` atomically (inf and nan become null)."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode())


def with_metadata(files: Mapping[str, str | os.PathLike | None]) -> dict[str, Path]:
    """Each named checkpoint of ``files`` (``{"--checkpoint": path}``; None left out) and the ``.json`` beside it, named
    ``"the .json of <name>"``: the files a command must not overwrite (:func:`lazyapps.cli.distinct_outputs`'s ``keep``)."""
    return {what: file for name, path in files.items() if path is not None
            for what, file in ((name, Path(path)), (f"the .json of {name}", meta_path(path)))}


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``state`` (state dicts, tensors, plain values) to ``path`` and ``metadata`` to ``path.json``.

    The tensors are written first, then the metadata, each atomically; the
    metadata records the format so :func:`load_checkpoint` can check it.
    """
    path = Path(path)
    _atomic_write(path, lambda handle: torch.save(dict(state), handle))
    write_json_atomic(meta_path(path), {"format": CHECKPOINT_FORMAT, **(metadata or {})})
    return path


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of checkpoint ``path`` (an empty dict where the JSON file is absent)."""
    mpath = meta_path(path)
    if not mpath.exists():
        return {}
    try:
        meta = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata {mpath} is unreadable ({exc})",
                              fix="restore the .json written with the .pt, or pass another checkpoint") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {mpath} holds a JSON {type(meta).__name__}, not an object of settings",
                              fix="restore the .json written with the .pt, or pass another checkpoint")
    return meta


def resumed_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of checkpoint ``path`` given to ``--resume``, whose settings the resumed run takes: a missing
    checkpoint, or one without its ``.json``, is a :class:`CheckpointError` naming the fix."""
    if not Path(path).is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint file")
    meta = load_metadata(path)
    if not meta:
        raise CheckpointError(f"checkpoint {path} has no metadata file beside it ({meta_path(path).name}), so its "
                              f"settings cannot be read; keep the .json written with the .pt")
    return meta


#: why a ``.pt`` and a ``.json`` that disagree are refused, and what to do.
MIXED_FILES = "the .json was edited or belongs to another run; keep the .json written with the .pt"


def check_files_agree(path: str | os.PathLike, recorded: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """:class:`CheckpointError` when a setting ``recorded`` inside checkpoint ``path`` differs from its ``.json``.

    The ``.json`` is a separate file that can be edited or swapped, so a product that keeps the settings which
    define a run inside the ``.pt`` too checks the two before trusting the ``.json``.
    """
    for key, value in recorded.items():
        if key not in metadata or metadata[key] != value:
            found = f"{metadata[key]!r} in the .json" if key in metadata else "absent from the .json"
            raise CheckpointError(f"checkpoint {path} and its metadata disagree: {key} is {value!r} in the .pt but "
                                  f"{found}; {MIXED_FILES}")


def first_load_problem(exc: BaseException) -> str:
    """The first concrete problem of a failed ``load_state_dict``, on one line.

    torch heads its message "Error(s) in loading state_dict for X:" and lists the problems on the lines below; key
    lists are shortened to their first key.
    """
    if isinstance(exc, KeyError):
        return f"it holds no {exc.args[0]!r} entry"
    problems = [line.strip() for line in str(exc).splitlines() if line.strip()]
    problems = [line for line in problems if not line.startswith("Error(s) in loading state_dict")] or [describe(exc)]
    first, more = problems[0], len(problems) - 1
    keys = re.match(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)", first)
    if keys:
        names = re.findall(r'"([^"]+)"', keys.group(2))
        first = f"{keys.group(1).lower()} key {names[0] if names else keys.group(2)!r}"
        more += max(0, len(names) - 1)
    return first.rstrip(". ") + (f" (and {more} more)" if more else "")


def load_weights(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: how every checkpoint and user state dict is read.

    A plain pickle given as a checkpoint makes torch warn about its pickle protocol and ask for a torch issue
    before it refuses the file; that advice is not the user's to act on, so only the refusal reaches them.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def load_error(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in a few words.

    torch's own message for a file with pickled objects advises loading with ``weights_only=False``, which
    would run any code the file holds; that advice is not repeated to users.
    """
    if "weights_only" in str(exc):
        return "not a file of tensors that torch.load(weights_only=True) accepts"
    return describe(exc)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    expect: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(state, metadata)`` from ``path`` with ``weights_only=True``.

    ``expect`` maps metadata keys to required values (e.g. ``{"kind": "longtail",
    "dataset": "cifar10"}``); a mismatch raises :class:`CheckpointError` naming
    the key, so a checkpoint from other settings is never silently used.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    try:
        state = load_weights(path, map_location=map_location)
    except Exception as exc:  # corrupt, truncated, or not a weights-only file
        raise CheckpointError(f"checkpoint {path} cannot be read ({load_error(exc)}); it is corrupt or not a lazyapps checkpoint") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict of tensors; it is not a lazyapps checkpoint")
    metadata = load_metadata(path)
    if expect and not metadata:
        raise CheckpointError(f"checkpoint {path} has no metadata file {meta_path(path).name} beside it, so its settings "
                              f"cannot be checked; keep the .json written with the .pt")
    check_expected(path, metadata, expect or {})
    return state, metadata


def check_expected(path: str | os.PathLike, metadata: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    """:class:`CheckpointError` naming the first key of ``expect`` whose value ``metadata`` (of checkpoint ``path``) lacks.

    :func:`load_checkpoint` calls it; a product that checks more first (e.g. that the ``.pt`` and its ``.json``
    agree) loads with ``expect`` of its kind only and calls this afterwards.
    """
    for key, value in expect.items():
        found = metadata.get(key)
        if found != value:
            raise CheckpointError(f"checkpoint {path} was made with {key}={found!r}, but {key}={value!r} is needed here")
