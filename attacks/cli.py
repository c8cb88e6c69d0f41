"""``lazyapps attack``: blackbox adversarial attacks — the lazy meta-attack and its baselines.

Everything the attack needs (whitebox zoo, target, gradient sets,
meta-attacker) is trained and cached on first use. Top-level imports stay
light (click only); torch loads when the command runs.
"""
from __future__ import annotations

from typing import Any

import click

from lazyapps.cli import INT64, RunContext, apply_preset, common_options, preset_option, writable_file
from lazyapps.plotting import plot_option

METHODS = ("lazy-meta", "meta", "zoo", "nes", "bandits", "hsja", "boundary")
COLUMNS = ["method", "success_rate", "mean_l2", "mean_queries", "median_queries", "wall_s"]

#: Rows per forward pass of the target. A ZOO step of 250 MNIST images is 32,000 query rows; sent at once they
#: would hold tens of GB of activations. The blackbox splits a query into chunks; counting is unchanged.
QUERY_CHUNK = 2048
#: The decision-based baselines, run through foolbox.
DECISION_METHODS = ("hsja", "boundary")
#: The preset's settings a baseline uses (the decision-based ones also attack_batch, their chunk of images);
#: the rest build and run the meta-attacker.
BASELINE_KEYS = ("target_epochs", "target_subset", "n_images", "max_queries")


@click.command("attack")
@click.option("--target", "target_spec", default="net4", show_default=True,
              help="Blackbox target: a zoo name (net4 → MNIST, resnet18 → CIFAR-10, ...), a TorchScript / zoo "
                   "checkpoint file, or ARCH:STATE_DICT.pt.")
@click.option("--targeted/--untargeted", default=None, help="Targeted (towards --target-class) or untargeted (default).")
@click.option("--target-class", type=INT64, default=None, help="Class to reach (targeted; test images of that class are skipped); default (y + 1) mod C per image.")
@click.option("--method", type=click.Choice(METHODS), default="lazy-meta", show_default=True, help="Attack method.")
# (the defaults are attacks.pipeline.PRESETS'; restated here so that --help does not import torch)
@click.option("--n-images", type=INT64, default=None, help="Attack the first N correctly classified test images "
              "(default: the preset's; quick and paper 100, smoke 2 on MNIST / 1 on CIFAR-10).")
@click.option("--max-queries", type=int, default=None, help="Per-image query budget (default: the preset's; quick and "
              "paper 10,000, smoke 1,000 on MNIST / 300 on CIFAR-10).")
@click.option("--zoo", "zoo_spec", default=None, help="Comma-separated whitebox zoo (default: lenet5,net2,net3 / vgg13,vgg16,vgg19).")
@click.option("--skip-blocked/--no-skip-blocked", default=None,
              help="lazy-meta/meta: rank last the coordinates a sign step cannot move (a pixel at 0 or 1 pushed "
                   "outward). On by default; --no-skip-blocked is Du et al.'s ranking (about 20% more queries "
                   "on MNIST, docs/attack.md).")
@click.option("--meta-training", type=click.Choice(("reptile", "lazy-reptile", "maml", "lazy-maml")), default=None,
              help="How the meta-attacker is meta-trained: lazy-meta takes lazy-reptile (default) or lazy-maml, "
                   "meta takes reptile (default) or maml.")
