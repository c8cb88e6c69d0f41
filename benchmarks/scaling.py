"""Throughput of each product on 1 and 2 processes (torch.distributed, gloo on CPU), launched by torchrun.

    python benchmarks/scaling.py                 # the three products, 1 and 2 processes, CPU
    python benchmarks/scaling.py --smoke         # seconds: tiny sizes (the test runs this)
    python benchmarks/scaling.py --procs 1,2,4 --device cuda   # on a GPU machine: one GPU per process (NCCL)

For each process count N the script starts ``torchrun --standalone
--nproc_per_node N benchmarks/scaling.py --worker ...``; every worker runs the
products' own distributed code paths and rank 0 times them (barrier before
and after, one untimed warm-up first):

* fewshot: ``Learner.meta_train`` of MAML (Omniglot 5-way 1-shot, conv4;
  sine in --smoke): the meta-batch's tasks split across ranks, meta-gradients
  averaged. Throughput in tasks/s.
* longtail: one ``Trainer.train_epoch`` of ``ce`` on CIFAR-10-LT (ResNet-32;
  a small conv net in --smoke): DistributedDataParallel on shards of every
  batch, BatchNorm with the whole batch's statistics (the default; one
  collective per layer and pass). longtail-local-bn: the same with each
  rank's own statistics (``--batchnorm local``). Throughput in training images/s.
* attack: ``attacks.cli.run_attack`` of ``lazy-meta`` from a warm cache on
  MNIST images, whole chunks of images per rank, outcomes gathered. The target
  is an untrained net4 file and the meta-attacker a one-iteration one: the
  point is the mechanism's cost, not attack quality. Throughput in images/s.

Each process gets ``--threads`` intra-op threads (default: cores / processes,
so 1 process × 2 threads is compared with 2 processes × 1 thread on 2 cores).
On a machine that other jobs share, pin ``--threads 1``: OpenMP threads that
wait for busy cores make the many-thread rows look far slower than they are.
On 2 cores expect at most 2x; the table reports what the mechanism costs or
gains, honestly. Prints a table; writes JSON (benchmarks/results/scaling.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _script import (ScriptParser, add_json_option, json_path, names, pass_on_child_refusal, positive_int,  # noqa: E402
                     positive_ints)  # (beside this script)

PRODUCTS = ("fewshot", "longtail", "longtail-local-bn", "attack")


def _sizes(smoke: bool) -> dict:
    if smoke:
        return {"fewshot": {"dataset": "sine", "meta_batch": 4, "iterations": 2},
                "longtail": {"n_max": 20, "batch_size": 16, "model": "small"},
                "attack": {"n_images": 2, "attack_batch": 1, "max_queries": 100}}
    return {"fewshot": {"dataset": "omniglot", "meta_batch": 16, "iterations": 5},
            "longtail": {"n_max": 100, "batch_size": 64, "model": "resnet32"},
            "attack": {"n_images": 16, "attack_batch": 4, "max_queries": 2000}}


# --------------------------------------------------------------------------- worker (one per rank, under torchrun)
def _timed(fn) -> float:
    from lazyapps import distributed

    distributed.barrier()
    start = time.perf_counter()
    fn()
    distributed.barrier()
    return time.perf_counter() - start


def _fewshot(size: dict, device, data_dir, cache_dir) -> dict:
    import torch

    import models_zoo
    from fewshot import create_learner
    from fewshot.datasets import task_source

    torch.manual_seed(0)
    if size["dataset"] == "sine":
        source = task_source("sine", split="train", shots=5, queries=5, seed=0)
        model, problem = models_zoo.create("sine_mlp", num_classes=1, in_channels=1), "regression"
    else:
        source = task_source("omniglot", split="train", ways=5, shots=1, queries=15, seed=0, root=data_dir, cache_dir=cache_dir)
        model, problem = models_zoo.create("conv4", num_classes=5, in_channels=1, image_size=28), "classification"
    learner = create_learner("maml", model, problem=problem).to(device)
    learner.meta_train(source, iterations=1, meta_batch=size["meta_batch"])  # warm-up
    iterations = size["iterations"]
    seconds = _timed(lambda: learner.meta_train(source, iterations=1 + iterations, meta_batch=size["meta_batch"]))
    return {"work": iterations * size["meta_batch"], "unit": "tasks/s", "seconds": seconds,
            "setting": f"MAML {size['dataset']}, meta-batch {size['meta_batch']}"}


def _longtail(size: dict, device, data_dir, cache_dir, *, batchnorm: str) -> dict:
    import torch
    from torch import nn

    from longtail.data import CIFARLongTail
    from longtail.trainer import TrainConfig, Trainer

    data = CIFARLongTail.load("cifar10", imbalance=10, root=data_dir, n_max=size["n_max"], test_per_class=1)
    config = TrainConfig(dataset="cifar10", imbalance=10, method="ce", epochs=3, batch_size=size["batch_size"],
                         n_max=size["n_max"], test_per_class=1, model=size["model"], batchnorm=batchnorm)
    torch.manual_seed(0)
    model = None
    if size["model"] == "small":
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                              nn.Flatten(), nn.Linear(32, 10))
    trainer = Trainer(config, data, device=device, model=model)
    trainer.train_epoch()  # warm-up
    seconds = _timed(trainer.train_epoch)
    return {"work": len(data.train_labels), "unit": "images/s", "seconds": seconds,
            "setting": f"ce, {size['model']}, CIFAR-10-LT {len(data.train_labels)} images, batch {size['batch_size']}, "
                       f"{batchnorm} BatchNorm statistics"}


def _attack(size: dict, device, data_dir, cache_dir, folder: Path) -> dict:
    import torch

    import models_zoo
    from attacks.cli import run_attack
    from lazyapps import distributed
    from lazyapps.cli import RunContext

    target_file = folder / "net4-untrained.pt"
    with distributed.main_first(per_node=False):
        if distributed.is_main() and not target_file.exists():
            torch.manual_seed(0)
            torch.save(models_zoo.create("net4").state_dict(), target_file)
    overrides = {"n_images": size["n_images"], "attack_batch": size["attack_batch"], "max_queries": size["max_queries"],
                 "zoo_subset": 256, "grad_images": 16, "meta_iterations": 1, "meta_batch": 4}
    run = RunContext("attack", data_dir=data_dir, cache_dir=str(folder / "cache"), device_name=str(device), seed=0, quiet=True)

    def attack():
        return run_attack(run, target_spec=f"net4:{target_file}", targeted=False, method="lazy-meta",
                          overrides=overrides, zoo_spec="lenet5", preset="smoke")

    attack()  # warm-up: builds (rank 0) and loads the cache
    seconds = _timed(attack)
    return {"work": size["n_images"], "unit": "images/s", "seconds": seconds,
            "setting": f"lazy-meta, MNIST, {size['n_images']} images in chunks of {size['attack_batch']}, "
                       f"budget {size['max_queries']}"}


def worker(args: argparse.Namespace) -> None:
    import torch

    from lazyapps import distributed
    from lazyapps.checkpoint import write_json_atomic
    from lazyapps.runtime import resolve_device

    torch.set_num_threads(args.threads)
    device = distributed.device_for(resolve_device(args.device))
    distributed.init_from_env(device)
    sizes = _sizes(args.smoke)
    rows = []
    try:
        for product in args.products:
            if product == "fewshot":
                row = _fewshot(sizes["fewshot"], device, args.data_dir, args.cache_dir)
            elif product in ("longtail", "longtail-local-bn"):
                row = _longtail(sizes["longtail"], device, args.data_dir, args.cache_dir,
                                batchnorm="local" if product == "longtail-local-bn" else "global")
            else:
                row = _attack(sizes["attack"], device, args.data_dir, args.cache_dir, Path(args.scratch))
            rows.append({"product": product, "processes": distributed.world_size(), **row,
                         "throughput": row["work"] / row["seconds"]})
        write_json_atomic(args.worker_out, rows)  # rank 0 only
    finally:
        distributed.shutdown()


# --------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> dict:
    parser = ScriptParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes of every product (seconds)")
    parser.add_argument("--procs", type=positive_ints, default="1,2", help="process counts to compare")
    parser.add_argument("--products", type=names("product", PRODUCTS), default=",".join(PRODUCTS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="intra-op threads per process (default: cores / processes, at least 1)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    add_json_option(parser, "benchmarks/results/scaling.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}

    from lazyapps.results import format_table, make_result, write_result
    from lazyapps.runtime import resolve_device

    resolve_device(args.device)  # --device cuda without a GPU: the CLI's one line, not a torchrun error dump
    started = time.perf_counter()
    cores = os.cpu_count() or 1
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lazyapps-scaling-") as scratch:
        for n in args.procs:
            threads = args.threads or max(1, cores // n)
            out = Path(scratch) / f"rows-{n}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                   str(Path(__file__).resolve()), "--worker", "--worker-out", str(out), "--scratch", scratch,
                   "--products", ",".join(args.products), "--device", args.device, "--threads", str(threads)]
            cmd += ["--smoke"] if args.smoke else []
            cmd += ["--data-dir", args.data_dir] if args.data_dir else []
            cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            pass_on_child_refusal(proc)  # a worker refused its input (missing data, ...): its one line, not torchrun's dump
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
                raise SystemExit(f"torchrun with {n} processes failed (exit {proc.returncode})")
            for row in json.loads(out.read_text()):
                rows.append({**row, "threads_per_process": threads})
    base = {r["product"]: r["throughput"] for r in rows if r["processes"] == 1}
    table_rows = []
    for r in rows:
        speedup = r["throughput"] / base[r["product"]] if r["product"] in base else None
        r["speedup"] = speedup
        table_rows.append({"product": r["product"], "processes": r["processes"], "threads/proc": r["threads_per_process"],
                           "seconds": round(r["seconds"], 3), "throughput": f"{r['throughput']:.3g} {r['unit']}",
                           "speedup": None if speedup is None else f"{speedup:.2f}x", "setting": r["setting"]})
    table = format_table(table_rows, title=f"Scaling on {args.device} ({cores} cores){' [smoke]' if args.smoke else ''}: "
                                           "throughput vs. 1 process (torchrun, gloo/NCCL)")
    print(table)
    result = make_result("benchmarks/scaling.py", vars(args), {"rows": rows}, time.perf_counter() - started)
    if json_path(args):
        write_result(json_path(args), result)
    return result


if __name__ == "__main__":
    from _script import run_script

    run_script(main)
