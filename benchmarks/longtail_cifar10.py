"""CIFAR-LT benchmark: every long-tail method under one (reduced) budget, beside the papers' numbers.

    python benchmarks/longtail_cifar10.py                      # CIFAR-10-LT x100 on the shared subset, reduced budget
    python benchmarks/longtail_cifar10.py --smoke              # seconds: a code-path check (tiny model, 2 epochs)
    python benchmarks/longtail_cifar10.py --dataset cifar100 --imbalance 100 --epochs 200 --n-max 0 --test-per-class 0

All methods share data, seed, initial weights and schedule. The meta methods
(l2rw, meta-weight-net, two-component, lazy-two-component) train with plain CE
until the meta phase starts (Jamal et al.), so their first epochs are *exactly*
the CE run's: they start from the CE run's checkpoint at that epoch instead of
recomputing it (same weights, momentum and random stream, by construction).
Plain methods run in parallel worker processes (``--jobs``), so their per-epoch
wall times are perturbed by each other; the meta/CE cost ratio is measured
separately, in one process, by interleaving CE, two-component and
lazy-two-component steps on the same batches from the same weights.

Reference: ResNet-32 top-1 error (%) on CIFAR-100-LT at imbalance 200/100/50/20
as reported in the lazy paper (Jamal, Wang, Gong) — CIFAR-100 is not on this
machine, so these are printed beside, not reproduced.
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _script import (ScriptParser, WritableFile, WritableFolder, clock, names, non_negative_int, positive_float,  # noqa: E402
                     positive_int, seed)  # (beside this script)

PAPER_CIFAR100_LT = {  # imbalance 200 / 100 / 50 / 20, ResNet-32 top-1 error %
    "ce": (65.16, 61.68, 56.15, 48.86),
    "cb-ce": (64.30, 61.44, 55.45, 48.47),
    "l2rw": (67.00, 61.10, 56.83, 49.25),
    "meta-weight-net": (63.38, 58.39, 54.34, 46.96),
    "two-component": (60.69, 56.65, 51.47, 44.38),
    "lazy-two-component": (58.67, 53.46, 48.24, 43.68),
}
PLAIN = ("ce", "cb-ce", "cb-focal", "ldam-drw", "logit-adjust")
META = ("l2rw", "meta-weight-net", "two-component", "lazy-two-component")


def _config(args, method):
    from longtail.trainer import TrainConfig

    return TrainConfig(dataset=args.dataset, imbalance=args.imbalance, method=method, epochs=args.epochs,
                       batch_size=args.batch_size, inner_steps=args.inner_steps, n_max=args.n_max or None,
                       lr_decay=args.lr_decay, inner_lr=args.inner_lr, eps_rule=args.eps_rule,
                       **({} if args.gammas is None else {"gammas": args.gammas}),
                       test_per_class=args.test_per_class or None, model=args.model, seed=args.seed,
                       preset="benchmark-smoke" if args.smoke else "benchmark")


def _decay(text: str) -> tuple[float, float]:
    """``--lr-decay``'s two multipliers ("0.01,0.0001"); an ``argparse`` type, so bad text is refused when parsed."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated multipliers, got {text!r}")
    first, second = (positive_float(v) for v in parts)
    return first, second


