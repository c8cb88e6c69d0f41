"""``lazyapps fewshot``: meta-train a few-shot learner (``train``) and evaluate a checkpoint (``eval``).

Top-level imports stay light (click only); torch loads when a command runs.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from lazyapps.cli import (INT64, RunContext, apply_preset, common_options, distinct_outputs, gammas_option, preset_option,
                          recorded_settings, writable_folder)
from lazyapps.plotting import plot_option

#: every learner is scored on the same seeded test tasks, whatever ``--seed`` trained it.
EVAL_SEED = 2017
#: What ``train --resume`` takes from the checkpoint unless given (metadata keys, and hyperparameters, named as the options).
RESUMED_OPTIONS = ("algo", "dataset", "arch", "ways", "shots", "queries", "train_shots", "meta_batch", "shuffle_classes",
                   "transductive", "vectorize", "preset", "seed", "eval_tasks", "eval_every")

#: Loop settings per preset (None: the learner's paper default). Hyperparameters stay the papers'.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"iterations": 3, "meta_batch": 2, "queries": 2, "eval_tasks": 4, "eval_every": 0},
    "quick": {"iterations": 300, "meta_batch": 8, "queries": 5, "eval_tasks": 200, "eval_every": 50},
    "paper": {"iterations": None, "meta_batch": None, "queries": 15, "eval_tasks": 1000, "eval_every": 1000},
}
DEFAULT_LOOP = {"iterations": 1000, "meta_batch": 4}
CURVE_TASKS = 50  # tasks per learning-curve point (cheap, fixed)


def _hparam_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """``--hp name=value`` pairs as a dict (:func:`~fewshot.experiment.parse_hparam` reads each)."""
    from .experiment import parse_hparam

    out: dict[str, Any] = {}
    for item in values:
        try:
            name, value = parse_hparam(item)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE, e.g. --hp lam=0.5") from None
        out[name] = value
    return out


def _warn_if_not_finite(evaluation) -> None:
    """One status line when some test tasks scored inf/nan: the mean is then not a number worth comparing."""
    import math

    from lazyapps.progress import status

    bad = sum(not math.isfinite(v) for v in evaluation.values)
    if bad:
        status(f"warning: {bad} of {evaluation.tasks} test tasks scored a non-finite {evaluation.metric}: "
               "adaptation diverged on them (a smaller inner learning rate or fewer steps may help)")


@click.group()
def fewshot() -> None:
    """Few-shot learning: MAML family, lazy learners, iMAML, Meta-SGD, meta-LSTM, TURTLE."""


def _plot_curve(path: str, history: list[dict[str, float]], curve: list[dict[str, float]], *, title: str) -> None:
    from lazyapps.plotting import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6, 4))
    keys = [k for k in ("accuracy", "mse", "loss") if any(k in h for h in history)]
    if keys:
        key = keys[0]
        xs = [i + 1 for i, h in enumerate(history) if key in h]
        ys = [h[key] for h in history if key in h]
        window = max(1, len(ys) // 50)
        smooth = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
        ax.plot(xs, smooth, label=f"meta-train query {key}")
    if curve:
        ax.plot([c["iteration"] for c in curve], [c["mean"] for c in curve], "o-", label=f"held-out {curve[0]['metric']}")
    ax.set_xlabel("meta-iteration")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def _table(rows: list[dict[str, Any]], title: str) -> str:
    from lazyapps.results import format_table

    return format_table(rows, title=title)


def _refuse_changed_hparams(resume: str, stored: dict[str, Any], explicit: dict[str, Any]) -> None:
    """A resumed run continues the checkpoint's hyperparameters: one given differently is refused, not ignored.

    ``eval_inner_steps`` is exempt: it only changes how the learner is scored, not what it learns.
    """
    from lazyapps.errors import LazyAppsError

    for name, value in explicit.items():
        if value is None or name == "eval_inner_steps" or name not in stored:
            continue
        given = list(value) if isinstance(value, tuple) else value
        if given != stored[name]:
            raise LazyAppsError(f"{resume} was meta-trained with {name}={stored[name]!r}, not {given!r}; --resume continues the "
                                f"checkpoint's hyperparameters (drop the flag, or start a new run with another --out)")


def _refuse_transductive_for_regression(dataset: str) -> None:
    """--transductive is about BatchNorm statistics over a task's queries; regression tasks are scored without it."""
    from lazyapps.errors import LazyAppsError

    if click.get_current_context().get_parameter_source("transductive") is ParameterSource.COMMANDLINE:
        raise LazyAppsError(f"--transductive / --no-transductive do not apply to {dataset} regression (its tasks are scored "
                            f"without BatchNorm statistics); leave the flag out")


