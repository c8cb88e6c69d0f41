"""Few-shot tests: a silent fallback from vmap to the per-task loop is an error here.

Why: several tests compare the vmapped path with the loop; if vmap quietly fell
back to the loop those comparisons would compare the loop with itself.
"""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fewshot/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("error:vmap over tasks failed:RuntimeWarning"))
            item.add_marker(pytest.mark.filterwarnings("error:the model updates normalisation running statistics:RuntimeWarning"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (and stalls badly on a loaded machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def omniglot_tasks(data_root, session_cache):
    """Omniglot 5-way 1-shot train and test task sources on the real data (one pair per test module)."""
    from fewshot.datasets import task_source

    kw = dict(ways=5, shots=1, queries=2, root=data_root, cache_dir=session_cache)
    return task_source("omniglot", split="train", seed=0, **kw), task_source("omniglot", split="test", seed=1, **kw)
