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
    """Download dataset ``name`` into ``root`` with torchvision; any failure propagates as raised."""
    root.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(SOCKET_TIMEOUT_S)
    try:
        DOWNLOADERS[name](root)
    finally:
        socket.setdefaulttimeout(previous)