@fewshot.command("train")
@click.option("--algo", default=None, help="Learning algorithm (e.g. maml, fomaml, reptile, lazy-maml, lazy-reptile, scratch, finetune; see `lazyapps fewshot algos`); required unless --resume.")
@click.option("--dataset", default="omniglot", show_default=True, help="omniglot, omniglot-lake, sine, cifar-fs, miniimagenet, tieredimagenet or folder:PATH.")
@click.option("--arch", default=None, help="Model zoo architecture (default: conv4 for images, sine_mlp for sine).")
@click.option("--ways", type=INT64, default=5, show_default=True, help="Classes per task (N).")
@click.option("--shots", type=INT64, default=1, show_default=True, help="Support examples per class (K).")
@click.option("--queries", type=INT64, default=None, help="Query examples per class (default: the preset's).")
@click.option("--train-shots", type=INT64, default=None,
              help="Support examples per class of the meta-training tasks (default: the algorithm's; --shots except reptile/lazy-reptile on Omniglot, 10 as Nichol et al.).")
@click.option("--inner-steps", type=INT64, default=None, help="Inner (student) steps during meta-training (default: the paper's).")
@click.option("--eval-inner-steps", type=INT64, default=None, help="Inner steps at meta-test (default: the paper's).")
@click.option("--inner-lr", type=float, default=None, help="Inner learning rate (default: the paper's).")
@click.option("--meta-lr", type=float, default=None, help="Meta learning rate (default: the paper's).")
@click.option("--iterations", type=INT64, default=None, help="Meta-iterations (default: the preset's).")
@click.option("--meta-batch", type=INT64, default=None, help="Tasks per meta-iteration (default: the preset's / paper's).")
@click.option("--last", type=click.IntRange(1, 10), default=None, help="Lazy learners: checkpoints the teacher mixes (1 or 3 in the paper).")
@click.option("--gammas", callback=gammas_option, default=None, help="Lazy learners: the teacher's gamma grid, comma-separated; ties go to the first listed (default 0.75,...,0.95).")
@click.option("--zero-head", is_flag=True, default=None,
              help="Zero the output layer at the start and after every meta-update (Kao et al.'s zeroing trick; off in the papers).")
@click.option("--hp", "extra_hparams", multiple=True, callback=_hparam_values, metavar="NAME=VALUE",
              help="Any other hyperparameter of the learner, repeatable: e.g. --hp lam=0.5 --hp cg_steps=10 (imaml), "
                   "--hp first_order=false (meta-lstm, turtle); `lazyapps fewshot algos` lists them.")
