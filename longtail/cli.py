"""``lazyapps longtail``: train and evaluate long-tailed CIFAR recognisers.

Top-level imports stay light (click only); torch and the product load when a
command runs, so ``lazyapps --help`` stays fast.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from lazyapps.cli import (INT64, apply_preset, common_options, distinct_outputs, gammas_option, preset_option, recorded_settings,
                          writable_file, writable_folder)
from lazyapps.plotting import plot_option

METHOD_NAMES = ("ce", "cb-ce", "cb-focal", "ldam-drw", "logit-adjust", "l2rw", "meta-weight-net", "two-component",
                "lazy-two-component")

#: The options only some methods use: the lazy student's and teacher's, and two-component's ε rule.
METHOD_OPTIONS = {"inner_steps": ("lazy-two-component",), "inner_lr": ("lazy-two-component",),
                  "gammas": ("lazy-two-component",), "eps_rule": ("two-component", "lazy-two-component")}

#: smoke: seconds (a few hundred images, 2 epochs); quick: minutes on a 2-core CPU; paper: Cao/Jamal et al.'s settings.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"epochs": 2, "n_max": 100, "test_per_class": 20, "batch_size": 64},
    "quick": {"epochs": 20, "n_max": 500, "test_per_class": 200, "batch_size": 128},
    "paper": {"epochs": 200, "n_max": None, "test_per_class": None, "batch_size": 128},
}


def _default_out(cache_root: Path, config) -> Path:
    """A folder per run configuration (the digest of its settings), so a run with other settings never meets this one's
    checkpoint; the readable part says what the run is."""
    from lazyapps.cache import settings_key

    digest = settings_key(config.identity(), length=8)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.dataset}-imb{config.imbalance:g}-{config.method}-{config.preset}-seed{config.seed}")
    return cache_root / "longtail" / f"{name}-{digest}"


def _result_rows(best: dict[str, Any] | None, last: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for which, res in (("best", best), ("last", last)):
        if res:
            rows.append({"epoch": f"{which} ({res['epoch']})", "top1 error %": res["top1_error"],
                         "many %": res["many_accuracy"], "medium %": res["medium_accuracy"], "few %": res["few_accuracy"]})
    return rows


def _per_class_rows(classes, counts, best, last) -> list[dict[str, Any]]:
    from .evaluation import shot_group

    rows = []
    for c, (name, n) in enumerate(zip(classes, counts)):
        rows.append({"class": c, "name": name, "train_images": n, "group": shot_group(n),
                     "best_accuracy": _rounded(best, c), "last_accuracy": _rounded(last, c)})
    return rows


def _rounded(result: dict[str, Any] | None, c: int) -> float | None:
    accuracy = None if result is None else result["per_class_accuracy"][c]
    return None if accuracy is None else round(accuracy, 4)


def _plot(path: str, rows: list[dict[str, Any]], title: str, keys: tuple[str, ...]) -> None:
    from lazyapps.plotting import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6, 4))
    counts = [r["train_images"] for r in rows]
    for key, marker in zip(keys, "oxs"):
        points = [(n, r[key]) for n, r in zip(counts, rows) if r[key] is not None]  # (a class without test images: none)
        if points:
            ax.scatter(*zip(*points), marker=marker, label=key.replace("_", " "))
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def _write_outputs(run, per_class, per_class_csv, plot, title, keys=("best_accuracy", "last_accuracy")) -> None:
    from lazyapps.results import write_csv

    if per_class_csv:
        write_csv(per_class_csv, per_class)
        run.echo(f"per-class accuracy written to {per_class_csv}")
    from lazyapps.distributed import is_main

    if plot and is_main():  # under torchrun rank 0 draws the one figure
        _plot(plot, per_class, title, keys)
        run.echo(f"per-class plot written to {plot}")


@click.group()
def longtail() -> None:
    """Long-tailed recognition on CIFAR-LT: lazy two-component weighting and its baselines."""


@longtail.command()
@click.option("--dataset", default="cifar100", show_default=True, help="cifar10, cifar100, npz:PATH (an array bundle) or another image dataset of the data root (mnist, digits).")
@click.option("--imbalance", type=float, default=100.0, show_default=True, help="Largest / smallest class size (>= 1).")
@click.option("--method", default="lazy-two-component", show_default=True, help=f"One of: {', '.join(METHOD_NAMES)}.")
@preset_option("quick")
@click.option("--epochs", type=INT64, default=None, help="Epochs (the lr decays, DRW and meta phase scale with it).")
@click.option("--batch-size", type=INT64, default=None, help="Training batch size (preset: 128; smoke 64).")
@click.option("--lr", type=float, default=None, help="Base learning rate (default 0.1).")
@click.option("--inner-steps", type=INT64, default=None, help="Student steps k of lazy-two-component (default 5).")
@click.option("--inner-lr", type=float, default=None, help="The lazy student's lr (default: the current training lr).")
@click.option("--eps-rule", type=click.Choice(["step", "normalized"]), default="step", show_default=True,
              help="two-component ε: step (Jamal et al.'s code, ε = -0.01 dL_val/dε) or normalized (L2RW-style, mass of w_y).")
@click.option("--gammas", callback=gammas_option, default=None, help="The teacher's γ grid, e.g. 0.75,0.8,0.85,0.9,0.95 (default); ties go to the first listed.")
@click.option("--split", "rule", type=click.Choice(["first", "ldam"]), default="first", show_default=True,
              help="first: per class the first --val-per-class images validate, the next n_c train (file order); "
                   "ldam: the same from Cao et al.'s seeded shuffle (needs the full dataset).")
@click.option("--val-per-class", type=INT64, default=10, show_default=True, help="Balanced validation images per class.")
@click.option("--n-max", type=INT64, default=None, help="Training images of the largest class (paper: 4990 CIFAR-10, 490 CIFAR-100; smoke 100, quick 500).")
@click.option("--test-per-class", type=INT64, default=None, help="Evaluate on the first N test images per class (paper: all).")
@click.option("--model", default="resnet32", show_default=True, help="Zoo architecture (see 'lazyapps zoo'); ResNet-32 is the literature's.")
@click.option("--batchnorm", type=click.Choice(["global", "local"]), default="global", show_default=True,
              help="Under torchrun: BatchNorm statistics of the whole batch (one process's numbers) or of each rank's share (plain DDP, faster).")
@click.option("--out", type=click.Path(file_okay=False), default=None, callback=writable_folder, help="Run folder for checkpoint.pt / best.pt (default: under the cache root).")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue the run of this checkpoint.pt exactly where it stopped, with its settings (options given here must match them).")
@click.option("--per-class-csv", type=click.Path(dir_okay=False), default=None, callback=writable_file, help="Write per-class accuracy (best and last epoch) as CSV.")
@plot_option("Plot per-class accuracy vs. training images")
@common_options
def train(run, dataset, imbalance, method, preset, epochs, batch_size, lr, inner_steps, inner_lr, eps_rule, gammas, rule,
          val_per_class, n_max,
          test_per_class, model, batchnorm, out, resume, per_class_csv, plot) -> None:
    """Train ResNet-32 on CIFAR-LT with one method and report top-1 error and shot-group accuracy."""
    from lazyapps.errors import LazyAppsError, UnknownNameError
    from lazyapps.paths import cache_root
    from lazyapps.progress import status

    options = {"dataset": dataset, "imbalance": imbalance, "method": method, "preset": preset, "epochs": epochs,
               "batch_size": batch_size, "lr": lr, "inner_steps": inner_steps, "inner_lr": inner_lr, "eps_rule": eps_rule,
               "gammas": gammas, "rule": rule, "val_per_class": val_per_class, "n_max": n_max,
               "test_per_class": test_per_class, "model": model, "seed": run.seed, "batchnorm": batchnorm}
    unexposed: dict[str, Any] = {}  # settings without an option (the benchmark sets them): a resumed run keeps its own
    if resume is not None:
        from lazyapps.checkpoint import check_expected, check_files_agree, load_checkpoint, resumed_metadata

        from .trainer import CHECKPOINT_KIND, refuse_best_checkpoint

        meta = resumed_metadata(resume)
        check_expected(resume, meta, {"kind": CHECKPOINT_KIND})  # (another product's settings would be taken below)
        # The run's settings come from the .json: first it must agree with those its .pt records (an edited .json
        # would otherwise fail somewhere in the data loading or the trainer's construction).
        state, _ = load_checkpoint(resume)  # (on the CPU, as Trainer.resume takes it below: not read twice)
        check_files_agree(resume, state.get("identity") or {}, meta)  # (checkpoints from before it was kept: not checked)
        refuse_best_checkpoint(resume, meta, state)
        options.update(recorded_settings(meta, options))  # the run's own settings, but for those given here
        if meta.get("preset") not in (None, options["preset"]):  # (a preset only names settings: they come from the run)
            raise LazyAppsError(f"{resume} was trained with --preset {meta['preset']}; leave --preset out to resume it")
        unexposed = {k: tuple(meta[k]) if k == "lr_decay" else meta[k] for k in ("lr_decay", "weight_decay", "momentum") if k in meta}
    from .data import check_imbalance

    dataset, imbalance, method, preset = (options[k] for k in ("dataset", "imbalance", "method", "preset"))
    check_imbalance(imbalance)
    if method not in METHOD_NAMES:
        raise UnknownNameError("method", method, METHOD_NAMES)
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source
    for name, takers in METHOD_OPTIONS.items():  # given to another method, it would be ignored (yet recorded as the run's)
        if method not in takers and source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            raise LazyAppsError(f"--{name.replace('_', '-')} is an option of {' and '.join(takers)}, not of --method {method}")
    settings = apply_preset(PRESETS, preset, {k: options[k] for k in ("epochs", "batch_size", "n_max", "test_per_class")})
    from .data import N_MAX, CIFARLongTail
    from .trainer import TrainConfig, Trainer, check_resumable, settled_identity

    if options["n_max"] is None and settings["n_max"] is not None and dataset in N_MAX:
        # A preset's n_max is a cap: CIFAR-100 has 500 training images per class, 10 of them kept for validation
        settings["n_max"] = min(settings["n_max"], N_MAX[dataset])

    config = TrainConfig(dataset=dataset, imbalance=imbalance, method=method, epochs=settings["epochs"],
                         batch_size=settings["batch_size"], lr=0.1 if options["lr"] is None else options["lr"],
                         inner_steps=5 if options["inner_steps"] is None else options["inner_steps"],
                         inner_lr=options["inner_lr"], eps_rule=options["eps_rule"],
                         gammas=tuple(options["gammas"] or (0.75, 0.80, 0.85, 0.90, 0.95)), rule=options["rule"],
                         val_per_class=options["val_per_class"], n_max=settings["n_max"],
                         test_per_class=settings["test_per_class"], model=options["model"], seed=options["seed"],
                         preset=preset, batchnorm=options["batchnorm"], **unexposed)
    try:
        config.check()  # before the data loads: fail fast, one line
    except TypeError as exc:  # (only an edited checkpoint .json can give a setting of the wrong type)
        raise LazyAppsError(f"a setting of {resume or 'this run'} has the wrong type ({exc})") from None
    out_dir = Path(out) if out else (Path(resume).parent if resume else _default_out(cache_root(run.cache_dir), config))
    from lazyapps.checkpoint import with_metadata

    # (an output naming one of the run's files would overwrite that checkpoint when the run ends)
    keep = with_metadata({f"the run's {name}": out_dir / name for name in ("checkpoint.pt", "best.pt")} | {"--resume": resume})
    distinct_outputs({"--json": run.json_path, "--per-class-csv": per_class_csv, "--plot": plot}, keep=keep)
    existing = out_dir / "checkpoint.pt"
    if existing.exists() and (resume is None or Path(resume).resolve() != existing.resolve()):
        raise LazyAppsError(f"{out_dir} already holds a run's checkpoint; continue it with --resume {existing} "
                            f"or choose another --out (nothing was overwritten)")
    best = out_dir / "best.pt"  # (a run's best weights kept without its checkpoint.pt: the new run's would replace them)
    if best.exists() and (resume is None or Path(resume).parent.resolve() != out_dir.resolve()):
        raise LazyAppsError(f"{out_dir} already holds a run's best.pt; choose another --out (nothing was overwritten)")
    if resume is not None:  # (the trainer checks all of them again, the data's too; these need no data)
        check_resumable(resume, meta, settled_identity(config))
    data = CIFARLongTail.load(dataset, imbalance=imbalance, root=run.data_dir, rule=config.rule, val_per_class=config.val_per_class,
                              n_max=config.n_max, test_per_class=config.test_per_class, seed=config.seed)
    trainer = Trainer(config, data, device=run.device, out_dir=out_dir)  # (refuses settings the data cannot serve)
    status(data.describe())
    if resume is not None:
        trainer.resume(resume, loaded=(state, meta))
        _carry_run(Path(resume).parent, out_dir)
        status(f"resumed from {resume} after epoch {trainer.epoch}")
    schedule = trainer.schedule
    status(f"{method}: {schedule.describe()}"
           + (f", meta steps from epoch {schedule.meta_start + 1}" if trainer.method.meta else "") + f"; checkpoints in {out_dir}")

    def report(tr, row):
        status(f"epoch {row['epoch']}/{config.epochs}: loss {row['train_loss']:.4f}, top-1 error {row['top1_error']:.2f}%, "
               f"{row['train_s']:.1f}s{' (meta)' if row['meta'] else ''}")

    trainer.run(on_epoch_end=report)
    from .trainer import epoch_times

    times = epoch_times(trainer.history)
    per_class = _per_class_rows(data.classes, data.counts, trainer.best, trainer.last)
    table = _table(f"{config.dataset}-LT imbalance {imbalance:g}, {method}, {config.epochs} epochs ({preset} preset); "
                   "the literature reports the best epoch", trainer.best, trainer.last, times)
    _write_outputs(run, per_class, per_class_csv, plot, f"{config.dataset}-LT x{imbalance:g}, {method}")
    metrics = {"best": _strip(trainer.best), "last": _strip(trainer.last), **times, "counts": data.counts,
               "per_class": per_class, "history": trainer.history, "checkpoint": str(Path(trainer.checkpoint_path).resolve())}
    run.finish(trainer.config.identity() | {"preset": preset, "batchnorm": trainer.config.batchnorm, "out": str(out_dir.resolve())},
               metrics, table=table)


def _carry_run(source: Path, out_dir: Path) -> None:
    """A run resumed into another --out takes its checkpoint.pt and best.pt along: the run may already be finished
    (no epoch left to write a checkpoint there), and its best epoch may already be behind it."""
    from lazyapps.checkpoint import meta_path, write_bytes_atomic

    for name in ("checkpoint.pt", "best.pt"):
        kept = source / name
        if kept.is_file() and kept.resolve() != (out_dir / name).resolve():
            for src in (kept, meta_path(kept)):
                if src.is_file():
                    write_bytes_atomic(out_dir / src.name, src.read_bytes())


def _strip(result: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if result is None else {k: v for k, v in result.items() if k != "per_class_accuracy"}


def _table(title, best, last, times) -> str:
    from lazyapps.results import format_table

    text = format_table(_result_rows(best, last), title=title)
    parts = [f"{k.replace('_', ' ')} {v:.1f}s" for k, v in times.items() if v is not None]
    return text + ("\ntraining time: " + ", ".join(parts) if parts else "")


@longtail.command(name="eval")
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True, help="checkpoint.pt or best.pt of a longtail run.")
@click.option("--per-class-csv", type=click.Path(dir_okay=False), default=None, callback=writable_file, help="Write per-class accuracy as CSV.")
@plot_option("Plot per-class accuracy vs. training images")
@common_options
def eval_command(run, checkpoint, per_class_csv, plot) -> None:
    """Evaluate a longtail checkpoint on its test set (top-1 error, many/medium/few-shot and per-class accuracy)."""
    import models_zoo
    from lazyapps.checkpoint import MIXED_FILES, check_files_agree, first_load_problem, load_checkpoint, with_metadata
    from lazyapps.errors import CheckpointError, LazyAppsError
    from lazyapps.progress import status
    from lazyapps.results import format_table

    from .data import CIFARLongTail
    from .evaluation import evaluate
    from .trainer import CHECKPOINT_KIND, check_same_data

    distinct_outputs({"--json": run.json_path, "--per-class-csv": per_class_csv, "--plot": plot},
                     keep=with_metadata({"--checkpoint": checkpoint}))
    state, meta = load_checkpoint(checkpoint, map_location=run.device, expect={"kind": CHECKPOINT_KIND})
    if "model" not in state:
        raise CheckpointError(f"{checkpoint} is not a longtail checkpoint (kind {meta.get('kind')!r}); pass a checkpoint.pt or best.pt written by 'lazyapps longtail train'")
    if str(meta.get("model", "")).startswith("custom:"):
        raise CheckpointError(f"{checkpoint} was trained with the user's own network ({meta['model'][7:]}), which the "
                              f"command cannot rebuild; evaluate it from Python (longtail.evaluation.evaluate)")
    # The data and the network are rebuilt from the .json: it must describe the run whose weights the .pt holds.
    check_files_agree(checkpoint, state.get("identity") or {}, meta)  # (checkpoints from before it was kept: not checked)
    try:
        data = CIFARLongTail.load(meta["dataset"], imbalance=meta["imbalance"], root=run.data_dir, rule=meta["rule"],
                                  val_per_class=meta["val_per_class"], n_max=meta["n_max"],
                                  test_per_class=meta["test_per_class"], seed=meta["seed"])
        status(data.describe())
        options = {"normalized_head": True} if meta.get("normalized_head") else {}
        model = models_zoo.create(meta["model"], num_classes=len(meta["classes"]), in_channels=int(data.test_images.shape[1]),
                                  image_size=int(data.test_images.shape[-1]), **options).to(run.device)
        check_same_data(checkpoint, meta, data)
        model.load_state_dict(state["model"])
    except LazyAppsError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a .json with a setting missing or garbled
        raise CheckpointError(f"checkpoint {checkpoint} cannot be rebuilt from its metadata ({first_load_problem(exc)}); "
                              f"{MIXED_FILES}") from None
    result = evaluate(model, data.test_images, data.test_labels, data.counts, mean=data.mean, std=data.std, device=run.device)
    epoch = meta.get("best_epoch", meta.get("epochs_done"))
    row = {"epoch": epoch, "top1 error %": result["top1_error"], "many %": result["many_accuracy"],
           "medium %": result["medium_accuracy"], "few %": result["few_accuracy"]}
    table = format_table([row], title=f"{meta['dataset']}-LT imbalance {meta['imbalance']:g}, {meta['method']}: {checkpoint}")
    per_class = _per_class_rows(data.classes, data.counts, {"per_class_accuracy": result["per_class_accuracy"]}, None)
    for r in per_class:
        r["accuracy"] = r.pop("best_accuracy")
        del r["last_accuracy"]
    _write_outputs(run, per_class, per_class_csv, plot, f"{meta['dataset']}-LT x{meta['imbalance']:g}, {meta['method']}",
                   keys=("accuracy",))
    run.finish({"checkpoint": str(checkpoint), **{k: meta.get(k) for k in ("dataset", "imbalance", "method", "model")}},
               {**_strip(result), "epoch": epoch, "per_class": per_class}, table=table)
