"""Fetching missing datasets with torchvision, into the layouts the readers expect."""
from __future__ import annotations

import socket
from pathlib import Path

# Seconds any one socket operation may block: offline or behind a dead proxy,
# a download fails instead of hanging.
SOCKET_TIMEOUT_S = 20.0


def _mnist(root: Path) -> None:
    from torchvision.datasets import MNIST

    MNIST(str(root), train=True, download=True)  # fetches all four files into MNIST/raw


def _cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)  # extracts cifar-10-batches-py/


def _cifar100(root: Path) -> None:
    from torchvision.datasets import CIFAR100

    CIFAR100(str(root), train=True, download=True)  # extracts cifar-100-python/


def _omniglot(root: Path) -> None:
    from torchvision.datasets import Omniglot

    for background in (True, False):  # omniglot-py/images_{background,evaluation}.zip (+ extracted)
        Omniglot(str(root), background=background, download=True)


DOWNLOADERS = {"mnist": _mnist, "cifar10": _cifar10, "cifar100": _cifar100, "omniglot": _omniglot}


def download(name: str, root: Path) -> None:
    """Download dataset ``name`` into ``root`` with torchvision; any failure propagates as raised.

    A failed download leaves no folders behind that were not there before (torchvision makes its
    ``<root>/<NAME>/raw`` tree first), so a user's data root looks as it did.
    """
    made = [p for p in (root, *root.parents) if not p.exists()]  # innermost first
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(SOCKET_TIMEOUT_S)
    try:
        DOWNLOADERS[name](root)
    except BaseException:
        # what the failed download made, deepest first; only its empty folders go
        new = [q for top in set(root.iterdir()) - before for q in (top, *top.rglob("*")) if q.is_dir()]
        for path in [*sorted(new, key=lambda q: len(q.parts), reverse=True), *made]:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
    finally:
        socket.setdefaulttimeout(previous)