def _gammas(text: str) -> tuple[float, ...]:
    """``--gammas``: :func:`lazyapps.cli.parse_gammas` as an ``argparse`` type."""
    from lazyapps.cli import parse_gammas

    try:
        return parse_gammas(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _data(args):
    from longtail.data import CIFARLongTail

    return CIFARLongTail.load(args.dataset, imbalance=args.imbalance, root=args.data_dir, n_max=args.n_max or None,
                              test_per_class=args.test_per_class or None, seed=args.seed)


def _worker_init() -> None:
    from lazyapps.allocator import keep_freed_memory

    keep_freed_memory()  # spawned workers start with glibc's defaults; give them the CLI's setting too


def _continue_ce_phase(trainer, path, device: str) -> None:
    """Load the CE run's checkpoint at the meta start into ``trainer``; it must have these data and schedule settings."""
    from lazyapps.checkpoint import load_checkpoint

    same = {k: v for k, v in trainer.config.identity().items()
            if k not in ("method", "inner_steps", "gammas", "inner_lr", "eps_rule")}
    state, _ = load_checkpoint(path, map_location=device, expect=same)
    trainer.load_state(state)


def _reseed_meta_phase(trainer, meta_seed: int | None) -> None:
    """With ``--meta-seed``, the epochs from the meta start on draw their batch order and augmentation from a stream
    seeded with it (every method of the command alike, CE included); None: the CE run's stream goes on."""
    if meta_seed is not None:
        trainer.generator.manual_seed(meta_seed)


def run_method(args, method: str, threads: int) -> dict:
    """Train one method (a worker process); meta methods start from the CE phase checkpoint."""
    import torch

    from longtail.trainer import Trainer, epoch_times

    torch.set_num_threads(threads)
    data = _data(args)
    trainer = Trainer(_config(args, method), data, device=args.device)
    ce_phase = Path(args.out) / "ce_phase.pt"
    started_at = 0
    if method in META:
        _continue_ce_phase(trainer, args.ce_phase or ce_phase, args.device)
        started_at = trainer.epoch
        _reseed_meta_phase(trainer, args.meta_seed)

    def keep_ce_phase(tr, row):
        if method == "ce" and tr.epoch == tr.schedule.meta_start:
            tr.save(ce_phase)  # (with the CE run's own stream: the meta runs reseed after loading it)
            _reseed_meta_phase(tr, args.meta_seed)

    started = time.perf_counter()
    trainer.run(on_epoch_end=keep_ce_phase)
    own = trainer.history[started_at:]
    return {"method": method, "best": _strip(trainer.best), "last": _strip(trainer.last),
            "own_epoch_s": epoch_times(own)["epoch_s"], "own_epochs": len(own), "wall_s": time.perf_counter() - started,
            "history": trainer.history}


def _strip(res):
    return None if res is None else {k: v for k, v in res.items() if k != "per_class_accuracy"}


def _step_inputs(args, data):
    """What the one-process step measurements share on ``data`` (the run's :func:`_data`): a CE trainer (its untrained
    model, its image preparation), the validation batch (the first ``--batch-size`` validation images) and a seeded
    generator for :func:`_draw_batch`."""
    import torch

    from longtail.trainer import Trainer

    base = Trainer(_config(args, "ce"), data, device=args.device)
    val = (base.prepare_images(data.val_images[: args.batch_size]), data.val_labels.to(args.device)[: args.batch_size])
    return base, val, torch.Generator().manual_seed(args.seed)


def _draw_batch(base, data, gen, size: int):
    """A random augmented training batch as the trainer would feed it."""
    import torch

    from longtail.augment import random_crop_flip

    idx = torch.randperm(len(data.train_labels), generator=gen)[:size]
    return (base.prepare_images(random_crop_flip(data.train_images[idx], generator=gen)),
            data.train_labels[idx].to(base.device))


def measure_cost(args, data, steps: int) -> dict:
    """Seconds per training step of ce / two-component / lazy-two-component, interleaved on the same batches of
    ``data`` (the run's :func:`_data`)."""
    import torch

    from longtail.methods import StepContext, create_method
    from longtail.trainer import method_options

    base, (val_x, val_y), gen = _step_inputs(args, data)
    names = ("ce", "two-component", "lazy-two-component")
    # (each with the run's own settings: --inner-steps, --inner-lr, --gammas, --eps-rule)
    methods = {n: create_method(n, data.counts, device=args.device, **method_options(_config(args, n))) for n in names}
    times = {n: [] for n in names}
    for step in range(steps + 1):  # the first round warms up (allocations, forward-mode AD setup) and is dropped
        x, y = _draw_batch(base, data, gen, args.batch_size)
        for n in names:
            model = copy.deepcopy(base.model)  # same weights for every method (outside the timed region)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
            ctx = StepContext(model, 0.1, 0, val_x, val_y)
            t = clock(args.device)
            loss = methods[n].loss(ctx, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step:
                times[n].append(clock(args.device) - t)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {"step_s": med, "two_component_over_ce": med["two-component"] / med["ce"],
            "lazy_over_ce": med["lazy-two-component"] / med["ce"], "steps": steps}


def _shot_group_of_class(counts):
    """Each class's shot group as its index in :data:`longtail.evaluation.SHOT_GROUPS` (a tensor over classes)."""
    import torch

    from longtail.evaluation import SHOT_GROUPS, shot_group

    return torch.tensor([SHOT_GROUPS.index(shot_group(n)) for n in counts])


def gradients_of_test_loss(model, images, labels, counts, *, prepare, chunk: int = 250) -> dict:
    """∇θ of the mean test cross-entropy, over all test images and over each shot group's (``all``, ``many``,
    ``medium``, ``few``; groups without test images left out), as the evaluation sees the model: eval-mode
    BatchNorm, so chunks add up exactly and the model's buffers stay as they are. ``prepare`` turns uint8 images
    into the model's input (the trainer's ``prepare_images``). Each group's images run in their own chunks, so the
    test set costs one forward and one backward in all; ``all`` is the groups' sum."""
    import torch

    from longtail.evaluation import SHOT_GROUPS
    from lazyapps.functional import forward, params_of

    params = {k: v.detach().requires_grad_() for k, v in params_of(model).items()}
    group = _shot_group_of_class(counts)[labels.cpu()]
    sums: dict[str, list] = {}
    was_training = model.training
    model.eval()
    try:
        for g, name in enumerate(SHOT_GROUPS):
            members = torch.nonzero(group == g).flatten()
            for start in range(0, len(members), chunk):
                pick = members[start:start + chunk]
                x = prepare(images[pick])
                loss = torch.nn.functional.cross_entropy(forward(model, params, {}, x), labels[pick].to(x.device),
                                                         reduction="sum")
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True)
                sums[name] = list(grads) if name not in sums else [t + d for t, d in zip(sums[name], grads)]
    finally:
        model.train(was_training)
    sizes = {name: int((group == g).sum()) for g, name in enumerate(SHOT_GROUPS)}
    out = {"all": {k: sum(sums[g][i] for g in sums) / len(labels) for i, k in enumerate(params)}}
    out.update({g: {k: sums[g][i] / sizes[g] for i, k in enumerate(params)} for g in sums})
    return out


def per_example_alignment(model, inputs, targets, directions) -> dict:
    """c_i = ⟨∇θ ℓ_i(θ), u⟩ for every example of a training batch and every u in ``directions`` (by name).

    ℓ_i is the training forward's per-example cross-entropy (batch statistics, as the real step sees it). A step
    on the weighted mean loss Σ w_i ℓ_i / Σ w_i then changes a loss with gradient u by −lr·Σ w_i c_i / Σ w_i to
    first order. Computed as the look-ahead's pull-back of u: a directional difference, one forward per u (in float32
    within a few per cent of the exact derivative, and the same c serves every weighting compared on the batch)."""
    from longtail.losses import cross_entropy
    from longtail.reweighting import LookAhead
    from lazyapps.functional import params_of

    look = LookAhead(model, params_of(model, detach=True), inputs, targets, cross_entropy, lr=1.0, reduction="sum")
    return {name: -look.weight_gradient(u) for name, u in directions.items()}  # (−α⟨∇ℓ_i, u⟩ with α = 1)


def weight_agreement(model, plain, lazy, batches, *, lr: float, epoch: int, val, test_gradients=None) -> dict:
    """How far lazy-two-component's example weights are from two-component's when both step from the same θ.

    For each ``(x, y)`` in ``batches``, each method takes its meta step from a copy of ``model`` (same weights, same
    BatchNorm state); ε = weight − w_y. Returns the median and least cosine of the two ε, the median overlap of the
    examples each gives a positive ε (Jaccard; the normalized rule clips), and the median and largest
    ‖w_lazy − w‖₁ / ‖w‖₁. Cosine 1 and distance 0 mean the teacher's leap changed nothing the update sees.
    ``eps_share`` is each method's mean share of a batch's |ε| on the examples of many-, medium- and few-shot
    classes (:func:`longtail.evaluation.shot_group` of the methods' training counts): where the extra weight goes.
    With ``test_gradients`` (:func:`gradients_of_test_loss` at ``model``), ``test_descent`` says which weights serve
    the test loss better, to first order: for CE (uniform weights), the class weights alone, and each method's
    weights, the mean over batches of Σ w_i c_i / Σ w_i (:func:`per_example_alignment`; how fast that step lowers
    the test loss of all classes, or of one shot group's, per unit lr), and lazy minus two-component per batch.
    """
    import torch

    from longtail.evaluation import SHOT_GROUPS
    from longtail.methods import StepContext

    group_of = _shot_group_of_class(plain.counts)
    shares: dict[str, list] = {plain.name: [], lazy.name: []}
    cos, overlap, dist = [], [], []
    descent: dict[str, dict[str, list[float]]] = {}
    for x, y in batches:
        eps, weights = [], []
        align = per_example_alignment(model, x, y, test_gradients) if test_gradients else {}
        for method in (plain, lazy):
            method.loss(StepContext(copy.deepcopy(model), lr, epoch, *val), x, y)
            weights.append(method.last_weights)
            eps.append(method.last_weights - method.class_weights[y])
            mass = eps[-1].detach().abs().double().cpu()
            if float(mass.sum()) > 0:
                shares[method.name].append(torch.zeros(len(SHOT_GROUPS), dtype=torch.float64)
                                           .index_add_(0, group_of[y.cpu()], mass) / mass.sum())
        cos.append(float(torch.nn.functional.cosine_similarity(eps[0].double(), eps[1].double(), dim=0)))
        either = (eps[0] > 0) | (eps[1] > 0)
        overlap.append(float(((eps[0] > 0) & (eps[1] > 0)).sum() / either.sum()) if bool(either.any()) else 1.0)
        dist.append(float((weights[1] - weights[0]).abs().sum() / weights[0].abs().sum()))
        candidates = {"ce": torch.ones_like(weights[0]), "class weights": plain.class_weights[y],
                      plain.name: weights[0], lazy.name: weights[1]}
        for name, w in candidates.items():
            w = w.detach().double()
            for group, c in align.items():
                descent.setdefault(name, {}).setdefault(group, []).append(float((w * c.double()).sum() / w.sum()))
    test_descent = None
    if descent:
        test_descent = {name: {g: statistics.mean(v) for g, v in groups.items()} for name, groups in descent.items()}
        differences = {g: [a - b for a, b in zip(descent[lazy.name][g], descent[plain.name][g])] for g in align}
        test_descent["lazy_minus_two_component"] = {
            g: {"mean": statistics.mean(d), "sd": statistics.stdev(d) if len(d) > 1 else 0.0,
                "positive": sum(v > 0 for v in d), "batches": len(d)} for g, d in differences.items()}
    return {"eps_cosine_median": statistics.median(cos), "eps_cosine_min": min(cos),
            "positive_eps_overlap_median": statistics.median(overlap),
            "weight_distance_median": statistics.median(dist), "weight_distance_max": max(dist), "batches": len(cos),
            "eps_share": {name: dict(zip(SHOT_GROUPS, torch.stack(v).mean(0).tolist())) if v else None for name, v in shares.items()},
            "test_descent": test_descent}


def measure_agreement(args, data, batches: int) -> dict:
    """:func:`weight_agreement` for both ε rules at the meta phase's first lr, from the CE phase's weights.

    The weights are ``--ce-phase``'s, else this run's ``OUT/ce_phase.pt``, else the untrained network's (``from``
    says which); the validation batch is the first ``--batch-size`` validation images, as in :func:`measure_cost`.
    The test-loss descent is measured against the gradient of the whole test set's loss (and each shot group's) at
    those weights: a diagnosis on the test set, which no method trains or selects on.
    """
    from longtail.methods import create_method
    from longtail.trainer import method_options

    base, val, gen = _step_inputs(args, data)
    source = args.ce_phase or (Path(args.out) / "ce_phase.pt")
    if Path(source).is_file():
        _continue_ce_phase(base, source, args.device)
        origin = str(source)
    else:
        origin = "the untrained network (no CE phase checkpoint)"
    start = base.schedule.meta_start
    lr = base.schedule.lr_at(start)
    picked = [_draw_batch(base, data, gen, args.batch_size) for _ in range(batches)]
    out = {"from": origin, "lr": lr}
    test = gradients_of_test_loss(base.model, data.test_images, data.test_labels, data.counts, prepare=base.prepare_images)
    for rule in ("step", "normalized"):
        settings = argparse.Namespace(**{**vars(args), "eps_rule": rule})
        plain, lazy = (create_method(n, data.counts, device=args.device, **method_options(_config(settings, n)))
                       for n in ("two-component", "lazy-two-component"))
        out[rule] = weight_agreement(base.model, plain, lazy, picked, lr=lr, epoch=start, val=val, test_gradients=test)
    return out


def _zoo_model(name: str) -> str:
    """A ``type=`` for ``--model``: a zoo architecture, checked when parsed (not in the first worker)."""
    import models_zoo
    from lazyapps.errors import LazyAppsError

    try:
        models_zoo.get_arch(name)
    except LazyAppsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _checkpoint_file(path: str) -> str:
    """A ``type=`` for ``--ce-phase``: a checkpoint that exists and loads, checked when parsed (not after the data
    is loaded, in the first meta worker); whether its settings are this run's is checked where it is used."""
    from lazyapps.checkpoint import load_checkpoint
    from lazyapps.errors import LazyAppsError

    try:
        load_checkpoint(path)
    except LazyAppsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def _fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv=None) -> dict:
    parser = ScriptParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--imbalance", type=positive_float, default=100.0)
    parser.add_argument("--epochs", type=positive_int, default=12)
    parser.add_argument("--n-max", type=non_negative_int, default=200, help="largest class (0: the dataset's standard 4990/490)")
    parser.add_argument("--test-per-class", type=non_negative_int, default=50, help="0: the whole test set")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr-decay", type=_decay, default="0.01,0.0001",
                        help="lr multipliers from the first and second decay (paper: 0.01,0.0001)")
    parser.add_argument("--inner-steps", type=positive_int, default=5)
    parser.add_argument("--inner-lr", type=positive_float, default=None, help="lazy student's lr (default: the current lr)")
    parser.add_argument("--gammas", type=_gammas, default=None,
                        help="lazy teacher's γ grid, ties going to the first listed (default: 0.75,0.8,0.85,0.9,0.95)")
    parser.add_argument("--eps-rule", default="step", choices=("step", "normalized"), help="two-component's ε rule")
    parser.add_argument("--model", type=_zoo_model, default="resnet32")
    parser.add_argument("--methods", type=names("method", PLAIN + META), default=",".join(PLAIN + META))
    parser.add_argument("--jobs", type=positive_int, default=4, help="worker processes for the runs")
    parser.add_argument("--timing-steps", type=positive_int, default=5, help="interleaved steps for the cost ratio")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="torch threads per run (0: 1 with --jobs > 1, else all cores)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--data-dir", default=os.environ.get("LAZYAPPS_DATA"))
    parser.add_argument("--out", default="benchmark-runs/longtail", action=WritableFolder)
    parser.add_argument("--json", default=None, action=WritableFile, help="where to write the JSON result (default: OUT/results.json)")
    parser.add_argument("--cost-only", action="store_true", help="only the interleaved step-cost measurement")
    parser.add_argument("--agreement", type=non_negative_int, default=0, metavar="BATCHES",
                        help="also compare two-component's and lazy-two-component's weights from the same CE-phase "
                             "weights on this many batches (0: not)")
    parser.add_argument("--meta-seed", type=seed, default=None,
                        help="reseed the batch order and augmentation of every method from the meta start on (CE's "
                             "epochs there too): another draw of the meta phase from the same CE phase, for its "
                             "run-to-run spread (default: the CE run's random stream goes on)")
    parser.add_argument("--ce-phase", type=_checkpoint_file, default=None,
                        help="reuse this ce_phase.pt of an earlier run with the same settings instead of training CE again")
    parser.add_smoke_option("seconds: a code-path check (~250 images)", epochs=2, n_max=100, test_per_class=10, batch_size=64,
                            model="lenet5", jobs=1, timing_steps=1, inner_steps=2)
    args = parser.parse_args(argv)
    methods = list(args.methods)
    from lazyapps.runtime import resolve_device

    # --device cuda without a GPU is refused now, not in the first worker; "auto" becomes the device tensors move to
    args.device = str(resolve_device(args.device))
    if any(m in META for m in methods) and "ce" not in methods and not args.ce_phase:
        methods.insert(0, "ce")  # the meta methods start from the CE phase
    Path(args.out).mkdir(parents=True, exist_ok=True)
    data = _data(args)
    print(data.describe(), flush=True)
    from lazyapps.checkpoint import write_json_atomic
    from longtail.schedule import Schedule

    sched = Schedule.scaled(args.epochs, decay_factors=args.lr_decay)
    f1, f2 = sched.decay_factors
    budget = (f"REDUCED BUDGET: {args.model}, {args.epochs} epochs (lr 0.1, warm-up {sched.warmup_epochs}, x{f1:g} from epoch "
              f"{sched.decay_epochs[0] + 1}, x{f2:g} from {sched.decay_epochs[1] + 1}, meta/DRW from epoch {sched.meta_start + 1}), "
              f"batch {args.batch_size}, n_max {args.n_max or 'standard'}, {len(data.test_labels)} test images, seed {args.seed}"
              f"{'' if args.meta_seed is None else f' (meta phase reseeded with {args.meta_seed})'}, "
              f"lazy student k={args.inner_steps} at lr {args.inner_lr if args.inner_lr else 'of the schedule'}"
              f"{'' if args.gammas is None else ', gamma grid ' + ','.join(f'{g:g}' for g in args.gammas)}, "
              f"two-component eps rule '{args.eps_rule}'")
    print(budget, flush=True)

    results: dict[str, dict] = {}
    started = time.perf_counter()
    if args.cost_only:
        methods = []
    threads = args.threads or (1 if args.jobs > 1 else max(1, os.cpu_count() or 1))
    if args.jobs > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.jobs, initializer=_worker_init) as pool:
            def start(group):
                return {m: pool.apply_async(run_method, (args, m, threads)) for m in methods if m in group}

            pending = start(PLAIN)
            # The meta runs start from the CE phase: once the CE run has written it, or at once from --ce-phase.
            meta_pending = start(META) if "ce" not in methods else {}
            while pending or meta_pending:
                for m, job in list(pending.items()) + list(meta_pending.items()):
                    if job.ready():
                        results[m] = job.get()
                        print(f"  done {m}: best error {results[m]['best']['top1_error']:.2f}% ({results[m]['wall_s']:.0f}s)", flush=True)
                        pending.pop(m, None), meta_pending.pop(m, None)
                        if m == "ce":
                            meta_pending = start(META)
                time.sleep(2)
            # Let the workers exit on their own: the with block's terminate() kills them, which can leave a semaphore
            # that Python reports as leaked at shutdown (seen once with --jobs 2).
            pool.close()
            pool.join()
    else:
        for m in [m for m in methods if m in PLAIN] + [m for m in methods if m in META]:
            results[m] = run_method(args, m, threads)
            print(f"  done {m}: best error {results[m]['best']['top1_error']:.2f}% ({results[m]['wall_s']:.0f}s)", flush=True)
    import torch

    torch.set_num_threads(threads)  # one thread when runs share the CPU: contention would distort the ratio
    cost = measure_cost(args, data, args.timing_steps)
    agreement = measure_agreement(args, data, args.agreement) if args.agreement else None

    lines = [budget]
    if results:  # (none with --cost-only): the table of runs
        header = (f"{'method':<20} {'best err%':>9} {'many%':>6} {'med%':>6} {'few%':>6} | {'last err%':>9} {'many%':>6} "
                  f"{'med%':>6} {'few%':>6} | {'s/epoch':>8} {'epochs run':>10}   paper C100-LT x200/x100/x50/x20")
        lines = [f"{args.dataset}-LT imbalance {args.imbalance:g} on this machine; best epoch (what the literature reports, "
                 "selected on the test set) | last epoch", budget, header, "-" * len(header)]
        for m in [m for m in PLAIN + META if m in results]:
            r = results[m]
            b = r["best"]
            paper = "/".join(f"{v:.2f}" for v in PAPER_CIFAR100_LT[m]) if m in PAPER_CIFAR100_LT else "-"
            last = r["last"]
            lines.append(f"{m:<20} {_fmt(b['top1_error']):>9} {_fmt(b['many_accuracy'], 1):>6} {_fmt(b['medium_accuracy'], 1):>6} "
                         f"{_fmt(b['few_accuracy'], 1):>6} | {_fmt(last['top1_error']):>9} {_fmt(last['many_accuracy'], 1):>6} "
                         f"{_fmt(last['medium_accuracy'], 1):>6} {_fmt(last['few_accuracy'], 1):>6} | {_fmt(r['own_epoch_s'], 1):>8} "
                         f"{r['own_epochs']:>10}   {paper}")
        lines.append("s/epoch: mean training seconds of the epochs each method ran itself (meta methods: their meta "
                     + (f"epochs); {args.jobs} runs shared the CPU, so these are perturbed; the step costs below are the "
                        "fair comparison" if args.jobs > 1 else "epochs), this command's runs one at a time"))
    s = cost["step_s"]
    lines.append(f"cost per training step, interleaved in one process ({cost['steps']} steps, median): ce {s['ce']:.3f}s, "
                 f"two-component {s['two-component']:.3f}s ({cost['two_component_over_ce']:.2f}x), "
                 f"lazy-two-component {s['lazy-two-component']:.3f}s ({cost['lazy_over_ce']:.2f}x CE; budget 4x)")
    if agreement:
        lines.append(f"lazy vs plain two-component from the same weights ({agreement['from']}, lr {agreement['lr']:g}, "
                     f"{args.agreement} batches; no paper reports this):")
        for rule in ("step", "normalized"):
            a = agreement[rule]
            lines.append(f"  eps {rule:<10} cosine of eps median {a['eps_cosine_median']:.4f} (min {a['eps_cosine_min']:.4f}), "
                         f"positive-eps overlap {a['positive_eps_overlap_median']:.2f}, weights differ by "
                         f"{100 * a['weight_distance_median']:.3f}% (max {100 * a['weight_distance_max']:.3f}%) of their L1")
            lines.append(f"  {'':<15} share of |eps| on many/medium/few-shot classes: " + ", ".join(
                f"{name} " + ("-" if share is None else "/".join(f"{100 * v:.1f}" for v in share.values()) + "%")
                for name, share in a["eps_share"].items()))
            d = a["test_descent"]
            groups = list(d["lazy_minus_two_component"])
            lines.append(f"  {'':<15} first-order test-loss descent per unit lr, Σw·<∇ℓ_i, ∇L_test>/Σw ({'/'.join(groups)} "
                         "test images): " + ", ".join(f"{name} " + "/".join(f"{d[name][g]:.3f}" for g in groups)
                                                      for name in ("ce", "class weights", "two-component", "lazy-two-component")))
            lines.append(f"  {'':<15} lazy minus two-component per batch: " + ", ".join(
                f"{g} {v['mean']:+.4f} (sd {v['sd']:.4f}, {v['positive']} of {v['batches']} positive)"
                for g, v in d["lazy_minus_two_component"].items()))
    table = "\n".join(lines)
    print(table)
    out = {"config": {k: v for k, v in vars(args).items()}, "counts": data.counts, "budget": budget,
           "results": results, "cost": cost, "agreement": agreement, "paper_cifar100_lt": PAPER_CIFAR100_LT, "elapsed_s": time.perf_counter() - started}
    json_path = args.json or str(Path(args.out) / "results.json")
    write_json_atomic(json_path, out)
    print(f"results written to {json_path}")
    return out


if __name__ == "__main__":
    from _script import run_script

    run_script(main)
