"""Peak memory of one meta-iteration of ``maml`` and ``lazy-maml`` as the inner horizon k grows.

    python benchmarks/fewshot_memory.py                 # Omniglot 20-way 5-shot, conv4, k = 1, 5, 10, 20
    python benchmarks/fewshot_memory.py --smoke         # seconds: tiny conv4, k = 1, 2, 4
    python benchmarks/fewshot_memory.py --device cuda   # torch.cuda.max_memory_allocated instead of the CPU proxy

The claim checked (the lazy paper, Jamal, Wang, Gong, Appendix A.4): second-order
MAML keeps every inner step's activations for the backward pass, so its memory
grows with k; lazy MAML's student keeps no graph and the meta-gradient flows
through the teacher's leap only, so its memory stays flat (within 1.3x of k = 1).

What is measured. CUDA: ``torch.cuda.max_memory_allocated`` during the
meta-iteration minus the memory allocated before it. CPU (Linux): the growth of
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs just
before the meta-iteration) — torch's CPU allocations are invisible to
tracemalloc, and autograd's saved-tensor hooks are refused inside torch.func.
The measurement runs in a child process with glibc's mmap threshold fixed at
64 KiB, so large tensors are returned to the OS when freed and one run's freed
memory cannot hide the next run's peak. Each configuration runs once as a
warm-up first. The per-task loop is the default (``--vectorize`` to vmap).
"""
from __future__ import annotations

import argparse
import sys
import time
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _script import ScriptParser, add_json_option, json_path, pass_on_child_refusal, positive_int, positive_ints  # noqa: E402  (beside this script)


MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # big blocks mmapped and unmapped on free: RSS falls back after each run


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def cpu_peak_bytes(run) -> int:
    """Growth of the process's peak resident memory while ``run()`` runs (Linux: VmHWM reset via clear_refs)."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    before = _proc_status("VmRSS")
    run()
    return _proc_status("VmHWM") - before


def measure(algo: str, k: int, tasks, args, device) -> float:
    """MiB of one meta-iteration of ``algo`` with ``k`` inner steps."""
    import torch

    import models_zoo
    from fewshot import create_learner

    torch.manual_seed(0)
    model = models_zoo.create("conv4", num_classes=args.ways, in_channels=1, image_size=28, hidden=args.hidden)
    hp = {"inner_steps": k, "inner_lr": 0.1}
    if algo == "lazy-maml":
        hp["last"] = 1
    learner = create_learner(algo, model, vectorize=args.vectorize, **hp).to(device)
    learner.meta_step(tasks)  # warm-up: one-time allocations (thread pools, kernels) are not the method's
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        learner.meta_step(tasks)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return cpu_peak_bytes(lambda: learner.meta_step(tasks)) / 2**20


def main(argv: list[str] | None = None) -> dict:
    parser = ScriptParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ways", type=positive_int, default=20)
    parser.add_argument("--shots", type=positive_int, default=5)
    parser.add_argument("--queries", type=positive_int, default=5)
    parser.add_argument("--meta-batch", type=positive_int, default=2)
    parser.add_argument("--hidden", type=positive_int, default=64, help="conv4 filters")
    parser.add_argument("--steps", type=positive_ints, default="1,5,10,20", help="inner horizons k, comma-separated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--vectorize", action="store_true", help="vmap over the meta-batch (default: per-task loop)")
    add_json_option(parser, "benchmarks/results/fewshot_memory.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_smoke_option("seconds: a tiny conv4", ways=5, shots=1, queries=2, meta_batch=1, hidden=16, steps="1,2,4")
    args = parser.parse_args(argv)

    import torch

    from fewshot.datasets import task_source
    from lazyapps.results import format_table, make_result, write_result
    from lazyapps.runtime import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    steps = args.steps
    start = time.perf_counter()
    rows, values = [], {}
    if device.type == "cpu" and not args.child:
        argv_child = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:]), "--child", "--json", ""]
        proc = subprocess.run(argv_child, env={**os.environ, **MMAP_ENV}, capture_output=True, text=True)
        pass_on_child_refusal(proc)  # the child refused what it was given (missing data, ...): its one line
        if proc.returncode != 0:
            raise SystemExit(f"memory measurement failed:\n{proc.stderr[-3000:]}")
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        values = {(algo, int(k)): v for algo, per_k in measured.items() for k, v in per_k.items()}
    else:
        source = task_source("omniglot", split="train", ways=args.ways, shots=args.shots, queries=args.queries, seed=0,
                             root=args.data_dir, cache_dir=args.cache_dir)
        tasks = source.sample(args.meta_batch).to(device)
        for algo in ("maml", "lazy-maml"):
            for k in steps:
                values[(algo, k)] = measure(algo, k, tasks, args, device)
        if args.child:
            out = {algo: {k: values[(algo, k)] for k in steps} for algo in ("maml", "lazy-maml")}
            print(json.dumps(out))
            return out
    page = 4096 / 2**20  # RSS moves in pages: never divide by less than one

    def ratio(algo: str, k: int) -> float:
        return round(values[(algo, k)] / max(values[(algo, steps[0])], page), 2)

    for k in steps:
        rows.append({"k": k, "maml MiB": round(values[("maml", k)], 2), "maml ×k=1": ratio("maml", k),
                     "lazy-maml MiB": round(values[("lazy-maml", k)], 2), "lazy ×k=1": ratio("lazy-maml", k)})
    lazy_flat = all(values[("lazy-maml", k)] <= 1.3 * max(values[("lazy-maml", steps[0])], page) for k in steps)
    maml_grows = all(values[("maml", b)] > values[("maml", a)] for a, b in zip(steps, steps[1:]))
    how = ("torch.cuda.max_memory_allocated during the meta-iteration (minus memory before it)" if device.type == "cuda"
           else "growth of peak RSS (VmHWM) during the meta-iteration, child process with a fixed 64 KiB mmap threshold")
    title = (f"Peak memory of one meta-iteration, Omniglot {args.ways}-way {args.shots}-shot, {args.queries} queries/class, "
             f"meta-batch {args.meta_batch}, conv4 ({args.hidden} filters), {device}\nmeasured as: {how}")
    print(format_table(rows, title=title))
    print(f"lazy-maml within 1.3x of k={steps[0]}: {lazy_flat}; maml grows with k: {maml_grows} "
          "(paper, Appendix A.4: lazy memory independent of k, MAML linear in k)")
    result = make_result("benchmarks/fewshot_memory.py", vars(args), {"rows": rows, "lazy_within_1.3x": lazy_flat, "maml_grows": maml_grows,
                                                                       "measure": how, "device": str(device)},
                         time.perf_counter() - start)
    if json_path(args):
        write_result(json_path(args), result)
    return result


if __name__ == "__main__":
    from _script import run_script

    run_script(main, allocator=False)  # the measuring child fixes its own mmap threshold (above)
