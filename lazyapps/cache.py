"""Cached artefacts (zoo models, gradient sets, meta-attackers, decoded datasets).

Each artefact lives at ``<cache_root>/<kind>/<name>-<key>.<ext>`` where ``key``
is a hash of every setting that made it, so changed settings never reuse a
stale file. :func:`cached` rebuilds a corrupt file with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import CheckpointError
from .paths import cache_root


def settings_key(settings: Mapping[str, Any], *, length: int = 12) -> str:
    """A short stable hash of ``settings`` (JSON with sorted keys)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def content_digest(parts: Iterable[Any]) -> str:
    """A short BLAKE2b hash of ``parts`` in order: bytes as they are, tensors and arrays by their raw bytes.

    What identifies data by content (a zoo model's training data, a long-tail run's split): every byte is read,
    about 0.3 s for CIFAR-10, so a rewritten file never passes for the one hashed before.
    """
    import numpy as np

    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        if not isinstance(part, bytes):
            array = part.detach().cpu().numpy() if hasattr(part, "detach") else part
            part = memoryview(np.ascontiguousarray(array)).cast("B")
        digest.update(part)
    return digest.hexdigest()


def artefact_path(kind: str, name: str, settings: Mapping[str, Any], *, root: str | os.PathLike | None = None, ext: str = "pt") -> Path:
    """Where the artefact of ``kind``/``name`` made with ``settings`` is cached."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_root(root) / kind / f"{safe}-{settings_key(settings)}.{ext}"


def cached(
    kind: str,
    name: str,
    settings: Mapping[str, Any],
    build: Callable[[], Mapping[str, Any]],
    *,
    root: str | os.PathLike | None = None,
    map_location: str = "cpu",
    validate: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Load the cached checkpoint for ``settings`` or ``build()`` and cache it.

    ``build`` returns the state to save (a dict of tensors / state dicts /
    plain values). A corrupt cached file is rebuilt with a warning; so is one
    that loads but that ``validate(state)`` rejects with a
    :class:`CheckpointError` (a state dict of another shape, a missing entry).
    Returns ``(state, path)``.
    """
    path = artefact_path(kind, name, settings, root=root)
    if path.exists():
        try:
            state, _ = load_checkpoint(path, map_location=map_location)
            if validate is not None:
                validate(state)
            return state, path
        except CheckpointError as exc:
            warnings.warn(f"{exc.problem}; rebuilding it", stacklevel=2)  # (what happens, no advice: it is rebuilt)
    state = dict(build())
    save_checkpoint(path, state, {"kind": kind, "name": name, "settings": dict(settings)})
    return state, path
