"""Train, cache, load and evaluate zoo models.

``train("net4", "mnist")`` trains a network on the in-memory dataset and
caches it under ``<cache>/zoo/`` keyed by every setting that made it (the
architecture and its options, the dataset and a fingerprint of its data, all
hyperparameters, the train subset and the seed), so a second call loads the
file instead of training and changed settings never reuse a stale model. The
returned model includes the dataset's normalisation (``.normalize`` then
``.net``), so it takes images in [0, 1].

The loop is built for small CPUs: the uint8 dataset stays in memory (on the
training device), each batch is a slice of a shuffled index converted to
float in one operation, and CIFAR augmentation (random 4-pixel-padded crop
and horizontal flip) is done on the whole batch at once; no DataLoader,
no per-sample Python transforms.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lazyapps import progress as progress_module
from lazyapps.cache import artefact_path, cached
from lazyapps.checkpoint import load_checkpoint, load_metadata, save_checkpoint
from lazyapps.errors import CheckpointError, DivergedError, LazyAppsError
from lazyapps.runtime import image_layout, resolve_device, seed_everything, set_layout

from .fits import check_outputs
from .normalize import with_normalization
from .registry import create, get_arch

#: Bumped when the training procedure changes, so older cached models are not reused.
FORMAT = 1
CACHE_KIND = "zoo"

#: Per-family defaults. MNIST-sized nets: Adam, lr 1e-3, constant. CIFAR nets:
#: SGD momentum 0.9, lr 0.05 with cosine decay, weight decay 5e-4 (the usual
#: CIFAR recipe; 30 epochs is a GPU budget, pass ``epochs`` on a CPU).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"epochs": 3, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant"},
    "fewshot": {"epochs": 3, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant"},
    "cifar": {"epochs": 30, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"},
    "timm": {"epochs": 30, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"},
}
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainedModel:
    """A trained zoo model (``model(x01)`` on images in [0, 1]) and what is known about it."""

    model: nn.Module
    test_accuracy: float
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False


def training_settings(
    name: str,
    dataset: str = "mnist",
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float | None = None,
    optimizer: str | None = None,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    schedule: str | None = None,
    augment: bool | None = None,
    train_subset: int | None = None,
    seed: int = 0,
    model_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The complete hyperparameters of a training run, unset ones filled with the family defaults.

    ``augment`` defaults to random crop + flip on CIFAR datasets and none
    elsewhere (flipping digits changes them).
    """
    arch = get_arch(name)
    if arch.image_size is None:
        raise LazyAppsError(f"{name} is not an image classifier; it is trained by the few-shot product, not by zoo train")
    defaults = {**FAMILY_DEFAULTS[arch.family], **arch.training}
    settings = {
        "arch": name,
        "dataset": dataset,
        "model_options": dict(sorted((model_options or {}).items())),
        "epochs": defaults["epochs"] if epochs is None else int(epochs),
        "batch_size": int(batch_size),
        "optimizer": (optimizer or defaults["optimizer"]).lower(),
        "lr": float(defaults["lr"] if lr is None else lr),
        "momentum": float(momentum),
        "weight_decay": float(defaults["weight_decay"] if weight_decay is None else weight_decay),
        "schedule": (schedule or defaults["schedule"]).lower(),
        "augment": dataset.lower().startswith("cifar") if augment is None else bool(augment),
        "train_subset": None if train_subset is None else int(train_subset),
        "seed": int(seed),
        "format": FORMAT,
    }
    if settings["optimizer"] not in OPTIMIZERS:
        raise LazyAppsError(f"unknown optimizer {settings['optimizer']!r}; valid: {', '.join(OPTIMIZERS)}")
    if settings["schedule"] not in SCHEDULES:
        raise LazyAppsError(f"unknown schedule {settings['schedule']!r}; valid: {', '.join(SCHEDULES)}")
    if settings["epochs"] < 1 or settings["batch_size"] < 1 or not (math.isfinite(settings["lr"]) and settings["lr"] > 0):
        raise LazyAppsError("epochs and batch size must be at least 1 and the learning rate a positive number")
    for name in ("momentum", "weight_decay"):
        if not (math.isfinite(settings[name]) and settings[name] >= 0):
            raise LazyAppsError(f"{name.replace('_', ' ')} must be a number >= 0, got {settings[name]}")
    if settings["train_subset"] is not None and settings["train_subset"] < 1:
        raise LazyAppsError(f"the training subset (--train-subset) must be a positive number of images, got {settings['train_subset']}")
    return settings