@click.option("--shuffle-classes/--no-shuffle-classes", default=True, show_default=True, help="Relabel classes per task (off: one global class order, Yin et al.'s memorization setting).")
@click.option("--transductive/--no-transductive", default=True, show_default=True, help="BatchNorm statistics of the whole query batch at test (off: support + one query example at a time).")
@click.option("--vectorize/--no-vectorize", default=True, show_default=True, help="Run a meta-batch's tasks with torch.func.vmap (off: a loop over tasks).")
@click.option("--eval-tasks", type=INT64, default=None, help="Test tasks scored at the end (default: the preset's).")
@click.option("--eval-every", type=INT64, default=None, help="Learning-curve point + checkpoint every N iterations (0: only at the end).")
@click.option("--out", type=click.Path(file_okay=False), default=None, callback=writable_folder, help="Run folder for checkpoint.pt (default: the --resume checkpoint's folder, else fewshot-runs/<algo>-<dataset>-<ways>way-<shots>shot).")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from this checkpoint with its settings (algo, dataset, task stream, hyperparameters, iterations asked): options given here must match them, but for a larger --iterations.")
@plot_option("Save the learning curve to this image file")
@preset_option("quick")
@common_options
def train(run: RunContext, algo: str, dataset: str, arch: str | None, ways: int, shots: int, queries: int | None,
          train_shots: int | None, inner_steps: int | None, eval_inner_steps: int | None, inner_lr: float | None, meta_lr: float | None,
          iterations: int | None, meta_batch: int | None, last: int | None, gammas: tuple[float, ...] | None, zero_head: bool | None,
          extra_hparams: dict[str, Any], shuffle_classes: bool, transductive: bool, vectorize: bool, eval_tasks: int | None, eval_every: int | None,
          out: str | None, resume: str | None, plot: str | None, preset: str) -> None:
    """Meta-train a few-shot learner, checkpoint it, and score it on held-out test tasks."""
    import torch

    from lazyapps.errors import DivergedError, Interrupted, LazyAppsError
    from lazyapps.progress import status

    from .base import get_learner
    from .datasets import dataset_info, task_source
    from .experiment import build_learner, check_metadata, checkpoint_metadata, load_learner, save_learner, split_settings
    from .tasks import TooFewExamplesError

    if resume is not None:  # the run's own settings, but for those given here (checked against the run's below)
        from lazyapps.checkpoint import resumed_metadata

        stored = resumed_metadata(resume)
        check_metadata(resume, stored)  # (its settings are used below before the learner is loaded)
        recorded = recorded_settings({**stored.get("hparams", {}), **stored}, RESUMED_OPTIONS)
        if isinstance(stored.get("target_iterations"), int):  # (an edited .json's text is not a count: the preset's then)
            recorded.update(recorded_settings({"iterations": stored["target_iterations"]}, ["iterations"]))
        if "preset" not in recorded and preset != stored.get("preset"):
            # another --preset given here brings its own loop values (the checks below name what differs)
            recorded = {k: v for k, v in recorded.items() if k not in PRESETS["quick"]}
        (algo, dataset, arch, ways, shots, queries, train_shots, iterations, meta_batch, shuffle_classes, transductive, vectorize,
         preset, eval_tasks, eval_every) = (recorded.get(name, value) for name, value in (
            ("algo", algo), ("dataset", dataset), ("arch", arch), ("ways", ways), ("shots", shots), ("queries", queries),
            ("train_shots", train_shots), ("iterations", iterations), ("meta_batch", meta_batch),
            ("shuffle_classes", shuffle_classes), ("transductive", transductive), ("vectorize", vectorize), ("preset", preset),
            ("eval_tasks", eval_tasks), ("eval_every", eval_every)))
        run.seed = recorded.get("seed", run.seed)
        if stored.get("seed", run.seed) != run.seed:  # a --seed given here: the run's task stream was drawn from its own
            raise LazyAppsError(f"{resume} was meta-trained with --seed {stored['seed']}; leave --seed out to resume it")
    if algo is None:
        raise LazyAppsError("--algo is required (or --resume CHECKPOINT, which takes the run's)")
    cls = get_learner(algo)  # unknown name -> one line listing the registry
    info = dataset_info(dataset)
    for flag, value in (("--ways", ways), ("--shots", shots)):
        if value < 1:
            raise LazyAppsError(f"{flag} must be positive, got {value}")
    if info.problem == "regression":
        if ways != 1 and click.get_current_context().get_parameter_source("ways") is ParameterSource.COMMANDLINE:
            warnings.warn(f"--ways does not apply to {dataset} regression (one function per task); ignored")
        ways = 1
        _refuse_transductive_for_regression(dataset)
    if not cls.meta_learns and iterations:
        raise LazyAppsError(f"--algo {algo} does not meta-train; drop --iterations")
    if eval_every is not None and eval_every < 0:
        raise LazyAppsError(f"--eval-every must be >= 0 (0: only at the end), got {eval_every}")
    arch = arch or info.arch
    settings = apply_preset(PRESETS, preset, {"iterations": iterations, "meta_batch": meta_batch, "queries": queries,
                                               "eval_tasks": eval_tasks, "eval_every": eval_every})
    explicit = {"inner_steps": inner_steps, "eval_inner_steps": eval_inner_steps, "inner_lr": inner_lr, "meta_lr": meta_lr,
                "last": last, "gammas": gammas, "zero_head": zero_head}
    for name, value in extra_hparams.items():
        takes = cls.hparam_names() - {"problem", "vectorize", "transductive"}
        if name not in takes:
            raise LazyAppsError(f"--hp {name} is not a hyperparameter of --algo {algo} (it takes: {', '.join(sorted(takes))})")
        if explicit.get(name) is not None:
            raise LazyAppsError(f"{name} is given both as --{name.replace('_', '-')} and as --hp {name}; give it once")
        explicit[name] = value
    hparams, paper_loop = split_settings(algo, dataset=dataset, ways=ways, shots=shots, explicit=explicit)
    try:  # before any data loads: a value of the wrong type or range is one line now, not a traceback later
        hparams = cls.check_hparams(hparams)
    except ValueError as exc:
        raise LazyAppsError(f"--algo {algo}: {exc}") from None
    for key in ("iterations", "meta_batch"):
        if settings.get(key) is None:
            settings[key] = paper_loop.get(key, DEFAULT_LOOP[key])
    if not cls.meta_learns:
        settings["iterations"] = 0
    settings["train_shots"] = train_shots if train_shots is not None else paper_loop.get("train_shots", shots)
    for key in ("iterations", "meta_batch", "queries", "eval_tasks", "train_shots"):
        if settings[key] < (0 if key == "iterations" else 1):
            raise LazyAppsError(f"--{key.replace('_', '-')} must be positive, got {settings[key]}")

    default_out = f"fewshot-runs/{algo}-{dataset.replace(':', '_').replace('/', '_')}-{ways}way-{shots}shot"
    out_dir = Path(out) if out else (Path(resume).parent if resume else Path(default_out))  # a resumed run stays in its folder
    ckpt = out_dir / "checkpoint.pt"
    from lazyapps.checkpoint import with_metadata

    # (an output naming one of the run's files would overwrite that checkpoint when the run ends)
    distinct_outputs({"--json": run.json_path, "--plot": plot},
                     keep=with_metadata({"the run's checkpoint.pt": ckpt, "--resume": resume}))
    if ckpt.exists() and (resume is None or Path(resume).resolve() != ckpt.resolve()):
        raise LazyAppsError(f"{ckpt} already exists; pass --resume {ckpt} to continue it, or another --out")

    # The learner before the data: its own checks (lazy-maml's criterion, reptile's inner_optimizer, zero_head on sine,
    # ...) and a --resume checkpoint's identity are one line before anything loads. The order changes no result:
    # loading the data draws nothing from torch's global stream, from which the fresh learner draws its weights.
    hparams.update(transductive=transductive, vectorize=vectorize)
    history: list[dict[str, float]] = []
    curve: list[dict[str, Any]] = []
    if resume:
        learner, state, meta = load_learner(resume, device=run.device, expect={"algo": algo, "arch": arch, "dataset": dataset, "ways": ways, "shots": shots},
                                            transductive=transductive, vectorize=vectorize, eval_inner_steps=eval_inner_steps)
        _refuse_changed_hparams(resume, learner.hparams(), cls.check_hparams({k: v for k, v in explicit.items() if v is not None}))
        if cls.meta_learns and settings["iterations"] <= learner.iteration:
            raise LazyAppsError(f"{resume} is already at iteration {learner.iteration}; give --iterations above it to continue "
                                f"(lazyapps fewshot eval scores it as it is)")
    else:
        learner = build_learner(algo, dataset=dataset, ways=ways, arch=arch, device=run.device, **hparams)

    common = {"ways": ways, "shots": shots, "queries": settings["queries"], "shuffle_classes": shuffle_classes,
              "device": run.device, "root": run.data_dir, "cache_dir": run.cache_dir}
    extra_shots = f", meta-training on {settings['train_shots']} shots" if settings["train_shots"] != shots else ""
    setting = (f"{ways}-way {shots}-shot, {settings['queries']} queries per class" if info.problem == "classification"
               else f"{shots}-shot regression, {settings['queries']} query points per task")  # (sine: one function per task)
    status(f"loading {dataset} ({setting}{extra_shots})")
    try:
        train_tasks = task_source(dataset, split="train", seed=run.seed, **{**common, "shots": settings["train_shots"]})
    except TooFewExamplesError as exc:
        fits = exc.smallest - settings["queries"]
        if train_shots is not None:  # the user's own --train-shots: theirs to fix
            raise LazyAppsError(exc.explain("train-shots", "lower --train-shots or --queries")) from None
        if fits < shots:  # not even the user's --shots fit beside the queries (nor will they in the test tasks)
            raise LazyAppsError(exc.explain("shots", "lower --shots or --queries", shots=shots)) from None
        # The algorithm's default asks for more shots than the classes hold beside the queries (e.g. Omniglot's 20
        # drawings with the paper preset's 15 queries): meta-train on as many as fit.
        settings["train_shots"] = fits
        status(f"meta-training on {fits} shots per class, the most {dataset}'s classes hold beside {settings['queries']} queries")
        train_tasks = task_source(dataset, split="train", seed=run.seed, **{**common, "shots": fits})
    try:
        test_tasks = task_source(dataset, split="test", seed=EVAL_SEED, **common)
    except TooFewExamplesError as exc:
        raise LazyAppsError(exc.explain("shots", "lower --shots or --queries")) from None

    if resume:
        # The task stream must be the one the checkpoint was trained on (checkpoints before a key: not checked). Checked
        # after the data loads: a default --train-shots may have shrunk to what the classes hold.
        differ = []  # every difference at once: a preset left out changes several
        for key, flag, now in (("train_shots", "--train-shots", settings["train_shots"]), ("queries", "--queries", settings["queries"]),
                               ("meta_batch", "--meta-batch", settings["meta_batch"])):
            then = int(meta.get(key, meta["shots"] if key == "train_shots" else now))  # (train_shots: once always --shots)
            if then != now:
                differ.append(f"{flag} {then}")
        if bool(meta.get("shuffle_classes", shuffle_classes)) != shuffle_classes:
            differ.append("--shuffle-classes" if meta["shuffle_classes"] else "--no-shuffle-classes")
        if differ:
            raise LazyAppsError(f"{resume} was meta-trained with {' '.join(differ)}; resume it with {' '.join(differ)}"
                                + (f" (or the --preset {meta['preset']} it was trained with)" if meta.get("preset") else ""))
        history, curve = list(state.get("history", [])), list(state.get("curve", []))
        if "sampler_rng" in state:
            train_tasks.generator.set_state(state["sampler_rng"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
        status(f"resumed {resume} at iteration {learner.iteration}")
    learner.prepare(train_tasks)  # e.g. finetune's head over the training classes, so the metadata records its size
    meta = checkpoint_metadata(learner, arch=arch, dataset=dataset, ways=ways, shots=shots, queries=settings["queries"],
                               train_shots=settings["train_shots"], meta_batch=settings["meta_batch"],
                               shuffle_classes=shuffle_classes, seed=run.seed, preset=preset,
                               target_iterations=settings["iterations"], eval_tasks=settings["eval_tasks"],
                               eval_every=settings["eval_every"])
    curve_tasks = test_tasks.fixed_tasks(min(CURVE_TASKS, settings["eval_tasks"]), seed=EVAL_SEED + 1)

    def rng_states() -> dict[str, torch.Tensor]:
        # The task stream's and torch's RNG states make --resume continue exactly as an uninterrupted run would.
        return {"sampler_rng": train_tasks.generator.get_state(), "torch_rng": torch.get_rng_state()}

    # The states the next iteration starts from, taken when an iteration completes. A Ctrl-C lands inside a step,
    # after its meta-batch was drawn: the states of that moment would make --resume skip the interrupted batch.
    completed = rng_states()

    def save(states: dict[str, torch.Tensor] | None = None) -> None:
        save_learner(ckpt, learner, {**meta, "iteration": learner.iteration}, history=history, curve=curve,
                     **(states or rng_states()))

    def curve_point_due(iteration: int) -> bool:
        # (the last iteration's point comes with the final scoring below)
        every = settings["eval_every"]
        return bool(every) and 0 < iteration < settings["iterations"] and iteration % every == 0

    def add_curve_point(iteration: int) -> None:
        ev = learner.evaluate(curve_tasks)
        curve.append({"iteration": iteration, "metric": ev.metric, "mean": ev.mean, "ci95": ev.ci95})
        completed.update(rng_states())  # (the evaluation may have drawn from torch's stream)
        save(completed)

    def callback(iteration: int, metrics: dict[str, float]) -> None:
        completed.update(rng_states())  # (a Ctrl-C during the evaluation below resumes after this iteration)
        history.append({k: float(v) for k, v in metrics.items()})
        if curve_point_due(iteration):
            add_curve_point(iteration)

    if cls.meta_learns:
        status(f"meta-training {algo} on {arch} for {settings['iterations']} iterations, meta-batch {settings['meta_batch']}")
    else:
        status(f"{algo} does not meta-train: it learns each test task from {arch}'s initial weights")
    try:
        if resume and curve_point_due(learner.iteration) and all(p.get("iteration") != learner.iteration for p in curve):
            # A Ctrl-C during this point's evaluation saved the iteration without it: compute it first, from the
            # random states the checkpoint kept from before that evaluation, as the uninterrupted run did.
            add_curve_point(learner.iteration)
        learner.meta_train(train_tasks, iterations=settings["iterations"], meta_batch=settings["meta_batch"],
                           callback=callback, progress=True)
    except KeyboardInterrupt:
        save(completed)
        raise Interrupted(f"interrupted at iteration {learner.iteration}; saved {ckpt} (continue with --resume {ckpt})") from None
    except DivergedError as exc:  # the diverged parameters are not saved over the last good checkpoint
        from lazyapps.checkpoint import load_metadata

        on_disk = load_metadata(ckpt).get("iteration")  # (also a resumed run's checkpoint not yet rewritten)
        kept = f"{ckpt} still holds iteration {on_disk}" if on_disk is not None else "no checkpoint was written"
        raise DivergedError(f"{exc}; {kept}") from None
    # The finished training is saved before anything scores it: a Ctrl-C or a failure while scoring never loses it.
    save(completed)
    try:
        final = learner.evaluate(curve_tasks)
        curve.append({"iteration": learner.iteration, "metric": final.metric, "mean": final.mean, "ci95": final.ci95})
        save()  # (again, with the last curve point)
        status(f"scoring on {settings['eval_tasks']} test tasks")
        evaluation = learner.evaluate(test_tasks.fixed_tasks(settings["eval_tasks"], seed=EVAL_SEED))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while scoring after iteration {learner.iteration}; saved {ckpt} (score it with "
                          f"lazyapps fewshot eval --checkpoint {ckpt})") from None
    _warn_if_not_finite(evaluation)
    from lazyapps.distributed import is_main

    if plot and is_main():  # under torchrun rank 0 draws the one figure
        _plot_curve(plot, history, curve, title=f"{algo} {dataset} {ways}-way {shots}-shot")
    recent = [h for h in history[-20:]]
    train_metric = {k: sum(h[k] for h in recent if k in h) / max(1, sum(k in h for h in recent))
                    for k in ("loss", "accuracy", "mse") if any(k in h for h in recent)}
    metrics = {"test": evaluation.as_dict(), "train_last20": train_metric, "iterations": learner.iteration,
               "curve": curve, "checkpoint": str(Path(ckpt).resolve())}  # (a file it wrote: found from anywhere)
    config = {"algo": algo, "dataset": dataset, "arch": arch, "ways": ways, "shots": shots, "preset": preset,
              **{k: settings[k] for k in ("iterations", "meta_batch", "queries", "train_shots", "eval_tasks", "eval_every")},
              "shuffle_classes": shuffle_classes, "hparams": learner.hparams(), "device": str(run.device), "seed": run.seed}
    unit = "%" if evaluation.metric == "accuracy" else ""
    row = {"algo": algo, "dataset": dataset, "setting": f"{ways}-way {shots}-shot" if info.problem == "classification" else f"{shots}-shot",
           "iterations": learner.iteration, f"test {evaluation.metric}": f"{evaluation.mean:.2f}{unit} ± {evaluation.ci95:.2f}{unit}",
           "tasks": evaluation.tasks,
           "transductive BN": evaluation.bn_label}
    run.finish(config, metrics, table=_table([row], f"few-shot meta-training (checkpoint: {ckpt})"))


@fewshot.command("eval")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(dir_okay=False), help="A checkpoint.pt written by `lazyapps fewshot train`.")
@click.option("--tasks", "num_tasks", type=click.IntRange(1), default=1000, show_default=True, help="Seeded test tasks to score.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True, help="Which classes the tasks come from.")
@click.option("--queries", type=INT64, default=None, help="Query examples per class (default: as trained).")
@click.option("--eval-inner-steps", type=INT64, default=None, help="Adaptation steps (default: as trained).")
@click.option("--transductive/--no-transductive", default=None, help="BatchNorm on the whole query batch or per query example (default: as trained).")
@click.option("--algo", default=None, help="Refuse the checkpoint unless it was made by this algorithm.")
@click.option("--arch", default=None, help="Refuse the checkpoint unless it was made with this architecture.")
@plot_option("Save the checkpoint's learning curve to this image file")
@common_options
def eval_command(run: RunContext, checkpoint: str, num_tasks: int, split: str, queries: int | None, eval_inner_steps: int | None,
                 transductive: bool | None, algo: str | None, arch: str | None, plot: str | None) -> None:
    """Score a checkpoint on seeded test tasks: mean accuracy ± 95% confidence interval (MSE for sine)."""
    from lazyapps.errors import LazyAppsError
    from lazyapps.progress import status

    from .base import get_learner
    from .datasets import dataset_info, task_source
    from .experiment import load_learner
    from .tasks import TooFewClassesError, TooFewExamplesError

    if algo is not None:
        get_learner(algo)
    if queries is not None and queries < 1:
        raise LazyAppsError(f"--queries must be positive, got {queries}")
    from lazyapps.checkpoint import with_metadata

    distinct_outputs({"--json": run.json_path, "--plot": plot}, keep=with_metadata({"--checkpoint": checkpoint}))
    expect = {k: v for k, v in {"algo": algo, "arch": arch}.items() if v is not None}
    learner, state, meta = load_learner(checkpoint, expect=expect, device=run.device, transductive=transductive,
                                        eval_inner_steps=eval_inner_steps)
    dataset, ways, shots = meta["dataset"], int(meta["ways"]), int(meta["shots"])
    if dataset_info(dataset).problem == "regression":
        if split != "test":
            raise LazyAppsError(f"{dataset} tasks are drawn afresh, not from class splits; leave out --split {split}")
        _refuse_transductive_for_regression(dataset)
    queries = queries if queries is not None else int(meta.get("queries", 15))
    status(f"scoring {meta['algo']} ({meta['arch']}, {meta['iteration']} iterations) on {num_tasks} {split} tasks of {dataset}")
    try:
        tasks = task_source(dataset, split=split, ways=ways, shots=shots, queries=queries, seed=EVAL_SEED, device=run.device,
                            shuffle_classes=bool(meta.get("shuffle_classes", True)), root=run.data_dir, cache_dir=run.cache_dir)
    except TooFewExamplesError as exc:  # the checkpoint fixes the shots: --queries is the one option to change here
        fits = exc.smallest - shots
        fix = (f"lower --queries to {fits} or fewer" if fits >= 1 else
               f"its classes are too small for the checkpoint's {shots} shots; score another --split")
        raise LazyAppsError(exc.explain("shots", fix)) from None
    except TooFewClassesError as exc:  # (eval has no --ways: the checkpoint fixes them)
        raise LazyAppsError(f"the checkpoint's {exc.ways}-way tasks need {exc.ways} classes, but {exc.name} has "
                            f"{exc.classes}; score another --split") from None
    evaluation = learner.evaluate(tasks.fixed_tasks(num_tasks, seed=EVAL_SEED))
    _warn_if_not_finite(evaluation)
    from lazyapps.distributed import is_main

    if plot and is_main():  # under torchrun rank 0 draws the one figure
        _plot_curve(plot, list(state.get("history", [])), list(state.get("curve", [])), title=f"{meta['algo']} {dataset} {ways}-way {shots}-shot")
    unit = "%" if evaluation.metric == "accuracy" else ""
    row = {"algo": meta["algo"], "arch": meta["arch"], "dataset": dataset, "split": split,
           "setting": f"{ways}-way {shots}-shot" if dataset_info(dataset).problem == "classification" else f"{shots}-shot",
           evaluation.metric: f"{evaluation.mean:.2f}{unit} ± {evaluation.ci95:.2f}{unit}", "tasks": evaluation.tasks,
           "transductive BN": evaluation.bn_label}
    config = {"checkpoint": checkpoint, "tasks": num_tasks, "split": split, "queries": queries, **{k: meta[k] for k in ("algo", "arch", "dataset", "ways", "shots", "iteration")},
              "hparams": learner.hparams(), "device": str(run.device), "eval_seed": EVAL_SEED}
    run.finish(config, {"test": evaluation.as_dict()}, table=_table([row], "few-shot evaluation (95% CI = 1.96·std/√tasks)"))


@fewshot.command("algos")
@common_options
def algos_command(run: RunContext) -> None:
    """List the registered learning algorithms with their default hyperparameters."""
    import inspect

    from .base import LEARNERS, Learner, available

    rows = []
    for name in available():
        cls = LEARNERS[name]
        doc = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())  # the summary paragraph, however wrapped
        defaults, names = {}, cls.hparam_names() - {"problem", "vectorize", "transductive"}
        for klass in reversed(cls.__mro__):  # subclass defaults win
            if isinstance(klass, type) and issubclass(klass, Learner) and "__init__" in vars(klass):
                for pname, p in inspect.signature(klass.__init__).parameters.items():
                    if pname in names:
                        defaults[pname] = p.default
        for pname in inspect.signature(Learner.__init__).parameters:  # the base class's options after the algorithm's own
            if pname in defaults:
                defaults[pname] = defaults.pop(pname)
        doc = doc.replace(" as a :class:`~fewshot.base.Learner`", "").replace("``", "")
        rows.append({"algo": name, "description": doc, "defaults": ", ".join(f"{k}={v}" for k, v in defaults.items())})
    from lazyapps.results import format_table

    text = format_table([{k: r[k] for k in ("algo", "description")} for r in rows], title="few-shot learners", left=("description",))
    text += "\n\nhyperparameters (set with the named flags or --hp NAME=VALUE; the dataset's paper settings override these defaults):\n"
    text += "\n".join(f"  {r['algo']}: {r['defaults']}" for r in rows)
    run.finish({}, {"algos": available(), "defaults": {r["algo"]: r["defaults"] for r in rows}}, table=text)
