"""lazyapps.distributed: single-process identity, and the collectives on 2 gloo CPU processes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lazyapps import distributed as D
from tests.spawn import run_ranks


def test_without_torchrun_everything_is_one_process(monkeypatch, tmp_path):
    for name in D.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not D.launched()
    assert D.init_from_env("cpu") is False
    assert not torch.distributed.is_initialized()  # no process group was created
    assert (D.rank(), D.world_size(), D.is_main(), D.may_write(), D.is_distributed()) == (0, 1, True, True, False)
    assert D.shard(7) == slice(0, 7) and D.shard([1, 2, 3]) == [1, 2, 3]
    t = {"a": torch.ones(2)}
    assert D.all_reduce_mean(t, weight=3) is t
    assert D.all_gather_object({"x": 1}) == [{"x": 1}]
    with D.main_first() as builder:
        assert builder
    D.barrier()
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 4.0)
    D.average_gradients([p], weight=5)
    opt = torch.optim.SGD([p], lr=1.0)
    assert D.sync_optimizer(opt, weight=5) is not None
    D.sync_gradients(opt)
    D.sum_gradients([p])
    assert torch.equal(p.grad, torch.full((2,), 4.0))
    assert D.sum_over_ranks(t) is t
    from lazyapps.checkpoint import write_json_atomic

    write_json_atomic(tmp_path / "x.json", {"a": 1})  # rank 0 of one: writes
    assert (tmp_path / "x.json").exists()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 10])
def test_shards_partition_in_order(n, world):
    parts = [D.shard(list(range(n)), rank_=r, world=world) for r in range(world)]
    assert sum(parts, []) == list(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    slices = [D.shard(n, rank_=r, world=world) for r in range(world)]
    assert [list(range(n))[s] for s in slices] == parts


def test_device_for_pins_cuda_to_local_rank(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert D.device_for("cuda") == torch.device("cuda", 1)
    assert D.device_for("cuda:0") == torch.device("cuda", 0)
    assert D.device_for("cpu") == torch.device("cpu")
    # Launched but no group yet: the rank comes from the environment, and rank 3 stays silent.
    assert (D.rank(), D.world_size(), D.is_main(), D.is_local_main(), D.may_write()) == (3, 4, False, False, False)


def _collectives(folder: str) -> dict:
    """Runs on each rank: every helper, with rank-dependent inputs whose combined result is known in closed form."""
    from lazyapps import progress
    from lazyapps.checkpoint import save_checkpoint, write_json_atomic

    r = D.rank()
    out: dict = {"rank": r, "world": D.world_size(), "distributed": D.is_distributed(), "main": D.is_main()}
    # Rank r holds the mean of (r + 1) examples; weights make it the mean over all examples.
    local = {"a": torch.full((3,), float(r + 1)), "b": torch.tensor([[1.0, -1.0]]) * (r + 1), "c": torch.tensor([r], dtype=torch.float64)}
    out["mean"] = D.all_reduce_mean(local, weight=r + 1)
    out["plain"] = D.all_reduce_mean(torch.tensor([float(r)]))
    out["sums"] = D.all_reduce_sum([r, 1])
    out["tensor_sums"] = D.sum_over_ranks({"a": torch.full((2,), float(r + 1)), "c": torch.tensor([r + 0.5], dtype=torch.float64)})
    out["gathered"] = D.all_gather_object({"rank": r, "t": torch.tensor([r])})
    out["broadcast"] = D.broadcast_object(f"from {r}")
    out["shard"] = D.shard(list(range(5)))

    # Gradients: p1 has a gradient on rank 0 only, p2 on none, p3 on both.
    p1, p2, p3 = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    p1.grad = torch.full((2,), 6.0) if r == 0 else None
    p3.grad = torch.full((2,), float(r + 1))
    D.average_gradients([p1, p2, p3], weight=r + 1)
    out["grads"] = [None if p.grad is None else p.grad.clone() for p in (p1, p2, p3)]
    q1, q2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    q1.grad = torch.full((2,), float(r + 1))
    q2.grad = torch.ones(1) if r == 1 else None
    D.sum_gradients([q1, q2])  # parts of one sum: the plain sum over ranks, None counting as zero
    out["summed_grads"] = [q1.grad.clone(), q2.grad.clone()]

    # An optimiser whose step averages the gradients first (what the meta-learners use).
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=1.0)
    handle = D.sync_optimizer(opt, weight=lambda: r + 1)
    w.grad = torch.full((2,), float(r + 1))
    opt.step()
    handle.remove()
    out["stepped"] = w.detach().clone()
    # sync_gradients averages before the step (to clip the mean); that step does not average again, the next one does.
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=1.0)
    handle = D.sync_optimizer(opt, weight=r + 1)
    w.grad = torch.full((2,), float(r + 1))
    D.sync_gradients(opt)
    out["synced"] = w.grad.clone()
    w.grad.mul_(r + 1)  # rank-dependent, in place: a second averaging would make the ranks agree again
    opt.step()
    out["synced_step"] = w.detach().clone()
    opt.zero_grad()
    w.grad = torch.full((2,), float(r + 1))  # a new gradient: averaged by the step as usual
    opt.step()
    out["next_step"] = w.detach().clone()
    handle.remove()
    w.grad = torch.full((2,), float(r + 1))
    D.sync_gradients(opt)  # no hook any more: nothing happens
    out["after_remove"] = w.grad.clone()

    # Different parameters on each rank; broadcast makes them rank 0's.
    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight.fill_(float(r))
    D.broadcast_module(module)
    out["broadcast_weight"] = module.weight.detach().clone()

    # main_first: the builder writes the file, the others find it when they enter.
    folder = Path(folder)
    with D.main_first() as builder:
        if builder:
            write_json_atomic(folder / "cache.json", {"by": r})
        out["cache_seen"] = (folder / "cache.json").exists()
        out["builder"] = builder
    # Outside main_first only rank 0 writes; rank 1's attempts leave nothing.
    write_json_atomic(folder / f"result-{r}.json", {"r": r})
    save_checkpoint(folder / f"ckpt-{r}.pt", {"x": torch.ones(1)})
    D.barrier()
    out["files"] = sorted(p.name for p in folder.iterdir())
    # Progress and status lines: rank 0 only, even on a terminal.
    import io

    saved = sys.stderr
    sys.stderr = io.StringIO()
    sys.stderr.isatty = lambda: True
    try:
        progress.set_quiet(False)
        out["progress_enabled"] = progress.enabled()
        progress.status("hello")
        out["status_text"] = sys.stderr.getvalue()
    finally:
        sys.stderr = saved
    return out


def test_collectives_on_two_gloo_processes(tmp_path):
    results = run_ranks(_collectives, str(tmp_path), world=2)
    r0, r1 = results
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 and r["distributed"] for r in results)
    assert (r0["main"], r1["main"]) == (True, False)
    # weighted mean: (1·1 + 2·2) / 3 for "a"; closed form per entry.
    for res in results:
        torch.testing.assert_close(res["mean"]["a"], torch.full((3,), 5 / 3))
        torch.testing.assert_close(res["mean"]["b"], torch.tensor([[5 / 3, -5 / 3]]))
        torch.testing.assert_close(res["mean"]["c"], torch.tensor([2 / 3], dtype=torch.float64))
        assert res["mean"]["c"].dtype == torch.float64
        torch.testing.assert_close(res["plain"], torch.tensor([0.5]))
        assert res["sums"] == [1.0, 2.0]
        torch.testing.assert_close(res["tensor_sums"]["a"], torch.full((2,), 3.0))
        torch.testing.assert_close(res["tensor_sums"]["c"], torch.tensor([2.0], dtype=torch.float64))
        torch.testing.assert_close(res["summed_grads"][0], torch.full((2,), 3.0))
        torch.testing.assert_close(res["summed_grads"][1], torch.ones(1))
        assert [g["rank"] for g in res["gathered"]] == [0, 1] and res["gathered"][1]["t"].tolist() == [1]
        assert res["broadcast"] == "from 0"
        g1, g2, g3 = res["grads"]
        torch.testing.assert_close(g1, torch.full((2,), 6.0 * 1 / 3))  # zero on rank 1, weights 1 and 2
        assert g2 is None  # no rank had one: stays None (Adam skips it like a single process)
        torch.testing.assert_close(g3, torch.full((2,), 5 / 3))
        torch.testing.assert_close(res["stepped"], torch.full((2,), -5 / 3))
        torch.testing.assert_close(res["synced"], torch.full((2,), 5 / 3))
        torch.testing.assert_close(res["synced_step"], torch.full((2,), -5 / 3 * (res["rank"] + 1)))
        torch.testing.assert_close(res["next_step"], res["synced_step"] - 5 / 3)
        torch.testing.assert_close(res["after_remove"], torch.full((2,), float(res["rank"] + 1)))
        torch.testing.assert_close(res["broadcast_weight"], torch.zeros(2, 2))
        assert res["cache_seen"]
        assert res["files"] == ["cache.json", "ckpt-0.pt", "ckpt-0.pt.json", "result-0.json"]
    assert (r0["builder"], r1["builder"]) == (True, False)
    assert r0["shard"] == [0, 1, 2] and r1["shard"] == [3, 4]
    assert (r0["progress_enabled"], r1["progress_enabled"]) == (True, False)
    assert (r0["status_text"], r1["status_text"]) == ("hello\n", "")



def test_scaling_benchmark_smoke(tmp_path, data_root):
    """benchmarks/scaling.py --smoke: every product on 1 and 2 torchrun processes, a table and a JSON."""
    import json
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "scaling.json"
    env = {**os.environ, "LAZYAPPS_DATA": str(data_root), "LAZYAPPS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "scaling.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["metrics"]["rows"]
    assert sorted((r["product"], r["processes"]) for r in rows) == sorted(
        (p, n) for p in ("fewshot", "longtail", "longtail-local-bn", "attack") for n in (1, 2))
    assert all(r["throughput"] > 0 and r["seconds"] > 0 for r in rows)
    assert all(r["speedup"] == 1.0 for r in rows if r["processes"] == 1)
    for product in ("fewshot", "longtail-local-bn", "attack"):
        assert product in proc.stdout


def test_chunk_shards_and_local_counts_per_rank(monkeypatch):
    """Launched without a group: the rank comes from the environment, so every rank's share can be checked here."""
    from lazyapps.errors import LazyAppsError

    for name in D.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert D.shard_chunks(10, 4) == slice(0, 10) and D.local_count(1, what="--n") == 1  # one process: everything
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    parts, counts = [], []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        parts.append(D.shard_chunks(10, 3))  # chunks [0:3] [3:6] [6:9] [9:10] -> 2, 1, 1 chunks
        counts.append(D.local_count(3, what="--n"))
    assert parts == [slice(0, 6), slice(6, 9), slice(9, 10)] and counts == [1, 1, 1]
    with pytest.raises(LazyAppsError, match="--n 2 is smaller than the 3 processes"):
        D.local_count(2, what="--n")


