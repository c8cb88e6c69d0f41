"""The ``--plot`` option every command shares: checked before any work, drawn with matplotlib, written atomically.

matplotlib is the optional ``plot`` extra (``pip install 'lazyapps[plot]'``).
The option's callback checks at parse time that it is installed and can write
the file's format, so a long training run never ends in a plot error; the
figure goes through :func:`~lazyapps.checkpoint.write_bytes_atomic`, like
every other result file.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import LazyAppsError


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or one line saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LazyAppsError("--plot needs matplotlib: pip install 'lazyapps[plot]' (or pip install matplotlib), "
                            "or leave out --plot") from None
    return plt


def image_formats() -> list[str]:
    """File extensions matplotlib can write (png, pdf, svg, ...)."""
    pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_plot_path(path: str | None) -> str | None:
    """``path`` if a figure can be written there, else :class:`LazyAppsError` naming why (before any work is done)."""
    if path is None:
        return None
    from .paths import require_writable

    require_writable(path, option="--plot")
    suffix = Path(path).suffix.lower().lstrip(".")
    formats = image_formats()
    if suffix not in formats:
        raise LazyAppsError(f"--plot {path}: give the file one of the image extensions matplotlib writes "
                            f"({', '.join(formats)})")
    return path


def plot_option(help: str) -> Callable:
    """The ``--plot PATH`` click option, checked by :func:`check_plot_path` when the command line is parsed."""
    return click.option("--plot", type=click.Path(dir_okay=False), default=None, help=f"{help} (needs matplotlib).",
                        callback=_plot_path)


def _plot_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return check_plot_path(value)


_plot_path.writes_file = True  # (an output file: see lazyapps.cli.common_options)


def save_figure(fig: Any, path: str) -> None:
    """Write ``fig`` to ``path`` in the format its extension names, atomically, and close it."""
    from .checkpoint import write_bytes_atomic

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format=Path(path).suffix.lower().lstrip("."))
    pyplot().close(fig)
    write_bytes_atomic(path, buffer.getvalue())  # (under torchrun only rank 0 writes)
