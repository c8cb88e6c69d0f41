"""Warnings torch raises about its own internals, which no user can act on, kept out of the output.

torch's forward-mode AD (iMAML's Hessian-vector products, the long-tail JVP pull-back) scripts its own
decompositions on first use, and ``torch.jit.script`` then warns that it is deprecated. Torch-free, so the
CLI can install the filter before anything imports torch.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

_INTERNAL = {"message": "`torch.jit.script` is deprecated", "category": FutureWarning}


def hide_internal_warnings() -> None:
    """For the whole process (the CLI)."""
    warnings.filterwarnings("ignore", **_INTERNAL)


@contextlib.contextmanager
def forward_mode_ad() -> Iterator[None]:
    """Around a ``torch.func.jvp`` called from the Python API, which then stays as quiet as the CLI."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **_INTERNAL)
        yield
