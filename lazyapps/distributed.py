"""Running one command on several processes with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N -m lazyapps ...`` starts N copies of the command
and gives each ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`init_from_env` (called by every CLI command) joins
them into one process group: gloo on the CPU, NCCL on CUDA with the GPU
chosen by ``LOCAL_RANK``. Without those variables nothing happens and every
helper here is the identity of a single process, so code written with them
runs unchanged without torchrun.

What the products use:

* :func:`is_main` / :func:`may_write`: only rank 0 prints, shows progress bars
  and writes results and checkpoints (:mod:`lazyapps.progress`,
  :mod:`lazyapps.checkpoint` and ``RunContext`` ask these), so N processes
  leave exactly the files one process would;
* :func:`main_first`: rank 0 builds a cached artefact while the others wait,
  then they load it;
* :func:`shard`: this rank's contiguous part of ``range(n)`` (tasks of a
  meta-batch, images to attack, examples of a batch);
* :func:`all_reduce_mean`, :func:`average_gradients`, :func:`sync_optimizer`
  (:func:`sync_gradients` to average before the step, e.g. to clip the mean):
  averages across ranks, weighted by how many examples/tasks each rank had,
  so the result equals the single-process mean over the whole batch;
* :func:`all_gather_object`: per-rank results (any picklable object) on every
  rank, in rank order.

Importing this module does not import torch (``lazyapps --help`` stays fast);
torch loads when a helper that needs it runs.
"""
from __future__ import annotations

import contextlib
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: The variables torchrun sets for every process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

_owned_group = False  # whether init_from_env created the group (then shutdown destroys it)
_builder_depth = 0  # > 0 inside main_first on the rank that builds: its writes are wanted

#: How long :func:`main_first` lets the other ranks wait for the builder. Building a cache (training a zoo on a
#: CPU, say) can take hours, longer than a process group's own timeout (10 minutes under NCCL, 30 under gloo);
#: a builder that crashes ends the run at once through torchrun, so only a hung one is waited on this long.
BUILD_WAIT_S = 24 * 3600


def launched() -> bool:
    """Whether this process was started by torchrun (or anything that sets the same variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _dist():
    """``torch.distributed`` if torch is already imported and a process group exists, else None."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def is_initialized() -> bool:
    """Whether a default process group exists in this process."""
    return _dist() is not None


def rank() -> int:
    """This process's rank (0 in a single process)."""
    dist = _dist()
    if dist is not None:
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    dist = _dist()
    if dist is not None:
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1)) if launched() else 1


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; picks the GPU)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def is_distributed() -> bool:
    """Whether there is a process group with more than one process."""
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1


def is_main() -> bool:
    """Rank 0: the process that prints, shows progress and writes results."""
    return rank() == 0


def is_local_main() -> bool:
    """Local rank 0: the first process on this machine."""
    return local_rank() == 0 if launched() else rank() == 0


def may_write() -> bool:
    """Whether this process writes files: rank 0, or the builder inside :func:`main_first`."""
    return is_main() or _builder_depth > 0