def data_fingerprint(data) -> str:
    """A short hash of a dataset's labels and every pixel (both splits).

    Part of the cache key so that two different datasets under one name (e.g.
    the full CIFAR-10 and a subset of it, or an ``npz:`` bundle rewritten
    since) never share a cached model. BLAKE2b over all the bytes: about 0.1 s
    for MNIST, 0.3 s for CIFAR-10.
    """
    from lazyapps.cache import content_digest

    return content_digest(part for split in (data.train, data.test)
                          for part in (str(tuple(split.images.shape)).encode(), split.labels, split.images))


def load_zoo_data(dataset: str, data_dir, cache_dir=None):
    """The dataset a zoo model trains and is scored on (``load_dataset``), refusing those it cannot be scored on."""
    from lazyapps.data import load_dataset

    if dataset.startswith("omniglot"):
        # Its test split is the evaluation alphabets: classes a classifier of the background set never saw
        raise LazyAppsError(f"{dataset} cannot train a zoo classifier: its test split holds other classes (the evaluation "
                            f"alphabets), so a test accuracy would be chance by construction; Omniglot is for "
                            f"lazyapps fewshot")
    return load_dataset(dataset, root=data_dir, cache_dir=cache_dir)


def _model_shape(data) -> dict[str, int]:
    size = data.image_size
    if not isinstance(size, int):
        raise LazyAppsError(f"dataset {data.name!r} has non-square {size[0]}x{size[1]} images; zoo models need square ones")
    return {"num_classes": data.num_classes, "in_channels": data.channels, "image_size": size}


def _build_model(settings: dict[str, Any], mean, std) -> nn.Sequential:
    net = create(settings["arch"], num_classes=settings["num_classes"], in_channels=settings["in_channels"],
                 image_size=settings["image_size"], **settings.get("model_options", {}))
    return with_normalization(net, mean, std)


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, *, padding: int = 4) -> torch.Tensor:
    """Each image zero-padded by ``padding``, cropped back at offset (``top[i]``, ``left[i]``), and mirrored where ``flip[i]``.

    One gather for the whole batch; offsets are in ``[0, 2·padding]``
    (``padding`` each = the image unchanged).
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    rows = (top.to(device)[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (left.to(device)[:, None] + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    out = padded[batch, channel, rows, cols]
    return torch.where(flip.to(device)[:, None, None, None], out.flip(3), out)


def random_crop_flip(images: torch.Tensor, *, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard CIFAR augmentation (He et al. 2016): random crop of the 4-pixel zero-padded image, random horizontal flip."""
    n = len(images)
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return crop_flip(images, top, left, flip, padding=padding)


