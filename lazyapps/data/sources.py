"""Finding a dataset's files under the data root, and saying clearly where we looked."""
from __future__ import annotations

from pathlib import Path

from ..errors import LazyAppsError


class FilesMissing(Exception):
    """Raised by a reader whose files are not under the data root; ``searched`` lists where it looked."""

    def __init__(self, searched: list[str]):
        super().__init__(", ".join(searched))
        self.searched = searched


def find_bundle(folder: Path) -> Path | None:
    """The single ``*.npz`` array bundle in ``folder`` (``None`` where there is none).

    Several bundles are ambiguous: the error asks for ``npz:PATH`` instead.
    """
    if not folder.is_dir():
        return None
    bundles = sorted(folder.glob("*.npz"))
    if len(bundles) > 1:
        names = ", ".join(str(b) for b in bundles)
        raise LazyAppsError(f"several array bundles in {folder} ({names}); name one with --dataset npz:PATH")
    return bundles[0] if bundles else None


def first_existing(candidates: list[Path]) -> Path | None:
    """The first of ``candidates`` that is a file."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None