def _weighted_helpers(folder: str) -> dict:
    r = D.rank()
    out: dict = {}
    # rank r's metrics are means over r + 1 examples; bools and strings stay this rank's
    out["metrics"] = D.mean_metrics({"loss": float(r), "count": r + 1, "flag": r == 0, "name": f"r{r}"}, weight=r + 1)
    # rank r holds r + 1 stacked task solutions, all equal to r
    out["stacked"] = D.mean_of_stacked({"w": torch.full((r + 1, 2), float(r))})
    out["scale"] = D.loss_scale(r + 1, 3)
    try:  # no rank has an example: there is no mean (not a silent 0/0)
        D.all_reduce_mean(torch.ones(2), weight=0)
        out["no_weight"] = None
    except ValueError as exc:
        out["no_weight"] = str(exc)
    bn = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.running_mean.fill_(float(r + 1))
    D.broadcast_buffers(bn)
    out["running_mean"] = bn.running_mean.clone()
    # broadcast_module copies the buffers too (BatchNorm statistics), not only the parameters
    bn = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.weight.fill_(float(r + 1))
        bn.running_var.fill_(float(r + 1))
    D.broadcast_module(bn)
    out["module_state"] = (bn.weight.detach().clone(), bn.running_var.clone())
    # LOCAL_RANK is 0 on both ranks (two machines): per node both build, globally only rank 0
    with D.main_first() as per_node:
        out["per_node"] = per_node
        if per_node:  # each node's builder writes its cache, also where it is not global rank 0
            from lazyapps.checkpoint import write_json_atomic

            write_json_atomic(Path(folder, f"node-cache-{r}.json"), {"by": r})
    with D.main_first(per_node=False) as global_builder:
        out["global"] = global_builder
        if global_builder:
            Path(folder, "built").write_text(str(r))
    return out