def _optimizer(model: nn.Module, settings: dict[str, Any]) -> torch.optim.Optimizer:
    if settings["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"])
    return torch.optim.Adam(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: dict[str, Any], *, generator: torch.Generator, desc: str = "train") -> list[dict[str, float]]:
    """Train ``model`` (taking [0, 1] images) on uint8 ``images`` and ``labels`` with ``settings``; returns per-epoch loss/accuracy.

    ``images``/``labels`` should already be on the model's device. A final
    batch of a single image is skipped (BatchNorm cannot train on it). On a
    CPU the convolutions run in channels-last layout (oneDNN's fast path,
    ≈1.5× faster for the MNIST nets); the model is returned in the default layout.
    """
    n, batch_size, epochs = len(labels), settings["batch_size"], settings["epochs"]
    layout = image_layout(images.device) if images.dim() == 4 else torch.contiguous_format
    set_layout(model, layout)
    steps = math.ceil(n / batch_size)
    optimizer = _optimizer(model, settings)
    total = steps * epochs
    scheduler = None
    if settings["schedule"] == "cosine":  # per-step cosine decay to zero (Loshchilov & Hutter 2017, no restarts)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator).to(images.device)
        loss_sum = torch.zeros((), device=images.device)
        correct = torch.zeros((), device=images.device, dtype=torch.int64)
        seen = 0
        bar = progress_module.progress(range(steps), desc=f"{desc} epoch {epoch + 1}/{epochs}")
        for step in bar:
            index = order[step * batch_size:(step + 1) * batch_size]
            if len(index) < 2 and n > 1:
                continue
            x = images[index].float().div_(255)
            y = labels[index]
            if settings["augment"]:
                x = random_crop_flip(x, generator=generator)
            x = x.contiguous(memory_format=layout)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        history.append({"epoch": epoch + 1, "train_loss": float(loss_sum) / max(seen, 1), "train_accuracy": float(correct) / max(seen, 1)})
        if not math.isfinite(history[-1]["train_loss"]):  # raised before anything is cached
            raise DivergedError(f"{desc}: training diverged in epoch {epoch + 1} (mean loss {history[-1]['train_loss']}); "
                                f"lower the learning rate (--lr); nothing was cached")
    set_layout(model, torch.contiguous_format)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, split, *, batch_size: int = 1000, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` (taking [0, 1] images) on ``split`` (a data ``Split``, or ``(uint8 images, labels)``).

    Runs in eval mode (restored afterwards) on ``device`` (default: where
    the model's parameters are). Images are either uint8 (0..255) or
    floats already in [0, 1].
    """
    images, labels = (split.images, split.labels) if hasattr(split, "images") else split
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LazyAppsError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    else:
        device = resolve_device(device)
        model.to(device)
    was_training = model.training
    # The device's fast layout (image_layout); the zoo's default layout is restored after.
    layout = image_layout(device) if images.dim() == 4 else torch.contiguous_format
    _set_mode(model, False, layout)
    correct = 0
    try:
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size].to(device)
            x = (x.float().div_(255) if x.dtype == torch.uint8 else x.float()).contiguous(memory_format=layout)
            correct += int((model(x).argmax(1) == labels[start:start + batch_size].to(device)).sum())
    finally:
        _set_mode(model, was_training, torch.contiguous_format)
    return correct / max(len(labels), 1)


def _set_mode(model: nn.Module, training: bool, layout: torch.memory_format) -> None:
    # A bare torch.export program refuses train()/eval() (a fixed graph, already in eval form); programs and
    # TorchScript modules keep their tensors' layout. Both evaluate correctly as they are.
    try:
        model.train(training)
    except NotImplementedError:
        return
    set_layout(model, layout)


def _resolve(name: str, dataset: str, data_dir, hyper: dict[str, Any], cache_dir=None) -> tuple[Any, dict[str, Any]]:
    settings = training_settings(name, dataset, **hyper)
    data = load_zoo_data(dataset, data_dir, cache_dir)
    settings.update(_model_shape(data))
    settings["data"] = data_fingerprint(data)
    if settings["train_subset"] is not None and settings["train_subset"] > len(data.train):
        raise LazyAppsError(f"train_subset={settings['train_subset']} but {dataset} has only {len(data.train)} training images")
    return data, settings


def _metadata(settings: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    return {"settings": settings, "train_time_s": state.get("train_time_s"), "history": state.get("history", []),
            "test_accuracy": state.get("test_accuracy")}


def train(
    name: str,
    dataset: str = "mnist",
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float | None = None,
    optimizer: str | None = None,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    schedule: str | None = None,
    augment: bool | None = None,
    train_subset: int | None = None,
    model_options: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
    force: bool = False,
) -> TrainedModel:
    """Train zoo model ``name`` on ``dataset`` (or load it from the cache) and report its test accuracy.

    Unset hyperparameters take the family defaults (:data:`FAMILY_DEFAULTS`) with the architecture's own
    overrides (``Arch.training``: the VGGs train at lr 0.01).
    ``train_subset`` trains on the first N training images only (to keep CPU
    runs short); the test accuracy is always on the full test split.
    ``force`` retrains and overwrites the cached file. The returned model is
    in eval mode on ``device``, with the dataset's normalisation inside it.
    """
    device = resolve_device(device)
    hyper = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                 schedule=schedule, augment=augment, train_subset=train_subset, seed=seed, model_options=model_options)
    data, settings = _resolve(name, dataset, data_dir, hyper, cache_dir)
    built: dict[str, nn.Module] = {}

    def build() -> dict[str, Any]:
        generator = seed_everything(settings["seed"])
        model = _build_model(settings, data.mean, data.std).to(device)
        check_outputs(model, data.image_shape, data.num_classes, what=f"{name} (built for {dataset})")
        count = settings["train_subset"] or len(data.train)
        images = data.train.images[:count].to(device)
        labels = data.train.labels[:count].to(device)
        started = time.perf_counter()
        with progress_module.quiet_while() if quiet else nullcontext():  # (not quiet: the caller's setting)
            progress_module.status(f"training {name} on {dataset}: {count} images, {settings['epochs']} epoch(s), "
                                   f"{settings['optimizer']} lr {settings['lr']:g}, on {device}")
            history = fit(model, images, labels, settings, generator=generator, desc=name)
        train_time = time.perf_counter() - started
        accuracy = evaluate(model, data.test)
        built["model"] = model
        return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "test_accuracy": accuracy,
                "train_time_s": train_time, "history": history}

    label = f"{name}-{dataset}"
    path = artefact_path(CACHE_KIND, label, settings, root=cache_dir)

    def restorable(state: dict[str, Any]) -> None:  # a cached file that loads but holds no usable model is rebuilt
        built["restored"] = _restore(settings, state, path)
        if not isinstance(state.get("test_accuracy"), (int, float)):
            raise CheckpointError(f"zoo checkpoint {path} holds no test accuracy")

    if force:
        state = build()
        save_checkpoint(path, state, {"kind": CACHE_KIND, "name": label, "settings": settings})
    else:
        state, path = cached(CACHE_KIND, label, settings, build, root=cache_dir, validate=restorable)
    model = built.get("model")
    if model is None:
        model = (built["restored"] if "restored" in built else _restore(settings, state, path)).to(device)
    model.eval()
    return TrainedModel(model, float(state["test_accuracy"]), path, _metadata(settings, state), from_cache="model" not in built)


def _restore(settings: dict[str, Any], state: dict[str, Any], path: Path) -> nn.Sequential:
    channels = settings["in_channels"]
    model = _build_model(settings, [0.0] * channels, [1.0] * channels)  # the real mean/std come from the state dict
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:  # (a "model" entry that is no state dict)
        raise CheckpointError(f"zoo checkpoint {path} does not fit {settings['arch']} ({str(exc).splitlines()[0][:200]})") from None
    return model


def cache_path(name: str, dataset: str = "mnist", *, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
               **hyperparameters: Any) -> Path:
    """Where :func:`train` with these arguments caches its model (whether or not it exists yet)."""
    _, settings = _resolve(name, dataset, data_dir, hyperparameters, cache_dir)
    return artefact_path(CACHE_KIND, f"{name}-{dataset}", settings, root=cache_dir)


def load(name: str, dataset: str = "mnist", *, device: str | torch.device = "auto", data_dir: str | Path | None = None,
         cache_dir: str | Path | None = None, **hyperparameters: Any) -> TrainedModel:
    """The cached model that :func:`train` with the same arguments made; :class:`CheckpointError` if there is none."""
    path = cache_path(name, dataset, data_dir=data_dir, cache_dir=cache_dir, **hyperparameters)
    if not path.exists():
        raise CheckpointError(f"no cached {name} model for {dataset} with these settings at {path}; "
                              f"train it first (lazyapps zoo train --arch {name} --dataset {dataset} ...)")
    return load_trained(path, device=device)


def is_zoo_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint written by :func:`train` (judged by its metadata file)."""
    try:
        return load_metadata(path).get("kind") == CACHE_KIND
    except CheckpointError:
        return False


def load_trained(path: str | Path, *, device: str | torch.device = "auto") -> TrainedModel:
    """A model saved by :func:`train`, from its checkpoint file (architecture and settings come from its metadata)."""
    path = Path(path)
    state, metadata = load_checkpoint(path, expect={"kind": CACHE_KIND})
    settings = metadata.get("settings")
    if not isinstance(settings, dict) or "arch" not in settings or "model" not in state:
        raise CheckpointError(f"{path} is not a zoo model checkpoint (no settings/model inside)")
    model = _restore(settings, state, path).to(resolve_device(device)).eval()
    return TrainedModel(model, float(state.get("test_accuracy", float("nan"))), path, _metadata(settings, state), from_cache=True)
