"""Running a test function on N local processes joined by a gloo process group, as torchrun would.

Each process gets torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT`` on a free port) and joins through
:func:`lazyapps.distributed.init_from_env`, so the code path under test is the
one ``torchrun --nproc_per_node N`` takes. Processes are forked (no re-import
of torch: fast on two cores) and run one intra-op thread each, as DataLoader
workers do, so OpenMP is never used across the fork.
"""
from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nobody listens on right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, out: str, args: tuple, env: dict, timeout_s: float) -> None:
    import torch

    from lazyapps import distributed

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **env})
    distributed.init_from_env("cpu", timeout_s=timeout_s)
    try:
        result = fn(*args)
    finally:
        distributed.shutdown()
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2, env: dict[str, str] | None = None,
              timeout_s: float = 90) -> list[Any]:
    """``[fn(*args) on rank 0, ..., on rank world-1]``, each rank in its own process (a failure re-raises here).

    ``timeout_s``: the process group's timeout (how long a collective waits for the other ranks).
    """
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_entry, args=(fn, world, free_port(), out, args, dict(env or {}), timeout_s), nprocs=world,
                           join=True, start_method="fork")
        return [pickle.loads(Path(out, f"rank{r}.pkl").read_bytes()) for r in range(world)]
