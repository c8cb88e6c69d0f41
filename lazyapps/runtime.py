"""Devices and seeds."""
from __future__ import annotations

import random

import numpy as np
import torch

from .errors import LazyAppsError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LazyAppsError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise LazyAppsError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and random; returns a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