@click.option("--per-image", "per_image_path", type=click.Path(dir_okay=False), default=None, callback=writable_file, help="Write per-image results to this CSV.")
@plot_option("Plot success rate vs query budget to this image")
@preset_option("quick")
@common_options
def attack(run: RunContext, target_spec: str, targeted: bool | None, target_class: int | None, method: str,
           n_images: int | None, max_queries: int | None, zoo_spec: str | None, skip_blocked: bool | None,
           meta_training: str | None, per_image_path: str | None, plot: str | None, preset: str) -> None:
    """Blackbox adversarial attacks: lazy meta-attack (default) and baselines.

    Example: lazyapps attack --target resnet18 --untargeted
    """
    from lazyapps.errors import LazyAppsError

    if target_class is not None and targeted is False:
        raise LazyAppsError("--target-class is for targeted attacks; drop --untargeted (or use --targeted)")
    targeted = bool(targeted) or target_class is not None
    from .pipeline import META_TRAINING_OF

    if skip_blocked is not None and method not in META_TRAINING_OF:
        flag = "--skip-blocked" if skip_blocked else "--no-skip-blocked"
        raise LazyAppsError(f"{flag} is an option of the meta-attacks ({', '.join(META_TRAINING_OF)}), not of {method}")
    result = run_attack(
        run, target_spec=target_spec, targeted=targeted, target_class=target_class, method=method,
        overrides={"n_images": n_images, "max_queries": max_queries}, zoo_spec=zoo_spec, preset=preset,
        skip_blocked=skip_blocked is not False, meta_training=meta_training,
    )
    outcome, config, row = result["outcome"], result["config"], result["row"]
    if per_image_path:
        from lazyapps.results import write_csv

        rows = outcome.rows()
        for r, test_index in zip(rows, result["test_index"].tolist()):
            r["test_index"] = test_index
        write_csv(per_image_path, rows, ["image", "test_index", "label", "target", "success", "queries", "l2", "first_success"])
    from lazyapps.distributed import is_main

    if plot and is_main():  # under torchrun rank 0 draws the one figure
        plot_budget_curve(plot, {method: outcome}, config["max_queries"], title=f"{method} on {config['target']}")
    from lazyapps.results import format_table

    title = (f"{method} attack on {config['target']} ({config['dataset']}, {'targeted' if targeted else 'untargeted'}, "
             f"{config['n_images']} image{'' if config['n_images'] == 1 else 's'}, budget {config['max_queries']})")
    metrics = {**outcome.summary(), "wall_s": row["wall_s"]}
    run.finish(config, metrics, table=format_table([row], COLUMNS, title=title))


def plot_budget_curve(path: str, outcomes: dict[str, Any], max_queries: int, *, title: str = "") -> None:
    """Success rate vs query budget, one line per method, saved to ``path``."""
    from lazyapps.plotting import pyplot, save_figure

    budgets = sorted({int(max_queries * i / 100) for i in range(1, 101)})
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    for name, outcome in outcomes.items():
        ax.plot(budgets, outcome.budget_curve(budgets), label=name)
    ax.set_xlabel("queries per image")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend()
    save_figure(fig, path)