def device_for(device: Any) -> Any:
    """``device`` with CUDA pinned to this process's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", local_rank())
    return device


def init_from_env(device: Any = "cpu", *, timeout_s: float | None = None) -> bool:
    """Join the process group described by torchrun's environment; returns whether one exists now.

    Backend: NCCL when ``device`` is CUDA (and ``torch.cuda.set_device`` to
    ``LOCAL_RANK``), gloo otherwise. Without torchrun's variables, or when a
    group already exists, nothing is created (a single process stays exactly
    as it was).
    """
    global _owned_group
    if not launched():
        return is_initialized()
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    device = device_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]), **kwargs)
    _owned_group = True
    return True


def shutdown() -> None:
    """Destroy the process group :func:`init_from_env` created; no-op otherwise (a group made by the caller stays)."""
    global _owned_group
    dist = _dist()
    if dist is not None and _owned_group:
        dist.destroy_process_group()
    _owned_group = False


def _build_wait_group() -> Any:
    """A CPU (gloo) group with :data:`BUILD_WAIT_S` as its timeout, for the barriers of :func:`main_first`.

    Made while every rank is present (creating a group waits for all members, with the store's shorter timeout).
    """
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return None
    import datetime

    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=BUILD_WAIT_S))


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first(*, per_node: bool = True) -> Iterator[bool]:
    """Rank 0 runs the block first (building and caching), the others wait, then run it (loading the cache).

    ``per_node``: the first process of each machine builds (right for caches on
    machine-local disks; on a shared disk the nodes' builders write the same
    file atomically). Inside the block the builder may write files even when
    it is not global rank 0. Yields whether this process is the builder.
    """
    global _builder_depth
    builder = is_local_main() if per_node else is_main()
    group = _build_wait_group()  # every rank enters main_first at the same point of the command: all are here
    if group is not None and not builder:
        _dist().barrier(group=group)
    if builder:
        _builder_depth += 1
    try:
        yield builder
    finally:
        if builder:
            _builder_depth -= 1
            if group is not None:
                _dist().barrier(group=group)
        if group is not None:
            _dist().destroy_process_group(group)


def shard_bounds(n: int, *, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of this rank's contiguous part of ``range(n)``; the first ``n % world`` ranks get one more."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def shard(items: int | Sequence[T], *, rank_: int | None = None, world: int | None = None) -> Any:
    """This rank's contiguous part of ``items`` (a sequence or tensor), or a ``slice`` of ``range(items)`` for an int.

    Concatenating every rank's part in rank order gives ``items`` back, which is
    how :func:`all_gather_object` results are put together again.
    """
    if isinstance(items, int):
        return slice(*shard_bounds(items, rank_=rank_, world=world))
    start, stop = shard_bounds(len(items), rank_=rank_, world=world)
    return items[start:stop]


def shard_chunks(n: int, chunk: int) -> slice:
    """This rank's contiguous share of ``range(n)`` made of whole chunks of ``chunk`` items (possibly empty).

    For work a single process does chunk by chunk (images attacked ``chunk`` at
    a time): giving each rank whole chunks keeps every item's computation, and
    so its floating-point result, exactly what one process computes.
    """
    chunk = max(1, int(chunk))
    start, stop = shard_bounds(-(-int(n) // chunk))
    return slice(min(start * chunk, n), min(stop * chunk, n))


def local_count(n: int, *, what: str) -> int:
    """How many of ``n`` items (tasks, images, examples) :func:`shard` gives this rank.

    Every rank needs at least one: with fewer items than processes a
    :class:`~lazyapps.errors.LazyAppsError` names ``what`` (the flag to raise).
    """
    if n < world_size():
        from .errors import LazyAppsError

        raise LazyAppsError(f"{what} {n} is smaller than the {world_size()} processes; each process needs at least one, "
                            f"so raise {what} or start fewer processes (torchrun --nproc_per_node)")
    start, stop = shard_bounds(n)
    return stop - start


def _comm_device() -> Any:
    """Where small bookkeeping tensors must live for the collective: the GPU for NCCL, else the CPU."""
    import torch

    dist = _dist()
    if dist is not None and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_metrics(metrics: Mapping[str, Any], *, weight: float = 1.0) -> dict[str, Any]:
    """Per-rank float metrics (a loss, an accuracy) averaged over ranks, weighted, so every rank logs the same numbers.

    Non-numeric entries are kept as this rank's. Identity in a single process.
    """
    if not is_distributed():
        return dict(metrics)
    import torch

    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    out = dict(metrics)
    if keys:
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_comm_device())
        mean = all_reduce_mean(values, weight=weight)
        out.update({k: float(v) for k, v in zip(keys, mean.tolist())})
    return out


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable; tensors are moved to the CPU first), in rank order, on every rank."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, _to_cpu(obj))
    return out


def _to_cpu(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def broadcast_object(obj: T, *, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [_to_cpu(obj) if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _weighted_sum(tensors: list, weight: float | None) -> tuple[list, float | None]:
    """All-reduce ``Σ_r weight_r · t_r`` (one flat buffer per dtype and device) and ``Σ_r weight_r``.

    ``weight=None``: the plain sum ``Σ_r t_r``, and no total (reading it back would wait for the device).
    """
    import torch
    import torch.distributed as dist

    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    out = list(tensors)
    total = None
    for n, ((dtype, device), idx) in enumerate(groups.items()):
        flat = torch.cat([tensors[i].detach().reshape(-1) * (1.0 if weight is None else weight) for i in idx])
        counted = n == 0 and weight is not None
        if counted:  # the weight rides along in the first buffer: one collective per dtype, no extra one
            flat = torch.cat([flat, torch.tensor([weight], dtype=dtype, device=device)])
        dist.all_reduce(flat)
        if counted:
            total = float(flat[-1])
            flat = flat[:-1]
        offset = 0
        for i in idx:
            k = tensors[i].numel()
            out[i] = flat[offset:offset + k].view_as(tensors[i])
            offset += k
    return out, total


def all_reduce_mean(tensors: Any, *, weight: float = 1.0) -> Any:
    """The mean over ranks of a tensor, a list of tensors or a dict of tensors, weighted by ``weight``.

    With ``weight`` = the number of examples (or tasks) a rank's values are the
    mean over, the result is the mean over all examples of all ranks, i.e.
    what one process computes on the whole batch. Floating tensors only; returns
    new tensors of the same structure (the input is returned in a single process).
    """
    import torch

    if not is_distributed():
        return tensors
    if isinstance(tensors, torch.Tensor):
        return all_reduce_mean([tensors], weight=weight)[0]
    if isinstance(tensors, Mapping):
        keys = list(tensors)
        return dict(zip(keys, all_reduce_mean([tensors[k] for k in keys], weight=weight)))
    tensors = list(tensors)
    if not tensors:
        return tensors
    summed, total = _weighted_sum(tensors, float(weight))
    if total <= 0:
        raise ValueError("all_reduce_mean: the weights of all ranks sum to zero")
    return [s / total for s in summed]


def mean_of_stacked(stacked: Mapping[str, Any]) -> dict[str, Any]:
    """The mean over the leading (task) dim of every rank's stacked tensors, with a leading dim of 1 kept.

    Reptile-style updates move θ towards the mean of the tasks' solutions: with
    each rank holding its tasks' φ_i stacked, this is the mean over all tasks.
    """
    first = next(iter(stacked.values()))
    local = {k: v.mean(0, keepdim=True) for k, v in stacked.items()}
    return all_reduce_mean(local, weight=int(first.shape[0]))


def sum_over_ranks(tensors: Any) -> Any:
    """The sum over ranks of a tensor, a list of tensors or a dict of tensors (one collective per dtype).

    For quantities each rank holds one additive part of, e.g. its examples'
    share of a batch sum or of a gradient Σ_i w_i ∇ℓ_i: the result is the sum
    over the whole batch, what one process computes. Floating tensors only;
    returns new tensors of the same structure (the input itself in a single process).
    """
    import torch

    if not is_distributed():
        return tensors
    if isinstance(tensors, torch.Tensor):
        return sum_over_ranks([tensors])[0]
    if isinstance(tensors, Mapping):
        keys = list(tensors)
        return dict(zip(keys, sum_over_ranks([tensors[k] for k in keys])))
    tensors = list(tensors)
    return _weighted_sum(tensors, None)[0] if tensors else tensors


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The sum over ranks of a few Python numbers (e.g. loss totals and example counts for a log line)."""
    import torch

    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return [float(v) for v in values]
    box = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(box)
    return box.tolist()


def average_gradients(params: Iterable[Any], *, weight: float = 1.0) -> None:
    """Replace each parameter's ``.grad`` by the ``weight``-weighted mean over ranks (in place, one collective).

    A parameter whose gradient is ``None`` on a rank counts as zero there; it
    stays ``None`` only where it is ``None`` on every rank (so optimisers such
    as Adam skip it exactly as a single process would).
    """
    import torch

    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    present = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], dtype=params[0].dtype, device=params[0].device)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    summed, total = _weighted_sum(grads + [present], float(weight))
    # The presence flags were summed with the same weights: > 0 means some rank had a gradient.
    for p, g, flag in zip(params, summed[:-1], summed[-1].tolist()):
        p.grad = (g / total).to(p.dtype) if flag > 0 else None


