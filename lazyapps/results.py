"""Results: a JSON object (``command``, ``config``, ``metrics``, ``versions``,
``elapsed_s``) and a readable table on stdout."""
from __future__ import annotations

import csv
import io
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from .checkpoint import write_bytes_atomic, write_json_atomic


def versions() -> dict[str, str]:
    """Versions of Python, lazyapps and the main libraries, for reproducibility."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("lazyapps", "torch", "torchvision", "timm", "foolbox", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def make_result(command: str, config: Mapping[str, Any], metrics: Mapping[str, Any], elapsed_s: float, **extra: Any) -> dict[str, Any]:
    """The result object every command writes with ``--json``."""
    return {
        "command": command,
        "config": dict(config),
        "metrics": dict(metrics),
        "versions": versions(),
        "elapsed_s": round(float(elapsed_s), 3),
        **extra,
    }


def write_result(path: str | os.PathLike, result: Mapping[str, Any]) -> None:
    """Write a result object as JSON, atomically."""
    write_json_atomic(path, dict(result))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, title: str | None = None,
                 left: Sequence[str] = ()) -> str:
    """Render ``rows`` (dicts) as an aligned plain-text table: the first column and ``left`` ones (prose) flush left."""
    columns = list(columns or (rows[0].keys() if rows else []))
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = ([title] if title else []) + [line, "  ".join("-" * w for w in widths)]
    flush_left = [i == 0 or c in left for i, c in enumerate(columns)]
    out += ["  ".join(v.ljust(w) if flush else v.rjust(w) for v, w, flush in zip(r, widths, flush_left)) for r in cells]
    return "\n".join(out)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Write rows (dicts) as CSV, atomically (the checkpoint module's writer)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, text.getvalue().encode())  # (under torchrun only rank 0 writes)
