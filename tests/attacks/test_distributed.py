"""The attack on 2 gloo CPU processes: caches built once by rank 0, images split, outcomes gathered in order,
and the meta-attack's per-image numbers identical to one process's."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.spawn import run_ranks

#: A pipeline small enough for a test: one zoo model on a few hundred images, one meta-iteration, and an
#: untrained target (a user model file: nothing to train, and easy to fool, so images finish early).
#: attack_batch 2 with 4 images: two chunks, one per rank.
OVERRIDES = {"n_images": 4, "attack_batch": 2, "max_queries": 1500, "zoo_subset": 256, "grad_images": 16,
             "meta_iterations": 1, "meta_batch": 4}


def _attack(data_root: str, cache: str, method: str, target: str) -> dict:
    from attacks.cli import run_attack
    from lazyapps import distributed
    from lazyapps.cli import RunContext

    run = RunContext("attack", data_dir=data_root, cache_dir=cache, device_name="cpu", seed=0, quiet=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: one thread per process
    try:
        result = run_attack(run, target_spec=target, targeted=False, method=method, overrides=OVERRIDES,
                            zoo_spec="lenet5", preset="smoke")
    finally:
        torch.set_num_threads(threads)
    out = result["outcome"]
    return {"rows": out.rows(), "x_adv": out.x_adv, "test_index": result["test_index"].tolist(),
            "files": sorted(str(p.relative_to(cache)) for p in Path(cache).rglob("*") if p.is_file()),
            "rank": distributed.rank()}


@pytest.fixture(scope="module")
def two_rank_run(data_root, tmp_path_factory):
    """A cold cache: rank 0 trains the zoo and target, computes the gradient set and meta-trains; rank 1 waits, loads."""
    folder = tmp_path_factory.mktemp("distributed-attack")
    import models_zoo

    torch.manual_seed(0)
    torch.save(models_zoo.create("net4").state_dict(), folder / "net4.pt")
    target = f"net4:{folder / 'net4.pt'}"
    cache = folder / "cache"
    r0, r1 = run_ranks(_attack, str(data_root), str(cache), "lazy-meta", target, world=2)
    return cache, target, r0, r1


def test_meta_attack_split_over_two_processes_gives_the_single_process_numbers(data_root, two_rank_run):
    cache, target, r0, r1 = two_rank_run
    single = _attack(str(data_root), str(cache), "lazy-meta", target)  # warm cache: what rank 0 built
    assert r0["files"] == single["files"]  # the one-process run found everything built and built nothing more
    assert any(f.startswith("meta_attackers/") for f in single["files"])
    for res in (r0, r1):  # every rank holds the gathered outcome
        assert res["rows"] == single["rows"]  # success, queries and L2 of every image, exactly
        assert torch.equal(res["x_adv"], single["x_adv"])
        assert res["test_index"] == single["test_index"]
    assert [r["image"] for r in single["rows"]] == [0, 1, 2, 3]
    assert len({r["queries"] for r in single["rows"]}) > 1  # images differ: the comparison is not of constants


def test_score_baseline_split_and_gathered_in_order(data_root, two_rank_run):
    """ZOO draws random coordinates per batch, so its numbers are not those of one process; the images and
    their order are, and every rank holds the same gathered outcome."""
    cache, target, _, _ = two_rank_run
    r0, r1 = run_ranks(_attack, str(data_root), str(cache), "zoo", target, world=2)
    single = _attack(str(data_root), str(cache), "zoo", target)
    assert r0["rows"] == r1["rows"]
    assert [(r["image"], r["label"]) for r in r0["rows"]] == [(r["image"], r["label"]) for r in single["rows"]]
    assert len(r0["rows"]) == OVERRIDES["n_images"]
