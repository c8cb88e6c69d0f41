"""Shared fixtures: the real data root and a throw-away cache root."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Two cores on CI: more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # Benchmark entry points set the process's torch threads, as a script should; the tests after them must not
    # inherit it: float32 results round differently on one thread, and the 2-process long-tail comparisons failed
    # after tests/test_benchmark_scripts.py's scaling worker had set 1.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _data_root() -> Path | None:
    for candidate in (os.environ.get("LAZYAPPS_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder (``$LAZYAPPS_DATA`` or ``../shared/data``); tests that need it skip without it."""
    root = _data_root()
    if root is None:
        pytest.skip("real data not found: set LAZYAPPS_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A cache root shared by the whole test session (decoded datasets, small zoo models)."""
    return tmp_path_factory.mktemp("lazyapps-cache")


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    """A fresh, empty cache root for one test."""
    path = tmp_path / "cache"
    path.mkdir()
    return path