def test_weighted_helpers_and_builders_on_two_ranks(tmp_path):
    r0, r1 = run_ranks(_weighted_helpers, str(tmp_path), world=2, env={"LOCAL_RANK": "0"})
    for r, res in enumerate((r0, r1)):
        assert res["metrics"]["loss"] == pytest.approx((0 * 1 + 1 * 2) / 3)
        assert res["metrics"]["count"] == pytest.approx((1 * 1 + 2 * 2) / 3)
        assert res["metrics"]["flag"] == (r == 0) and res["metrics"]["name"] == f"r{r}"
        torch.testing.assert_close(res["stacked"]["w"], torch.full((1, 2), 2 / 3))  # mean over the 3 tasks
        torch.testing.assert_close(res["running_mean"], torch.ones(2))  # rank 0's statistics
        torch.testing.assert_close(res["module_state"][0], torch.ones(2))  # rank 0's parameters
        torch.testing.assert_close(res["module_state"][1], torch.ones(2))  # and rank 0's buffers
        assert res["per_node"]
        assert res["no_weight"] == "all_reduce_mean: the weights of all ranks sum to zero"
    assert (tmp_path / "node-cache-0.json").exists() and (tmp_path / "node-cache-1.json").exists()
    assert (r0["scale"], r1["scale"]) == (pytest.approx(2 / 3), pytest.approx(4 / 3))  # DDP's plain mean × scale = mean over 3
    assert (r0["global"], r1["global"]) == (True, False) and (tmp_path / "built").read_text() == "0"


