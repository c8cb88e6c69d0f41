"""Training a CIFAR-LT model with any method, with per-epoch checkpoints and exact resume.

:class:`Trainer` owns the model, the SGD optimiser, the method (with its
meta state), a CPU random generator for shuffling and augmentation, and the
history. After every epoch it evaluates on the test set and writes
``checkpoint.pt`` atomically (and ``best.pt`` when the test accuracy improved),
so an interrupted run (Ctrl-C included) keeps the last completed epoch, and
``resume`` continues bit-for-bit: same weights, momentum, meta-net, random
stream and history as a run that was never stopped.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lazyapps import distributed
from lazyapps.checkpoint import check_expected, check_files_agree, first_load_problem, load_checkpoint, save_checkpoint
from lazyapps.data import anchored_name
from lazyapps.errors import CheckpointError, DivergedError, Interrupted, LazyAppsError
from lazyapps.global_batchnorm import use_global_batchnorm
from lazyapps.progress import progress, status
from lazyapps.runtime import image_layout, resolve_device, set_layout

from .augment import normalize, random_crop_flip
from .data import CIFARLongTail
from .evaluation import evaluate
from .methods import Method, StepContext, create_method
from .schedule import Schedule

CHECKPOINT_KIND = "longtail-train"
BATCHNORM_MODES = ("global", "local")
#: Settings a checkpoint must share with the run that resumes it (anything else would mix two runs).
IDENTITY_KEYS = ("dataset", "imbalance", "method", "rule", "val_per_class", "n_max", "test_per_class", "model",
                 "epochs", "batch_size", "lr", "weight_decay", "momentum", "inner_steps", "gammas", "seed", "lr_decay",
                 "inner_lr", "eps_rule")


@dataclass
class TrainConfig:
    """Every setting of a long-tail training run (the paper's values by default)."""

    dataset: str = "cifar100"
    imbalance: float = 100.0
    method: str = "ce"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    lr_decay: tuple[float, float] = (0.01, 0.0001)  # lr multipliers from the first / second decay (Cao et al.)
    momentum: float = 0.9
    weight_decay: float = 2e-4
    inner_steps: int = 5
    inner_lr: float | None = None  # the lazy student's lr (None: the current training lr)
    eps_rule: str = "step"  # two-component's ε: "step" (Jamal et al.'s code) or "normalized" (L2RW-style)
    gammas: tuple[float, ...] = (0.75, 0.80, 0.85, 0.90, 0.95)
    rule: str = "first"
    val_per_class: int = 10
    n_max: int | None = None
    test_per_class: int | None = None
    model: str = "resnet32"
    seed: int = 0
    preset: str = "paper"
    # Under torchrun: "global" normalises every rank's share with the whole batch's BatchNorm statistics (one
    # process's numbers; a collective per layer), "local" with the share's own (plain DDP; faster on a busy CPU).
    batchnorm: str = "global"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # An npz: bundle found from the working directory is recorded by its absolute path, so the checkpoint's
        # eval and --resume load it from any directory (CIFARLongTail records its data the same way).
        self.dataset = anchored_name(self.dataset)

    @property
    def schedule(self) -> Schedule:
        return Schedule.scaled(self.epochs, lr=self.lr, decay_factors=tuple(self.lr_decay))

    def check(self) -> None:
        """:class:`LazyAppsError` naming the first setting out of range (the data are not needed to tell)."""
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int):
            raise LazyAppsError(f"--epochs must be a whole number, got {self.epochs!r}")
        if self.inner_steps < 1:
            raise LazyAppsError(f"--inner-steps must be >= 1, got {self.inner_steps}")
        if self.epochs < 1:
            raise LazyAppsError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise LazyAppsError(f"--batch-size must be >= 2 (BatchNorm needs a batch), got {self.batch_size}")
        if self.method == "lazy-two-component" and self.inner_steps > self.batch_size:  # (it would take batch-size steps)
            raise LazyAppsError(f"--inner-steps {self.inner_steps} is more than --batch-size {self.batch_size}: the lazy "
                                f"student's steps run over that many slices of a batch")
        if len(tuple(self.lr_decay)) != 2 or not all(math.isfinite(f) and f > 0 for f in self.lr_decay):
            raise LazyAppsError(f"lr_decay must be two positive factors (from the first and the second decay), "
                                f"got {tuple(self.lr_decay)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise LazyAppsError(f"--lr must be a positive number, got {self.lr}")
        if self.inner_lr is not None and not (math.isfinite(self.inner_lr) and self.inner_lr > 0):
            raise LazyAppsError(f"--inner-lr must be a positive finite number, got {self.inner_lr}")
        if self.test_per_class is not None and self.test_per_class < 1:
            raise LazyAppsError(f"--test-per-class must be >= 1 (--preset paper evaluates on the whole test set), "
                                f"got {self.test_per_class}")
        if self.n_max is not None and self.n_max < 1:
            raise LazyAppsError(f"--n-max (images of the largest class) must be >= 1, got {self.n_max}")
        if self.batchnorm not in BATCHNORM_MODES:
            raise LazyAppsError(f"--batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {self.batchnorm!r}")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d["gammas"] = [float(g) for g in self.gammas]
        d["lr_decay"] = [float(f) for f in self.lr_decay]
        d["imbalance"] = float(self.imbalance)
        return {k: d[k] for k in IDENTITY_KEYS}


def check_resumable(path: str | Path, meta: Mapping[str, Any], identity: Mapping[str, Any]) -> None:
    """:class:`CheckpointError` if checkpoint ``path`` (its metadata ``meta``) was made with other ``identity`` settings."""
    try:
        check_expected(path, meta, identity)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume: {exc}; resume with the same settings or start a new run with another --out") from None


def settled_identity(config: TrainConfig) -> dict[str, Any]:
    """The identity settings ``config`` fixes before any data load, for ``--resume`` to refuse a mismatch early.

    Left out: settings the data fill in (``None``) and the network's name, which the trainer settles.
    """
    identity = {k: v for k, v in config.identity().items() if v is not None and k != "model"}
    identity["dataset"] = anchored_name(config.dataset)
    return identity


def describe_data(config: TrainConfig, data: CIFARLongTail) -> TrainConfig:
    """``config`` with the data's split settings filled in where it leaves them open (``None``).

    The checkpoint records the config as the data's description (the eval command and --resume rebuild the data
    from it), so a setting the config names must be the one the data were cut with: anything else is refused.
    """
    described = {"dataset": data.dataset, "imbalance": float(data.imbalance), "rule": data.rule, "n_max": data.n_max,
                 "val_per_class": data.val_per_class, "test_per_class": data.test_per_class}
    if data.rule == "ldam":  # the seed draws that split's permutation
        described["seed"] = data.seed
    open_keys = {key for key in ("n_max", "test_per_class") if getattr(config, key) is None}
    for key, value in described.items():
        if key not in open_keys and getattr(config, key) != value:
            raise LazyAppsError(f"the config says {key}={getattr(config, key)!r} but the data were cut with "
                                f"{key}={value!r}; build both from the same settings")
    return replace(config, **{key: described[key] for key in open_keys})


def method_options(config: TrainConfig) -> dict[str, Any]:
    """The keyword options ``create_method`` takes for ``config.method`` (the lazy student's and ε's settings)."""
    if config.method == "lazy-two-component":
        return {"inner_steps": config.inner_steps, "gammas": tuple(config.gammas), "inner_lr": config.inner_lr,
                "eps_rule": config.eps_rule}
    if config.method == "two-component":
        return {"eps_rule": config.eps_rule}
    return {}


class Trainer:
    """Train ``config.model`` on ``data`` with ``config.method``; checkpoints go to ``out_dir``."""

    def __init__(self, config: TrainConfig, data: CIFARLongTail, *, device: torch.device | str = "cpu",
                 out_dir: str | Path | None = None, model: nn.Module | None = None) -> None:
        import models_zoo

        config.check()
        if len(data.test_labels) == 0:
            raise LazyAppsError(f"{config.dataset} has no test images; every epoch is scored on the test split")
        self.config, self.data = describe_data(config, data), data
        if model is not None:
            # What the checkpoint names as the network: a zoo name it can be rebuilt from, or a user's own module.
            self.config = replace(self.config, model=f"custom:{type(model).__name__}")
        self.device = resolve_device(device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.schedule = config.schedule
        # The method's own networks (Meta-Weight-Net's MLP, built on the CPU) from the run's seed alone, not from
        # whatever the process drew before; forked, so the model's initial weights below stay those of every method.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.method: Method = create_method(config.method, data.counts, device=self.device, **method_options(config))
        deferred = "meta steps" if self.method.meta else "deferred re-weighting" if hasattr(self.method, "drw_start") else None
        if deferred and self.schedule.meta_start >= config.epochs:  # the method would silently train plain CE
            raise LazyAppsError(f"--method {config.method} starts its {deferred} at epoch {self.schedule.meta_start + 1} of the "
                                f"schedule, after the {config.epochs} epochs asked; give more --epochs")
        if self.method.meta and len(data.val_labels) == 0:
            raise LazyAppsError(f"--method {config.method} learns its weights on a balanced validation set; "
                                f"give --val-per-class >= 1")
        self.method.meta_start = self.schedule.meta_start
        if hasattr(self.method, "drw_start"):
            self.method.drw_start = self.schedule.meta_start
        torch.manual_seed(config.seed)  # the same initial weights for every method of a seed
        if model is None:
            # Only ResNet-32 has LDAM's cosine head; other zoo models keep their linear head.
            options = {"normalized_head": True} if self.method.normalized_head and config.model == "resnet32" else {}
            model = models_zoo.create(config.model, num_classes=data.num_classes, in_channels=int(data.train_images.shape[1]),
                                      image_size=int(data.train_images.shape[-1]), **options)
        else:  # a user's network: it must take these images and score every class
            models_zoo.check_outputs(model, tuple(data.train_images.shape[1:]), data.num_classes, what="the model")
        # The device's fast image layout (channels-last on a CPU: a ResNet-32 training step 1.2-1.4x faster), for the
        # model and every batch it sees; values are the same, only strides differ.
        self.layout = image_layout(self.device)
        self.model = set_layout(model.to(self.device), self.layout)
        self.dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())  # (a float64 net gets float64 batches)
        if distributed.is_distributed() and config.batchnorm == "global":  # in real and virtual steps alike
            use_global_batchnorm(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        # Under torchrun: DDP for the plain steps (meta steps need the bare module for their functional look-ahead
        # and average their gradients explicitly; the methods sum their batch-level quantities, a meta-net's
        # meta-gradient included, over ranks). Every rank starts from rank 0's meta-net.
        self._ddp = distributed.wrap_ddp(self.model)
        for part in vars(self.method).values():
            if isinstance(part, nn.Module):
                distributed.broadcast_module(part)
        self.epoch = 0  # the next epoch to run (0-based)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self._val = None
        # On the device once, not copied there with every batch.
        self._mean, self._std = (torch.tensor(v, dtype=torch.float32, device=self.device) for v in (data.mean, data.std))

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir is not None else None

    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it (the network as ``config.model`` names it)."""
        return self.config.identity()

    def metadata(self) -> dict[str, Any]:
        # batchnorm is recorded, not identity: --resume keeps the run's mode unless told otherwise, and it may be
        # changed there, as the number of processes may.
        return {"kind": CHECKPOINT_KIND, **self.identity(), "preset": self.config.preset, "batchnorm": self.config.batchnorm,
                "epochs_done": self.epoch, "classes": self.data.classes, "counts": self.data.counts,
                "mean": list(self.data.mean), "std": list(self.data.std), "data_digest": self.data.digest,
                "normalized_head": self.method.normalized_head and self.config.model == "resnet32"}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "last": self.last,
            # Inside the .pt too: the .json beside it is a separate file that can be edited or swapped.
            "identity": self.identity(),
        }

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: give out_dir or a path")
        return save_checkpoint(path, self.state_dict(), self.metadata())

    def resume(self, path: str | Path, *, loaded: tuple[dict[str, Any], dict[str, Any]] | None = None) -> None:
        """Load a checkpoint of this same configuration (any other is refused with the differing setting named).

        ``loaded``: ``(state, metadata)`` of ``path`` as the caller already read them on the CPU (the command reads
        them for the run's settings first), so the file is not read twice; every check below still runs.
        """
        # On the CPU: load_state_dict copies the weights to the model's device and the optimisers move their
        # state to their parameters', while the RNG states must stay CPU ByteTensors (set_state refuses others).
        state, meta = loaded or load_checkpoint(path, map_location="cpu", expect={"kind": CHECKPOINT_KIND})
        check_expected(path, meta, {"kind": CHECKPOINT_KIND})  # (for a pair the caller read)
        check_files_agree(path, state.get("identity") or {}, meta)  # (checkpoints from before it was kept: not checked)
        check_resumable(path, meta, self.identity())
        refuse_best_checkpoint(path, meta, state)
        check_same_data(path, meta, self.data)
        meta_epochs = any(row.get("meta") for row in state.get("history", []))
        stale = self.method.stale_state(state.get("method") or {}, meta_epochs=meta_epochs)
        if stale:
            raise CheckpointError(f"cannot resume {path}: {stale}; start a new run with another --out")
        try:
            self.load_state(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this run's {self.config.model} and {self.config.method} "
                                  f"({first_load_problem(exc)})") from None

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore everything :meth:`state_dict` saved (no settings check: :meth:`resume` does that)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.generator.set_state(state["generator"].cpu())  # (a state loaded onto a GPU: RNG states are CPU tensors)
        torch.set_rng_state(state["torch_rng"].cpu())
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best, self.last = state["best"], state["last"]

    # -- training ----------------------------------------------------------------------------------
    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch as the model trains on it: on the device, normalised, in the model's dtype and the device's image layout."""
        return (normalize(images.to(self.device), self._mean, self._std).to(self.dtype)
                .contiguous(memory_format=self.layout))

    def _validation_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.method.meta or len(self.data.val_labels) == 0:
            return None
        if self._val is None:
            self._val = (self.prepare_images(self.data.val_images), self.data.val_labels.to(self.device))
        images, labels = self._val
        if len(labels) <= self.config.batch_size:
            return images, labels
        pick = torch.randperm(len(labels), generator=self.generator)[: self.config.batch_size].to(self.device)
        return images[pick], labels[pick]

    def train_epoch(self) -> dict[str, Any]:
        """One epoch over the long-tailed training set; returns loss, lr and train time."""
        epoch, data, cfg = self.epoch, self.data, self.config
        lr = self.schedule.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        meta_phase = self.method.meta and epoch >= self.method.meta_start
        order = torch.randperm(len(data.train_labels), generator=self.generator)
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        # The loss is summed on the device: a read-back per step would make the host wait for every CUDA step.
        total, seen = torch.zeros((), dtype=torch.float64, device=self.device), 0
        self.method.reset_diagnostics()  # the row reports this epoch's mean diagnostics
        started = time.perf_counter()
        world = distributed.world_size()
        for idx in progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs} {cfg.method}{' (meta)' if meta_phase else ''}"):
            # Every rank augments the whole batch (one random stream, as one process) and trains on its share.
            x = random_crop_flip(data.train_images[idx], generator=self.generator)
            val = self._validation_batch() if meta_phase else None  # the same batch on every rank
            if world > 1 and len(idx) < world:
                continue  # a last batch smaller than the process count: every rank skips it alike
            # Meta steps take every world-th row: each of the lazy student's k slices of the batch is then spread
            # evenly over the ranks (contiguous shares would leave ranks idle while one holds a whole slice).
            share = slice(distributed.rank(), len(idx), world) if meta_phase else distributed.shard(len(idx))
            x = self.prepare_images(x[share])
            y = data.train_labels[idx][share].to(self.device)
            ddp = self._ddp is not None and not meta_phase
            # (the rows tell the methods whose loss is a batch-level ratio, Σwℓ/Σw, to sum Σw over every rank)
            split = {"batch_size": len(idx), "rows": share} if self._ddp is not None else {}
            ctx = StepContext(self._ddp if ddp else self.model, lr, epoch, *(val or (None, None)), **split)
            loss = self.method.loss(ctx, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            # Scaled so the ranks' losses sum to the whole batch's mean: global BatchNorm's backward sums over
            # ranks too, and this weighting is the one that makes its cross-rank terms exact.
            (loss * distributed.loss_scale(len(y), len(idx))).backward()
            if self._ddp is not None and not ddp:
                distributed.average_gradients(self.model.parameters())
            self.optimizer.step()
            total += loss.detach().double() * len(y)
            seen += len(y)
        total, seen = distributed.all_reduce_sum([float(total), seen])
        distributed.broadcast_buffers(self.model)  # rank 0's BatchNorm statistics everywhere, as DDP keeps them
        train_s = time.perf_counter() - started
        return {"epoch": epoch + 1, "lr": lr, "train_loss": total / max(seen, 1), "train_s": train_s, "meta": meta_phase,
                **{f"meta_{k}": v for k, v in distributed.mean_metrics(self.method.diagnostics).items()}}  # over ranks

    def evaluate(self) -> dict[str, Any]:
        """Top-1 error, shot-group and per-class accuracy of the current model on the test set."""
        return evaluate(self.model, self.data.test_images, self.data.test_labels, self.data.counts,
                        mean=self._mean, std=self._std, device=self.device)

    def run(self, *, on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Train from ``self.epoch`` to the last epoch, checkpointing after each; returns the history.

        Ctrl-C raises :class:`Interrupted` naming the checkpoint of the last epoch written to disk.
        """
        saved = self.epoch  # the last epoch completed and checkpointed (a Ctrl-C may land while its files are written)
        world = distributed.world_size()
        left = skipped_last_batch(len(self.data.train_labels), self.config.batch_size, world)
        if left and self.epoch < self.config.epochs:
            status(f"warning: each epoch's last batch of {left} image{'s' if left > 1 else ''} is skipped, being fewer "
                   f"than the {world} processes (one process trains on it, so the numbers differ from one process's); "
                   f"another --batch-size avoids it")
        try:
            while self.epoch < self.config.epochs:
                row = self.train_epoch()
                if not math.isfinite(row["train_loss"]):  # the diverged weights are not saved over the last checkpoint
                    kept = (f"{self.checkpoint_path} still holds epoch {self.epoch}" if self.out_dir is not None and self.epoch > 0
                            else "nothing was saved")
                    # in a meta epoch a lazy student with its own step size may be what diverged
                    lrs = "--lr or --inner-lr" if row["meta"] and getattr(self.method, "inner_lr", None) is not None else "--lr"
                    raise DivergedError(f"training diverged in epoch {row['epoch']} (mean loss {row['train_loss']}); "
                                        f"lower {lrs}; {kept}")
                result = self.evaluate()
                row.update({k: v for k, v in result.items() if k != "per_class_accuracy"})
                self.history.append(row)
                self.last = {"epoch": row["epoch"], **result}
                improved = self.best is None or result["top1_error"] < self.best["top1_error"]
                if improved:
                    self.best = {"epoch": row["epoch"], **result}
                self.epoch += 1
                if self.out_dir is not None:
                    # best.pt before checkpoint.pt: a checkpoint never records a best epoch whose weights are not on
                    # disk (a Ctrl-C between the two writes resumes before this epoch, which writes best.pt again).
                    if improved:
                        save_checkpoint(self.out_dir / "best.pt", {"model": self.model.state_dict(), "identity": self.identity()},
                                        {**self.metadata(), "best_epoch": row["epoch"]})
                    self.save()
                saved = self.epoch
                if on_epoch_end is not None:
                    on_epoch_end(self, row)
        except KeyboardInterrupt:
            where = (f"the checkpoint of epoch {saved} is kept at {self.checkpoint_path}; continue with "
                     f"--resume {self.checkpoint_path}") if self.out_dir is not None and saved > 0 else "no epoch's checkpoint was written"
            raise Interrupted(f"interrupted during epoch {saved + 1}; {where}") from None
        return self.history


def skipped_last_batch(images: int, batch_size: int, world: int) -> int:
    """Images in an epoch's last batch that ``world`` processes skip (0 when none): fewer than the processes, the
    batch would leave a rank without a row."""
    left = images % batch_size
    return left if world > 1 and left < world else 0


def check_same_data(path: str | Path, meta: dict[str, Any], data: CIFARLongTail) -> None:
    """:class:`CheckpointError` when ``data``, rebuilt from checkpoint ``path``'s settings, are not those its metadata
    records (classes, class sizes, pixel statistics, the images' and labels' digest): data files rewritten since the
    run (an ``npz:`` bundle), or an edited ``.json``."""
    def same(a: Any, b: Any) -> bool:  # (b: the data's; a float as its JSON round trip may give it back)
        return a == b if not isinstance(b, float) else isinstance(a, (int, float)) and math.isclose(a, b, rel_tol=1e-9)

    found = {"classes": list(data.classes), "counts": list(data.counts), "mean": list(data.mean), "std": list(data.std),
             "data_digest": data.digest}
    for key, value in found.items():
        recorded = meta.get(key)
        if recorded is None:  # (a checkpoint from before it was recorded)
            continue
        if isinstance(value, str):
            if recorded == value:
                continue
            differs = f"{key} {value} now (a hash of its images and labels), {recorded!r}"
        elif not isinstance(recorded, list) or len(recorded) != len(value):
            differs = f"{len(value)} entries of {key} now, {len(recorded) if isinstance(recorded, list) else repr(recorded)}"
        else:
            bad = next((i for i, (a, b) in enumerate(zip(recorded, value)) if not same(a, b)), None)
            if bad is None:
                continue
            differs = f"{key}[{bad}] {value[bad]!r} now, {recorded[bad]!r}"
        raise CheckpointError(f"{data.dataset} is not the data checkpoint {path} was trained on: {differs} in its metadata; "
                              f"the data files changed since, or the .json was edited")


def refuse_best_checkpoint(path: str | Path, meta: dict[str, Any], state: dict[str, Any] | None = None) -> None:
    """:class:`CheckpointError` for a ``best.pt`` (or any weights-only file) given where a run is resumed."""
    if "best_epoch" in meta or (state is not None and "optimizer" not in state):
        raise CheckpointError(f"cannot resume from {path}: it holds only the best epoch's weights; resume from the run's "
                              f"checkpoint.pt, which has the optimizer and the training state")


def epoch_times(history: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Mean training seconds per epoch, overall, in the plain phase and in the meta phase."""
    def mean(rows):
        rows = list(rows)
        return sum(r["train_s"] for r in rows) / len(rows) if rows else None

    return {"epoch_s": mean(history), "plain_epoch_s": mean(r for r in history if not r["meta"]),
            "meta_epoch_s": mean(r for r in history if r["meta"])}
