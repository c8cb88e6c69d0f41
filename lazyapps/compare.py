"""Saved results side by side: what ``lazyapps compare`` prints.

Every command's ``--json`` writes a result object (:mod:`lazyapps.results`). To compare runs (a lazy method
against its baseline, one seed against another, a resumed run against the original) the files are read
back, their settings and numbers flattened to dotted keys (``best.top1_error``, ``hparams.inner_lr``), and
lined up: the settings where the runs differ, then every result.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import LazyAppsError, describe

RESULT_KEYS = ("command", "config", "metrics")
KEY_COLUMN = "key"  # the first column: the dotted key of each row; no file's column may take this name
SECTION_COLUMN = "section"  # the CSV's column before it: setting or result; no file's column may take it either
#: A list of plain values up to this long is one cell (``gammas``, ``counts``); longer lists, and lists of
#: records (per-class rows, learning curves), are left out of the table and named under it.
MAX_LIST = 20

Scalar = str | int | float | bool | None


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """The result object in ``path``; a file that is not one is refused with one line naming it."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise LazyAppsError(f"{path}: not a text file; compare takes the JSON files that --json writes") from None
    try:
        result = json.loads(text)
    except ValueError as exc:
        raise LazyAppsError(f"{path}: not valid JSON ({describe(exc)}); compare takes the files that --json writes") from None
    if not isinstance(result, dict) or any(key not in result for key in RESULT_KEYS):
        raise LazyAppsError(f"{path}: not a lazyapps result (it needs {', '.join(map(repr, RESULT_KEYS))}); "
                            f"compare takes the files that --json writes")
    for key in ("config", "metrics"):
        if not isinstance(result[key], dict):
            raise LazyAppsError(f"{path}: its {key!r} is not an object; compare takes the files that --json writes")
    return result


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Scalar], list[str]]:
    """(dotted key -> cell value, keys left out): nested objects become dotted keys.

    A short list of plain values becomes one comma-separated cell (an empty one ``[]``, so it is told apart
    from a null, ``-``, and from a one-item list of an empty string); longer lists and lists of objects are
    left out (their keys are returned so the table can say so).
    """
    cells: dict[str, Scalar] = {}
    left_out: list[str] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            inner, skipped = flatten(value, f"{name}.")
            cells.update(inner)
            left_out += skipped
        elif isinstance(value, (list, tuple)):
            if len(value) <= MAX_LIST and all(_plain(v) for v in value):
                cells[name] = ",".join(_cell_text(v) for v in value) if value else "[]"
            else:
                left_out.append(name)
        else:
            cells[name] = value
    return cells, left_out


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _cell_text(value: Scalar) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Column names: the shortest path endings that tell the files apart (``a/result.json`` and ``b/result.json``)."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) and not {KEY_COLUMN, SECTION_COLUMN} & set(names):
            return names
    return [f"{i + 1}:{os.fspath(p)}" for i, p in enumerate(paths)]  # the same file given twice


def compare(results: Sequence[Mapping[str, Any]], columns: Sequence[str], *, all_settings: bool = False) -> dict[str, Any]:
    """Line up ``results`` (result objects) under ``columns``.

    Returns ``settings`` (rows of the config keys whose values differ, or all of them with ``all_settings``;
    a key absent from a result counts as null there), ``results`` (rows of every metric, then the wall time),
    ``left_out`` (keys of lists not shown) and ``all_settings``. Each
    row is ``{KEY_COLUMN: dotted key, column: value, ...}``; a key one result lacks has ``None`` there.
    """
    if len(results) != len(columns) or len(set(columns)) != len(columns) or {KEY_COLUMN, SECTION_COLUMN} & set(columns):
        raise ValueError(f"need one distinct column name per result, none of them {KEY_COLUMN!r} or {SECTION_COLUMN!r}; "
                         f"got {list(columns)}")
    configs, metrics, left_out = [], [], []
    for result in results:
        config, skipped_config = flatten(result["config"])
        metric, skipped_metrics = flatten(result["metrics"])
        configs.append(config)
        metrics.append(metric)
        left_out += [f"config.{k}" for k in skipped_config] + [f"metrics.{k}" for k in skipped_metrics]
    commands = [r["command"] for r in results]
    settings = [] if len(set(map(str, commands))) == 1 else [{KEY_COLUMN: "command", **dict(zip(columns, commands))}]
    for key in _union(configs):
        values = [c.get(key) for c in configs]
        if all_settings or len({json.dumps(v) for v in values}) > 1:  # (absent and null both show "-": the same)
            settings.append({KEY_COLUMN: key, **dict(zip(columns, values))})
    rows = [{KEY_COLUMN: key, **dict(zip(columns, (m.get(key) for m in metrics)))} for key in _union(metrics)]
    rows.append({KEY_COLUMN: "elapsed_s", **dict(zip(columns, (r.get("elapsed_s") for r in results)))})
    return {"columns": list(columns), "settings": settings, "results": rows, "left_out": sorted(set(left_out)),
            "all_settings": all_settings}


def _union(dicts: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for d in dicts:
        keys.update(dict.fromkeys(d))
    return list(keys)  # first appearance order: each command's own order of its settings and results


def format_comparison(table: Mapping[str, Any]) -> str:
    """The comparison as text: the differing settings, the results, and what was left out."""
    from .results import format_table

    columns = [KEY_COLUMN, *table["columns"]]
    if table["settings"]:
        title = "settings" if table.get("all_settings") else "settings that differ"
        parts = [format_table(table["settings"], columns, title=title)]
    else:
        parts = ["same settings"]
    parts.append(format_table(table["results"], columns, title="results"))
    if table["left_out"]:
        parts.append("not shown (lists; see the files): " + ", ".join(table["left_out"]))
    return "\n\n".join(parts)
