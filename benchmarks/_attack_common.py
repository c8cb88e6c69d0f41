"""Shared driver of the attack benchmarks: every method on the same images, our rows beside the papers'."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from _script import ScriptParser, add_json_option, json_path, names, positive_int, seed  # noqa: E402  (beside this script)


def parse(argv, *, name: str, default_images: int, default_methods: str, default_out: str) -> argparse.Namespace:
    from attacks.cli import METHODS  # (imports no torch: --help and bad flags stay instant)

    parser = ScriptParser(prog=name, description=__doc__)
    parser.add_argument("--preset", default="quick", choices=["smoke", "quick", "paper"])
    parser.add_argument("--n-images", type=positive_int, default=default_images)
    parser.add_argument("--max-queries", type=positive_int, default=None)
    parser.add_argument("--methods", type=names("attack method", METHODS), default=default_methods,
                        help="Comma-separated methods, in table order.")
    parser.add_argument("--targeted", action="store_true", help="Targeted attacks towards (y + 1) mod 10.")
    parser.add_argument("--skip-blocked", action=argparse.BooleanOptionalAction, default=True,
                        help="Meta-attacks: rank last the coordinates a sign step cannot move (default; not in Du et "
                             "al.). --no-skip-blocked: Du et al.'s ranking.")
    parser.add_argument("--meta-family", default="reptile", choices=["reptile", "maml"],
                        help="How the meta-attackers are meta-trained: reptile (lazy-reptile for lazy-meta; Du et al.) "
                             "or maml (lazy-maml for lazy-meta).")
    parser.add_argument("--zoo", default=None, help="Comma-separated whitebox zoo (default: the paper's).")
    parser.add_argument("--target", default=None, help="Another target than the paper's (e.g. a faster one for a smoke run).")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=seed, default=0)
    add_json_option(parser, default_out)
    parser.add_argument("--quiet", action="store_true")
    # seconds once the target, zoo and meta-attackers are cached; the first run trains them (CIFAR-10: minutes)
    parser.add_smoke_option("a code-path check: seconds, or minutes while its first models train", preset="smoke",
                            n_images=min(default_images, 2), methods=",".join(default_methods.split(",")[:2]))
    parser.set_defaults(benchmark=name)  # (the JSON's name for the script, whoever calls main)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, *, dataset: str, paper_target: str, paper_rows: list[dict]) -> dict:
    """The benchmark with ``--quiet`` for its own duration (a caller in the same process keeps its setting).

    ``paper_rows`` are the papers' numbers on ``dataset`` against ``paper_target``, the target attacked unless
    ``--target`` names another (the table's title then says whose the paper's rows are).
    """
    from lazyapps.progress import quiet_while

    with quiet_while(args.quiet):
        return _run(args, dataset=dataset, paper_target=paper_target, paper_rows=paper_rows)


def _run(args: argparse.Namespace, *, dataset: str, paper_target: str, paper_rows: list[dict]) -> dict:
    from attacks.cli import COLUMNS, run_attack
    from attacks.pipeline import META_TRAINING_OF
    from lazyapps.cli import RunContext
    from lazyapps.checkpoint import write_json_atomic
    from lazyapps.results import format_table, versions
    from lazyapps.runtime import seed_everything

    ctx = RunContext("benchmark", args.data_dir, args.cache_dir, args.device, args.seed, None, args.quiet)
    target = args.target or paper_target
    started = time.perf_counter()
    rows, images, config = [], None, {}
    wanted = "targeted" if args.targeted else "untargeted"
    paper = [{"source": "paper", **r} for r in paper_rows if r["setting"] == wanted]
    result: dict = {}
    for method in args.methods:
        seed_everything(args.seed)
        meta = method in META_TRAINING_OF
        training = None if not meta else f"lazy-{args.meta_family}" if method == "lazy-meta" else args.meta_family
        attacked = run_attack(ctx, target_spec=target, targeted=args.targeted, method=method, zoo_spec=args.zoo if meta else None,
                              preset=args.preset, overrides={"n_images": args.n_images, "max_queries": args.max_queries},
                              images=images, skip_blocked=args.skip_blocked and meta, meta_training=training)
        images = attacked["images"]  # every method attacks the same images
        # Per-method settings go in the rows; the run's meta-training family goes here. The meta-attacks'
        # settings and each baseline's own ones (under baselines) accumulate over the methods.
        own = {k: v for k, v in attacked["config"].items() if k not in ("method", "meta_training", "baseline")}
        config = {**config, **own, "meta_family": args.meta_family}
        if "baseline" in attacked["config"]:
            config["baselines"] = {**config.get("baselines", {}), method: attacked["config"]["baseline"]}
        # a meta-attack's coordinate ranking (ours or Du et al.'s: rows of both kinds end up in one table) and
        # a meta-training that departs from Du et al.'s, named in the row
        ranking = ["skip_blocked" if attacked["config"].get("skip_blocked") else "no_skip_blocked"] if meta else []
        settings = ranking + ([f"meta_training={training}"] if meta and training != META_TRAINING_OF[method] else [])
        rows.append({"source": "ours", **attacked["row"], **({"settings": ",".join(settings)} if settings else {}),
                     "n_images": len(images[1])})
        print(format_table(rows[-1:], ["source", *COLUMNS]), file=sys.stderr, flush=True)
        # written after every method, so a long run stopped part-way keeps the rows it finished
        result = {"benchmark": args.benchmark, "config": config, "rows": rows, "paper": paper,
                  "versions": versions(), "elapsed_s": round(time.perf_counter() - started, 1)}
        if json_path(args):
            write_json_atomic(json_path(args), result)
    columns = ["source", *COLUMNS, *(["settings"] if any("settings" in r for r in rows) else []), "n_images"]
    whose = "" if target == paper_target else f"; the paper's rows: {paper_target}"
    print(format_table(rows + paper, columns, title=f"{dataset} / {target} ({wanted}, preset {args.preset}{whose})"))
    return result


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps({"error": "run attack_mnist.py or attack_cifar.py"}))