def sum_gradients(params: Iterable[Any]) -> None:
    """Replace each parameter's ``.grad`` by its sum over ranks (in place; a ``None`` gradient counts as zero).

    For losses split additively across ranks (each rank backpropagates its
    examples' part of one sum), where the plain sum, not the mean, is the
    single-process gradient.
    """
    if not is_distributed():
        return
    import torch

    params = [p for p in params if p.requires_grad]
    summed = sum_over_ranks([torch.zeros_like(p) if p.grad is None else p.grad for p in params])
    for p, g in zip(params, summed):
        p.grad = g


def sync_optimizer(optimizer: Any, *, weight: float | Callable[[], float] = 1.0) -> Any:
    """Make ``optimizer.step()`` first average every parameter's gradient over ranks (weighted).

    For meta-optimisers whose learner computes the meta-gradient of its local
    tasks: with ``weight`` = the number of local tasks the step uses the
    meta-gradient of the whole meta-batch. A step that must see that gradient
    before stepping (to clip its norm, say) calls :func:`sync_gradients` first,
    and the step then leaves it as it is. Returns the hook handle
    (``.remove()`` undoes it); a no-op handle in a single process.
    """
    if not is_distributed():
        return _NoHandle()
    sync = _GradientSync(weight)
    handle = optimizer.register_step_pre_hook(sync.hook)
    _SYNCS[optimizer] = sync
    return _SyncHandle(optimizer, sync, handle)


