"""``lazyapps zoo``: list the architectures, train a zoo model (cached), evaluate one.

Top-level imports stay light (click only); torch loads when a command runs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from lazyapps.cli import INT64, RunContext, common_options, distinct_outputs


def _training_options(func: Callable) -> Callable:
    """The flags that select a training run (``train`` uses them; ``eval`` uses them to find the cached model)."""
    options = [
        click.option("--arch", default=None, help="Architecture name (see `lazyapps zoo list`) or timm:<name>."),
        click.option("--dataset", default="mnist", show_default=True, help="mnist, cifar10, cifar100, digits or npz:PATH."),
        click.option("--epochs", type=INT64, default=None, help="Epochs (default: 3 for MNIST-sized nets, 30 for CIFAR nets)."),
        click.option("--lr", type=float, default=None, help="Learning rate (default: Adam 1e-3 / SGD 0.05)."),
        click.option("--batch-size", type=INT64, default=128, show_default=True, help="Training batch size."),
        click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None, help="Optimizer (default per family)."),
        click.option("--weight-decay", type=float, default=None, help="Weight decay (default: 0 MNIST nets, 5e-4 CIFAR nets)."),
        click.option("--schedule", type=click.Choice(["constant", "cosine"]), default=None, help="Learning-rate schedule (default per family)."),
        click.option("--augment/--no-augment", default=None, help="Random crop + flip (default: on for CIFAR datasets only)."),
        click.option("--train-subset", type=INT64, default=None, help="Train on the first N training images only."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _hyper(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("epochs", "lr", "batch_size", "optimizer", "weight_decay", "schedule", "augment", "train_subset")
    return {key: kwargs[key] for key in keys}


def _require_arch(arch: str | None) -> str:
    from lazyapps.errors import LazyAppsError

    from .registry import get_arch

    if not arch:
        raise LazyAppsError("--arch is required (see `lazyapps zoo list` for the names)")
    get_arch(arch)  # unknown -> one line listing the valid names
    return arch


@click.group()
def zoo() -> None:
    """Model zoo: list, train and evaluate architectures."""


@zoo.command("list")
@click.option("--family", type=click.Choice(["mnist", "cifar", "fewshot"]), default=None, help="Only this family.")
@common_options
def list_command(run: RunContext, family: str | None) -> None:
    """List the architectures with their family, default input and parameter count."""
    import torch

    from lazyapps.results import format_table

    from .registry import ARCHS, create, num_parameters

    rows = []
    for arch in ARCHS.values():
        if family and arch.family != family:
            continue
        with torch.device("meta"):  # counts parameters without allocating or initialising them
            params = num_parameters(create(arch.name))
        rows.append({"name": arch.name, "family": arch.family, "input": arch.default_input, "classes": arch.num_classes,
                     "params": f"{params / 1e6:.3f}M", "description": arch.summary})
    table = format_table(rows, ["name", "family", "input", "classes", "params"])
    table += "\nAlso: timm:<name> builds any timm model (random init), e.g. timm:resnet10t."
    run.finish({"family": family}, {"models": rows}, table=table)


@zoo.command("train")
@_training_options
@click.option("--force", is_flag=True, help="Retrain even when a cached model exists (overwrites it).")
@common_options
def train_command(run: RunContext, arch: str | None, dataset: str, force: bool, **kwargs: Any) -> None:
    """Train a zoo model on a dataset (or load it from the cache) and report its test accuracy."""
    from lazyapps.results import format_table

    from .training import train

    arch = _require_arch(arch)
    result = train(arch, dataset, device=run.device, seed=run.seed, data_dir=run.data_dir, cache_dir=run.cache_dir,
                   quiet=run.quiet, force=force, **_hyper(kwargs))
    settings = result.metadata["settings"]
    row = {"arch": arch, "dataset": dataset, "epochs": settings["epochs"], "train_images": settings["train_subset"] or "all",
           "test_accuracy": round(result.test_accuracy, 4), "train_time_s": round(result.metadata["train_time_s"] or 0.0, 1),
           "from_cache": "yes" if result.from_cache else "no"}
    table = format_table([row], list(row)) + f"\ncached model: {result.path}"
    metrics = {"test_accuracy": result.test_accuracy, "train_time_s": result.metadata["train_time_s"],
               "from_cache": result.from_cache, "history": result.metadata["history"]}
    run.finish(settings, metrics, table=table, path=str(result.path))


@zoo.command("eval")
@_training_options
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Evaluate this file (zoo checkpoint, TorchScript, or a state dict of --arch) instead of the cached model.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True, help="Which split to evaluate on.")
@common_options
def eval_command(run: RunContext, arch: str | None, dataset: str, checkpoint: str | None, split: str, **kwargs: Any) -> None:
    """Evaluate a cached zoo model (found by the same flags as `train`) or a given checkpoint."""
    from pathlib import Path

    from lazyapps.errors import LazyAppsError
    from lazyapps.results import format_table

    from .fits import check_outputs
    from .training import evaluate, is_zoo_checkpoint, load, load_trained, load_zoo_data
    from .user_models import ARCHIVE_NAMES, archive_kind, load_user_model, user_model_arch

    if checkpoint is not None:
        from lazyapps.checkpoint import with_metadata

        distinct_outputs({"--json": run.json_path}, keep=with_metadata({"--checkpoint": checkpoint}))
    if arch or checkpoint is None:
        arch = _require_arch(arch)  # before the data loads: a bad name fails at once
    data = load_zoo_data(dataset, run.data_dir, run.cache_dir)
    source = checkpoint
    if checkpoint is None:
        trained = load(arch, dataset, device=run.device, data_dir=run.data_dir, cache_dir=run.cache_dir, seed=run.seed, **_hyper(kwargs))
        model, source = trained.model, str(trained.path)
    elif is_zoo_checkpoint(checkpoint):
        trained = load_trained(checkpoint, device=run.device)
        made_with = trained.metadata["settings"]["arch"]
        if arch and arch != made_with:
            raise LazyAppsError(f"--checkpoint {checkpoint} holds a {made_with} model, not {arch}; drop --arch or pass the right file")
        arch, model = made_with, trained.model
    else:
        named = user_model_arch(checkpoint)  # (the ARCH of an ARCH:PATH spec)
        if arch and named is not None and named != arch:
            raise LazyAppsError(f"--checkpoint {checkpoint} names architecture {named}, --arch {arch}; drop --arch")
        # (load_user_model refuses an ARCH: before such a file too, but in the words of a spec the user did not type)
        kind = archive_kind(Path(checkpoint)) if arch and Path(checkpoint).is_file() else None
        if kind is not None:
            raise LazyAppsError(f"--checkpoint {checkpoint} is a {ARCHIVE_NAMES[kind]} file, which carries its own network; "
                                f"drop --arch")
        spec = f"{arch}:{checkpoint}" if arch and named is None else checkpoint
        size = data.image_size if isinstance(data.image_size, int) else None
        model = load_user_model(spec, num_classes=data.num_classes, in_channels=data.channels, image_size=size, device=run.device)
    # e.g. a model for 1x28x28 digits given 3x32x32 colour images, or a 3-class model scored on MNIST's 10
    check_outputs(model, data.image_shape, data.num_classes, what=f"the model ({source})")
    accuracy = evaluate(model, getattr(data, split), device=run.device)
    row = {"arch": arch or "(from file)", "dataset": dataset, "split": split, "images": len(getattr(data, split)), "accuracy": round(accuracy, 4)}
    table = format_table([row], list(row)) + f"\nmodel: {source}"
    run.finish({"arch": arch, "dataset": dataset, "split": split, "checkpoint": source}, {"accuracy": accuracy}, table=table)