def run_attack(
    run: RunContext,
    *,
    target_spec: str,
    targeted: bool,
    method: str,
    target_class: int | None = None,
    overrides: dict[str, Any] | None = None,
    zoo_spec: str | None = None,
    preset: str = "quick",
    images: tuple | None = None,
    skip_blocked: bool = True,
    meta_training: str | None = None,
) -> dict[str, Any]:
    """Build what ``method`` needs and attack; returns ``{outcome, config, row, test_index, images}``.

    ``images`` = ``(x, y, test_index)`` reuses already selected images (the
    benchmarks attack the same images with every method). ``skip_blocked``
    is :class:`~attacks.meta_estimator.MetaEstimator`'s option and ``meta_training``
    the attacker's meta-training (:func:`attacks.pipeline.meta_training_for`); meta-attacks only.
    """
    import time

    import torch

    from lazyapps.data import load_dataset
    from lazyapps import distributed
    from lazyapps.errors import LazyAppsError, UnknownNameError

    from . import pipeline as P
    from .blackbox import UNLIMITED, BlackBox
    from .inputs import check_image_count

    if method not in METHODS:
        raise UnknownNameError("attack method", method, METHODS)
    if meta_training is not None or method in P.META_TRAINING_OF:
        meta_training = P.meta_training_for(method, meta_training)
    if zoo_spec is not None and method not in P.META_TRAINING_OF:
        raise LazyAppsError(f"--zoo is the whitebox zoo the meta-attacks learn from ({', '.join(P.META_TRAINING_OF)}); "
                            f"{method} does not use one")
    dataset = P.infer_dataset(target_spec)
    settings = apply_preset({name: by_ds[dataset] for name, by_ds in P.PRESETS.items()}, preset, overrides or {})
    if not 1 <= int(settings["max_queries"]) <= UNLIMITED:  # (checked before any work; the blackbox counts in int64)
        bound = "at least 1" if int(settings["max_queries"]) < 1 else f"at most {UNLIMITED:,}"
        raise LazyAppsError(f"--max-queries (the query budget per image) must be {bound}, got {settings['max_queries']}")
    if images is None:  # (checked before the target is trained or loaded; the benchmarks pass counts straight here)
        check_image_count(int(settings["n_images"]))
    device = run.device
    zoo_names = P.parse_zoo(zoo_spec, dataset, target_spec) if method in P.META_TRAINING_OF else []
    data = load_dataset(dataset, root=run.data_dir, cache_dir=run.cache_dir)
    if target_class is not None and not 0 <= target_class < data.num_classes:
        raise LazyAppsError(f"--target-class {target_class} is out of range: {dataset} has classes 0..{data.num_classes - 1}")
    common = dict(device=device, seed=run.seed, data_dir=run.data_dir, cache_dir=run.cache_dir, quiet=run.quiet)
    with distributed.main_first():  # torchrun: rank 0 trains and caches the target, the others then load it
        target = P.load_target(target_spec, dataset, settings, **common)
    if P.is_user_model(target_spec):
        target = P.as_logit_target(target, data.test.images[:16].to(device).float().div(255))

    if images is None:
        x, y, test_index = _select(target.model, data, int(settings["n_images"]), target_class, device)
    else:
        x, y, test_index = images
    if target_class is not None and bool((y == target_class).any()):
        raise LazyAppsError(f"target class {target_class} equals the true class of some attacked images")
    tclass = None
    if targeted:
        tclass = torch.full_like(y, target_class) if target_class is not None else (y + 1) % data.num_classes

    from lazyapps.runtime import seed_everything

    started = time.perf_counter()
    budget = int(settings["max_queries"])
    # torchrun: each rank attacks a contiguous share of the images and the outcomes are gathered in order below.
    # The meta-attacks' shares are whole chunks of attack_batch images, the unit one process attacks together,
    # so every image sees exactly the computation (and numbers) of a single-process run.
    # HopSkipJump / Boundary run chunk by chunk too (foolbox draws from torch's generator, seeded per chunk below).
    chunked = method in P.META_TRAINING_OF or method in DECISION_METHODS
    share = distributed.shard_chunks(len(x), int(settings["attack_batch"]) if chunked else 1)
    x_all, y_all = x, y
    x, y, tclass = x[share], y[share], None if tclass is None else tclass[share]
    if method in P.META_TRAINING_OF:
        from .meta_attack import meta_attack

        mode = "targeted" if targeted else "untargeted"
        sets = []
        with distributed.main_first():  # torchrun: rank 0 builds zoo, gradient sets and meta-attacker; the others load them
            for name in zoo_names:
                trained = P.train_zoo_model(name, dataset, epochs=settings["zoo_epochs"], subset=settings["zoo_subset"], **common)
                sets.append(P.gradient_set(trained, name, data, n_images=settings["grad_images"], mode=mode,
                                           target_class=target_class, seed=run.seed,
                                           device=device, cache_dir=run.cache_dir))
            model, params, _ = P.meta_attacker(method, dataset, sets, settings, seed=run.seed, device=device,
                                               cache_dir=run.cache_dir, in_channels=data.channels, training=meta_training)
        started = time.perf_counter()  # the attack's own time; building the pipeline is reported above
        # Seeded here, after the pipeline: a run from the cache draws the same random numbers as the first one.
        seed_everything(run.seed)
        blackbox = BlackBox(target.model, output="logits", budget=budget, batch_size=QUERY_CHUNK)
        outcome = meta_attack(blackbox, x.to(device), y.to(device), model, params,
                              target=None if tclass is None else tclass.to(device), max_queries=budget,
                              q=int(settings["q"]), every=int(settings["every"]), step=float(settings["step"]),
                              h=float(settings["h"]), finetune_steps=int(settings["finetune_steps"]),
                              finetune_lr=float(settings["finetune_lr"]), skip_blocked=skip_blocked,
                              batch_size=int(settings["attack_batch"]),
                              desc=method) if len(x) else None  # (a rank without a chunk attacks nothing)
    else:
        seed_everything(run.seed)  # as above: independent of what was built or loaded first
        # The images' numbers in the whole selection: ZOO / NES / Bandits draw each image's random numbers from a
        # stream seeded by (seed, number), so an image's attack is the same on any rank and in any batch.
        index = torch.arange(share.start, share.stop)
        outcome = _baseline(method, target.model, x.to(device), y.to(device), tclass, budget, dataset, data,
                            index=index, seed=run.seed, chunk=int(settings["attack_batch"])) if len(x) else None
    wall = time.perf_counter() - started
    if distributed.is_distributed():
        from .outcome import AttackOutcome

        outcome = AttackOutcome.concat([o for o in distributed.all_gather_object(outcome) if o is not None])
        wall = max(distributed.all_gather_object(wall))
    x, y = x_all, y_all
    summary = outcome.summary()
    row = {"method": method, **{k: summary[k] for k in ("success_rate", "mean_l2", "mean_queries", "median_queries")},
           "wall_s": round(wall, 1)}
    config = {"target": target_spec, "dataset": dataset, "method": method, "targeted": targeted,
              "target_class": target_class, "preset": preset, "device": str(device), "seed": run.seed}
    if method in P.META_TRAINING_OF:
        config.update(zoo=zoo_names, **settings, skip_blocked=skip_blocked, meta_training=meta_training)
    else:  # a baseline records what it attacked with, not the meta-attack's settings it never used
        from .score_attack import baseline_settings

        used = BASELINE_KEYS + (("attack_batch",) if method in DECISION_METHODS else ())
        config.update({k: settings[k] for k in used}, baseline=baseline_settings(method, dataset))
    return {"outcome": outcome, "config": config, "row": row, "test_index": test_index, "images": (x, y, test_index)}