def sync_gradients(optimizer: Any) -> None:
    """Average now, over ranks, the gradients that ``optimizer.step()`` would average first (see :func:`sync_optimizer`).

    For a step that needs the whole batch's gradient before ``step()``: clipping
    each rank's gradient and then averaging is not clipping the average, so e.g.
    ``sync_gradients(opt); clip_grad_norm_(params, c); opt.step()`` clips what
    one process would clip. The step that follows does not average again; the
    steps after it average as usual. A no-op where the optimiser has no
    :func:`sync_optimizer` hook (one process).
    """
    sync = _SYNCS.get(optimizer)
    if sync is not None:
        sync.early(optimizer)


class _GradientSync:
    """The averaging behind :func:`sync_optimizer` and :func:`sync_gradients` (once per gradient)."""

    def __init__(self, weight: float | Callable[[], float]) -> None:
        self.weight = weight
        self.averaged = False  # sync_gradients has averaged the gradients the next step takes

    def average(self, optimizer: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        average_gradients(params, weight=self.weight() if callable(self.weight) else self.weight)

    def early(self, optimizer: Any) -> None:
        """:func:`sync_gradients`: average now; the next step then leaves the gradients alone."""
        self.average(optimizer)
        self.averaged = True

    def hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self.averaged:
            self.average(optimizer)
        self.averaged = False


#: optimiser -> the _GradientSync of its sync_optimizer hook (what sync_gradients runs early)
_SYNCS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _SyncHandle:
    def __init__(self, optimizer: Any, sync: _GradientSync, handle: Any) -> None:
        self._optimizer, self._sync, self._handle = optimizer, sync, handle

    def remove(self) -> None:
        self._handle.remove()
        if _SYNCS.get(self._optimizer) is self._sync:
            del _SYNCS[self._optimizer]


class _NoHandle:
    def remove(self) -> None:
        pass


def broadcast_module(module: Any, *, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank (in place)."""
    import torch
    import torch.distributed as dist

    if not is_distributed():
        return
    from torch import nn

    with torch.no_grad():
        # nn.Module's own methods: subclasses may shadow ``buffers`` (fewshot's learners make it a property).
        for t in list(nn.Module.parameters(module)) + list(nn.Module.buffers(module)):
            dist.broadcast(t.data, src=src)


def broadcast_buffers(module: Any, *, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) into ``module`` on every rank."""
    import torch
    import torch.distributed as dist
    from torch import nn

    if not is_distributed():
        return
    with torch.no_grad():
        for t in nn.Module.buffers(module):
            dist.broadcast(t.data, src=src)


def wrap_ddp(module: Any, **options: Any) -> Any:
    """``DistributedDataParallel(module)`` under torchrun (on the module's GPU, or CPU with gloo); None in one process.

    Its constructor copies rank 0's parameters and buffers to every rank; its
    backward averages the gradients over ranks (equal weights: scale each
    rank's loss by ``local / (global / world)`` when shares differ, see
    :func:`loss_scale`).
    """
    if not is_distributed():
        return None
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None, **options)


def loss_scale(local: int, total: int) -> float:
    """The factor that turns DDP's plain mean over ranks of per-rank mean losses into the mean over all ``total`` examples."""
    return local * world_size() / total if total else 0.0


__all__ = [
    "TORCHRUN_ENV", "launched", "init_from_env", "shutdown", "is_initialized", "is_distributed", "rank", "world_size",
    "local_rank", "is_main", "is_local_main", "may_write", "device_for", "barrier", "main_first", "shard",
    "shard_bounds", "shard_chunks", "local_count", "mean_metrics", "all_gather_object", "broadcast_object", "all_reduce_mean", "mean_of_stacked", "all_reduce_sum",
    "sum_over_ranks", "average_gradients", "sum_gradients", "sync_optimizer", "sync_gradients", "broadcast_module", "broadcast_buffers", "wrap_ddp", "loss_scale",
]