def _peer_lines() -> list:
    from lazyapps.cli import _peer_gone

    return [_peer_gone(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234\nmore detail")),
            _peer_gone(RuntimeError("some other failure")),
            # this rank's own backend failure is not a lost peer
            _peer_gone(RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error, NCCL version 2.21")),
            _peer_gone(RuntimeError("[gloo] Timed out waiting 1800000ms for recv operation to complete"))]


def test_a_collective_broken_by_another_rank_is_one_line_naming_this_rank():
    """When one process of a torchrun run stops on an error, the others' next collective fails: one line each."""
    from lazyapps.cli import _peer_gone

    assert _peer_gone(RuntimeError("[gloo] Connection closed by peer")) is None  # one process: not this case
    r0, r1 = run_ranks(_peer_lines, world=2)
    assert r1[0] == ("rank 1: another process of this run stopped (its error is above), so this one stops too "
                     "([gloo] Connection closed by peer [127.0.0.1]:1234)")
    assert r0[0].startswith("rank 0: ") and r0[1:] == [None, None, None] and r1[1:] == [None, None, None]


def _slow_builder(build_s: float) -> dict:
    import time

    started = time.perf_counter()
    with D.main_first() as builder:
        if builder:
            time.sleep(build_s)
        waited = time.perf_counter() - started
    D.barrier()  # the process group's own collectives keep its (short) timeout
    return {"builder": builder, "waited": waited}


def test_main_first_waits_for_a_builder_longer_than_the_group_timeout():
    """Building a cache can outlast the process group's timeout (NCCL's default is 10 minutes): the others wait."""
    r0, r1 = run_ranks(_slow_builder, 4.0, world=2, timeout_s=1.5)
    assert (r0["builder"], r1["builder"]) == (True, False)
    assert r1["waited"] >= 4.0  # rank 1 entered only once rank 0 had built
    assert D.BUILD_WAIT_S >= 3600


def test_shutdown_leaves_a_process_group_the_caller_made(monkeypatch, tmp_path):
    """Only the group init_from_env created is destroyed: a caller's own group (a notebook, a launcher) stays."""
    for name in D.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert D.init_from_env("cpu") is True  # a group exists already: joined as it is, not re-created
        D.shutdown()
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()