def _select(model, data, n: int, target_class: int | None, device):
    """The first ``n`` correctly classified test images (skipping those of ``target_class``)."""
    from lazyapps.progress import status

    from . import pipeline as P

    split = data.test
    if target_class is not None:
        keep = (split.labels != target_class).nonzero().flatten()
        split = split.subset(keep)
        x, y, index = P.select_images(model, split, n, device=device)
        status(f"images: the first {n} correctly classified test images not of class {target_class}")
        return x, y, keep[index]
    x, y, index = P.select_images(model, split, n, device=device)
    status(f"images: the first {n} correctly classified test images")
    return x, y, index


def _baseline(method, model, x, y, tclass, budget, dataset, data, *, index, seed: int, chunk: int):
    """ZOO / NES / Bandits / HopSkipJump / Boundary with attacks-core's settings (``run_baseline``).

    Decision-based methods see labels only; targeted ones start from test images of the target class.
    ``index``: the images' numbers in the whole selection. Score-based estimators draw from per-image streams
    seeded by ``seed``; foolbox's attacks draw from torch's generator, so they run ``chunk`` images at a time
    (starting at multiples of ``chunk`` in the selection, as torchrun hands them out), each chunk with torch
    seeded by ``seed`` and its number: an image's attack is then the same in one process and on any rank.
    """
    import torch

    from lazyapps.runtime import seed_everything

    from .blackbox import BlackBox
    from .outcome import AttackOutcome
    from .score_attack import run_baseline

    decision = method in DECISION_METHODS
    blackbox = BlackBox(model, output="label" if decision else "logits", budget=budget, batch_size=QUERY_CHUNK)
    target = None if tclass is None else tclass.to(x.device)
    if not decision:
        with torch.no_grad():
            return run_baseline(method, blackbox, x, y, dataset=dataset, target=target, max_queries=budget, index=index,
                                estimator_settings={"seed": seed})
    starting = _starting_points(model, data, tclass, x.device) if tclass is not None else None
    outcomes = []
    for lo in range(0, len(x), chunk):
        rows = slice(lo, min(lo + chunk, len(x)))
        seed_everything(seed * 1_000_003 + int(index[lo]) // chunk)
        with torch.no_grad():
            outcomes.append(run_baseline(method, blackbox, x[rows], y[rows], dataset=dataset,
                                         target=None if target is None else target[rows], max_queries=budget,
                                         starting_points=None if starting is None else starting[rows], index=index[rows]))
    return AttackOutcome.concat(outcomes)


def _starting_points(model, data, tclass, device):
    """For each image, the first test image the target classifies as its target class (not a counted query:
    choosing a starting image of the wanted class is part of the targeted decision-based setting)."""
    import torch

    from lazyapps.errors import LazyAppsError

    from .blackbox import run_target

    found: dict[int, torch.Tensor] = {}
    wanted = set(tclass.tolist())
    with torch.no_grad():
        for start in range(0, len(data.test), 500):
            xb = data.test.images[start:start + 500].to(device).float().div(255)
            pred = run_target(model, xb).argmax(1).cpu()
            for c in list(wanted):
                hit = (pred == c).nonzero().flatten()
                if len(hit):
                    found[c] = xb[int(hit[0])]
                    wanted.discard(c)
            if not wanted:
                break
    if wanted:
        raise LazyAppsError(f"the target never predicts class(es) {sorted(wanted)} on the test set; no starting point for a targeted attack")
    return torch.stack([found[int(c)] for c in tclass.tolist()])
