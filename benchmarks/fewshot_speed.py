"""Meta-training throughput (tasks per second): vmapped over the meta-batch vs. a plain per-task loop.

    python benchmarks/fewshot_speed.py              # Omniglot 5-way 1-shot, conv4, meta-batch 8
    python benchmarks/fewshot_speed.py --smoke      # seconds: tiny conv4, 1 timed step

Learners: ``maml`` (second order, Finn et al.'s 1 inner step), ``lazy-maml``
(k = 15 student steps, teacher γ grid of 5, Jamal et al.), ``reptile`` with an
SGD inner loop (5 steps; the only Reptile inner loop that runs under vmap) and,
for reference, Reptile's published Adam inner loop (per-task loop only). Every
configuration sees the same meta-batches; one warm-up step is not timed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _script import ScriptParser, add_json_option, clock, json_path, positive_int  # noqa: E402  (beside this script)

CONFIGS = [  # (label, algo, hyperparameters, vmappable)
    ("maml", "maml", {}, True),
    ("lazy-maml (k=15)", "lazy-maml", {"inner_steps": 15}, True),
    ("reptile (SGD inner)", "reptile", {"inner_optimizer": "sgd", "inner_lr": 0.1}, True),
    ("reptile (Adam inner, paper)", "reptile", {}, False),
]


def main(argv: list[str] | None = None, *, allocator_tuned: bool = False) -> dict:
    parser = ScriptParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meta-batch", type=positive_int, default=8)
    parser.add_argument("--queries", type=positive_int, default=15)
    parser.add_argument("--steps", type=positive_int, default=5, help="timed meta-iterations per configuration")
    parser.add_argument("--hidden", type=positive_int, default=64)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    add_json_option(parser, "benchmarks/results/fewshot_speed.json")
    # One thread: tiny tensors gain nothing from two, and on a loaded machine two spinning threads cost 15x.
    parser.add_smoke_option("seconds: a tiny conv4, 1 timed step", meta_batch=2, queries=1, steps=1, hidden=8, threads=1)
    args = parser.parse_args(argv)

    import torch

    import models_zoo
    from fewshot import create_learner
    from fewshot.datasets import task_source
    from lazyapps.results import format_table, make_result, write_result
    from lazyapps.runtime import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    source = task_source("omniglot", split="train", ways=5, shots=1, queries=args.queries, seed=0, root=args.data_dir, cache_dir=args.cache_dir)
    batches = [source.sample(args.meta_batch).to(device) for _ in range(args.steps + 1)]
    start = time.perf_counter()
    rows = []
    for label, algo, hp, vmappable in CONFIGS:
        row = {"learner": label}
        for vectorize in ((True, False) if vmappable else (False,)):
            torch.manual_seed(0)
            model = models_zoo.create("conv4", num_classes=5, in_channels=1, image_size=28, hidden=args.hidden)
            learner = create_learner(algo, model, vectorize=vectorize, **hp).to(device)
            learner.total_iterations = args.steps + 1
            learner.meta_step(batches[0])
            t0 = clock(device)
            for batch in batches[1:]:
                learner.meta_step(batch)
                learner.iteration += 1
            rate = args.steps * args.meta_batch / (clock(device) - t0)
            row["vmap tasks/s" if vectorize else "loop tasks/s"] = round(rate, 2)
        if "vmap tasks/s" in row:
            row["vmap/loop"] = round(row["vmap tasks/s"] / row["loop tasks/s"], 2)
        rows.append(row)
    # glibc serves blocks above its mmap threshold (at most 32 MiB unless set) with fresh mmaps whose every page faults
    # on first touch; vmapped meta-batches make activations that large (see docs/fewshot.md, Speed), so say which.
    # allocator_tuned: lazyapps.allocator raised the threshold in this process (mallopt, so no environment variable).
    from lazyapps.allocator import MMAP_THRESHOLD

    mmap_threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_") or (str(MMAP_THRESHOLD) if allocator_tuned else "glibc default")
    title = (f"Meta-training throughput, Omniglot 5-way 1-shot, {args.queries} queries/class, meta-batch {args.meta_batch}, "
             f"conv4 ({args.hidden} filters), {device}, {args.threads} threads, MALLOC_MMAP_THRESHOLD_={mmap_threshold}")
    print(format_table(rows, ["learner", "vmap tasks/s", "loop tasks/s", "vmap/loop"], title=title))
    result = make_result("benchmarks/fewshot_speed.py", {**vars(args), "malloc_mmap_threshold": mmap_threshold},
                         {"rows": rows, "device": str(device)}, time.perf_counter() - start)
    if json_path(args):
        write_result(json_path(args), result)
    return result


if __name__ == "__main__":
    from _script import run_script
    from lazyapps.allocator import keep_freed_memory

    # the CLI's allocator setting, set here because the title says whether it took
    run_script(lambda: main(allocator_tuned=keep_freed_memory()), allocator=False)
