"""Building a learner for a benchmark setting, and saving/loading it as a checkpoint.

Shared by the CLI and the benchmark scripts. Hyperparameters resolve in this
order (later wins): the learner's ``__init__`` defaults, its
``paper_defaults`` for the dataset/ways/shots, then the caller's explicit values.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from lazyapps.checkpoint import (MIXED_FILES, check_expected, check_files_agree, first_load_problem, load_checkpoint,
                                 load_metadata, save_checkpoint)
from lazyapps.errors import CheckpointError, LazyAppsError, UnknownNameError

from .base import Learner, get_learner
from .datasets import dataset_info, resolved_name

CHECKPOINT_KIND = "fewshot"
#: settings that are not learner hyperparameters but come from ``paper_defaults``.
LOOP_SETTINGS = ("meta_batch", "iterations", "train_shots")
#: The hyperparameters ``fewshot train`` has a flag of their own for (``--inner-lr``); every other one is
#: given as ``--hp name=value``.
FLAG_HPARAMS = ("inner_steps", "eval_inner_steps", "inner_lr", "meta_lr", "last", "gammas", "zero_head")


def parse_hparam(item: str) -> tuple[str, Any]:
    """``"name=value"`` as ``(name, value)``: the value read as JSON (numbers, true/false, lists), else kept as text.

    Comma-separated numbers are a list too (``gammas=0.5,0.7`` as ``--gammas`` takes it, or ``[0.5,0.7]``).
    Dashes in the name become underscores. A malformed item is a :class:`ValueError` naming the expected form.
    """
    name, sep, text = item.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise ValueError(f"{item!r} is not NAME=VALUE, e.g. lam=0.5")
    try:
        return name, json.loads(text)
    except ValueError:
        pass
    try:
        return name, json.loads(f"[{text}]") if "," in text else text
    except ValueError:
        return name, text


def split_settings(algo: str, *, dataset: str, ways: int, shots: int, explicit: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(learner hparams, loop settings)`` for ``algo`` from its paper defaults and the ``explicit`` (non-None) values.

    An explicit hyperparameter the learner does not take is a :class:`LazyAppsError`.
    """
    cls = get_learner(algo)
    names = cls.hparam_names()
    paper = cls.paper_defaults(dataset=dataset, ways=ways, shots=shots)
    hparams = {k: v for k, v in paper.items() if k in names}
    loop = {k: v for k, v in paper.items() if k in LOOP_SETTINGS}
    for key, value in explicit.items():
        if value is None:
            continue
        if key in LOOP_SETTINGS:
            loop[key] = value
        elif key in names:
            hparams[key] = value
        else:
            raise not_applicable(algo, key)
    return hparams, loop


def not_applicable(algo: str, key: str) -> LazyAppsError:
    """The one-line refusal of a setting ``key`` that learner ``algo`` does not take (``train``'s and ``eval``'s)."""
    names = get_learner(algo).hparam_names() - {"problem", "vectorize", "transductive"}
    flags = [f"--{n.replace('_', '-')}" for n in sorted(names) if n in FLAG_HPARAMS]
    others = sorted(names - set(FLAG_HPARAMS))
    takes = ", ".join(flags + ([f"--hp {', '.join(others)}" if not flags else f"and as --hp: {', '.join(others)}"] if others else []))
    given = f"--{key.replace('_', '-')}" if key in FLAG_HPARAMS else f"--hp {key}"
    return LazyAppsError(f"{given} does not apply to --algo {algo} (it takes: {takes or 'no hyperparameters'})")


def build_model(arch: str, *, dataset: str, ways: int, **options: Any) -> torch.nn.Module:
    """The network for ``dataset`` (``ways`` outputs; 1 for sine) from the model zoo; ``options`` go to the architecture."""
    import models_zoo

    info = dataset_info(dataset)
    if info.problem == "regression":
        if models_zoo.get_arch(arch).image_size is not None:
            raise LazyAppsError(f"--arch {arch} takes images, but {dataset}'s inputs are numbers; use a network of "
                                f"vectors such as {info.arch}")
        return models_zoo.create(arch, num_classes=1, in_channels=1, **options)
    if models_zoo.get_arch(arch).image_size is None:  # (the zoo's own refusal speaks of image_size, which no flag sets)
        raise LazyAppsError(f"--arch {arch} takes vectors, but {dataset}'s inputs are images; use an image network "
                            f"such as {info.arch}")
    return models_zoo.create(arch, num_classes=ways, in_channels=info.in_channels, image_size=info.image_size, **options)


def build_learner(algo: str, *, dataset: str, ways: int, arch: str | None = None, device: str | torch.device = "cpu",
                  model_options: Mapping[str, Any] | None = None, blame: str | None = None, **hparams: Any) -> Learner:
    """Learner ``algo`` around a fresh ``arch`` network (default: the dataset's standard one) on ``device``.

    ``model_options`` go to the architecture (e.g. ``{"hidden": 32}`` for a slimmer conv4). A hyperparameter the
    learner refuses is a :class:`LazyAppsError` that starts with ``blame``, where the values came from (default
    ``--algo ALGO``).
    """
    cls = get_learner(algo)
    info = dataset_info(dataset)
    model = build_model(arch or info.arch, dataset=dataset, ways=ways, **dict(model_options or {}))
    try:
        learner = cls(model, problem=info.problem, **hparams)  # (checked by the learner: Learner.check_hparams)
    except (TypeError, ValueError) as exc:
        raise LazyAppsError(f"{blame or '--algo ' + algo}: {exc}") from None
    return learner.to(device)


def checkpoint_metadata(learner: Learner, *, arch: str, dataset: str, ways: int, shots: int, **extra: Any) -> dict[str, Any]:
    """What a checkpoint records: enough to rebuild the learner and to refuse mismatching uses.

    A ``folder:PATH`` dataset is recorded with its absolute path, so ``eval`` finds it from any working folder.
    """
    return {"kind": CHECKPOINT_KIND, "algo": learner.name, "arch": arch, "dataset": resolved_name(dataset), "ways": ways, "shots": shots,
            "iteration": learner.iteration, "hparams": learner.hparams(), **extra}


#: What the weights in a ``.pt`` were made as, kept inside it too: the ``.json`` beside it is a separate file that can
#: be edited or swapped with another run's, and the learner is rebuilt from the ``.json``.
IDENTITY_KEYS = ("kind", "algo", "arch", "ways")


#: What a checkpoint's ``.json`` must hold, by type, for the learner and its tasks to be rebuilt (then what it may hold).
METADATA_TYPES = {"algo": str, "arch": str, "dataset": str, "ways": int, "shots": int, "iteration": int}
OPTIONAL_METADATA_TYPES = {"queries": int, "train_shots": int, "meta_batch": int, "hparams": dict, "seed": int,
                           "eval_tasks": int, "eval_every": int, "shuffle_classes": bool, "preset": str}


def check_metadata(path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """:class:`CheckpointError` for checkpoint metadata that is another product's, or a few-shot checkpoint's that lacks
    a setting or gives one of another type (a hand-edited ``.json``): one line, not an error where the setting is used."""
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"checkpoint {path} is a {meta.get('kind', 'non-fewshot')!r} checkpoint, not a few-shot learner")
    for key, kind in {**METADATA_TYPES, **OPTIONAL_METADATA_TYPES}.items():
        if key not in meta:
            if key in METADATA_TYPES:
                raise CheckpointError(f"checkpoint {path}'s metadata lacks the setting {key!r}; {MIXED_FILES}")
        elif not isinstance(meta[key], kind) or (isinstance(meta[key], bool) and kind is not bool):
            raise CheckpointError(f"checkpoint {path}'s metadata gives {key}={meta[key]!r}, not of type {kind.__name__}; {MIXED_FILES}")


def save_learner(path: str | os.PathLike, learner: Learner, metadata: Mapping[str, Any], **state: Any) -> None:
    identity = {key: metadata[key] for key in IDENTITY_KEYS if key in metadata}
    save_checkpoint(path, {**learner.checkpoint_state(), **state, "identity": identity}, {**metadata, "iteration": learner.iteration})


def load_learner(path: str | os.PathLike, *, expect: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                 **overrides: Any) -> tuple[Learner, dict[str, Any], dict[str, Any]]:
    """``(learner, state, metadata)`` from a checkpoint written by :func:`save_learner`.

    ``expect`` (e.g. ``{"algo": "maml", "arch": "conv4"}``) must match the
    metadata, else :class:`CheckpointError` (a ``dataset`` matches when it
    names the same folder, however spelled); ``overrides`` replace stored
    hyperparameters that do not change the weights (``transductive``,
    ``eval_inner_steps``, ``vectorize``); one the learner does not take is a
    :class:`LazyAppsError` (:func:`not_applicable`). A ``.pt`` and ``.json`` that describe
    different runs, or metadata that does not rebuild the stored learner, are a
    one-line :class:`CheckpointError`.
    """
    meta = load_metadata(path)
    if meta:  # (none: load_checkpoint names the missing file)
        check_metadata(path, meta)
    # On the CPU: load_state_dict copies into the learner's device, and Adam's per-parameter "step" counters stay
    # CPU scalars as torch keeps them (loaded onto a GPU they stay there, and every Adam step then reads each one
    # back with .item(): two host-device syncs per parameter per meta-step for the rest of a resumed run).
    state, meta = load_checkpoint(path, map_location="cpu", expect={"kind": CHECKPOINT_KIND})
    # The iteration is in every checkpoint's .pt; the identity only in those written since it was added. Checked
    # before the caller's expectations: they are compared with the .json.
    recorded = {**(state.get("identity") or {}), **({"iteration": int(state["iteration"])} if "iteration" in state else {})}
    check_files_agree(path, recorded, meta)
    expect = dict(expect or {})
    dataset = expect.pop("dataset", None)
    # The dataset first: another one explains every other difference (e.g. sine's single "way").
    # A folder's path is compared resolved (a checkpoint from before paths were recorded absolute: against this cwd).
    if dataset is not None and resolved_name(str(meta.get("dataset"))) != resolved_name(dataset):
        raise CheckpointError(f"checkpoint {path} was made with dataset={meta.get('dataset')!r}, but dataset={dataset!r} is needed here")
    check_expected(path, meta, expect)
    algo = meta["algo"]
    try:
        cls = get_learner(algo)
        problem = dataset_info(str(meta["dataset"])).problem
    except UnknownNameError as exc:
        raise CheckpointError(f"checkpoint {path}'s metadata names an {exc}") from None
    stored = cls.recorded_hparams(dict(meta.get("hparams", {})), problem=problem)
    foreign = sorted(set(stored) - cls.hparam_names())
    if foreign:
        raise CheckpointError(f"checkpoint {path}'s metadata gives algo {algo!r} hyperparameters it does not take "
                              f"({', '.join(foreign)}); {MIXED_FILES}")
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in given:  # e.g. --eval-inner-steps for meta-sgd, which adapts with its meta-trained inner_steps: the
        if key not in cls.hparam_names():  # caller's flag is refused as train refuses it, not blamed on the checkpoint
            raise not_applicable(algo, key)
    try:  # the caller's values (e.g. eval's --eval-inner-steps) are theirs to fix, not the metadata's
        given = cls.check_hparams(given)
    except ValueError as exc:
        raise LazyAppsError(str(exc)) from None
    try:
        learner = build_learner(algo, dataset=meta["dataset"], ways=int(meta["ways"]), arch=meta["arch"], device=device,
                                blame=f"checkpoint {path}'s metadata ({algo})", **{**stored, **given})
    except UnknownNameError as exc:  # e.g. an architecture this version does not have
        raise CheckpointError(f"checkpoint {path}'s metadata names an {exc}") from None
    try:
        learner.load_checkpoint_state(state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the {algo} learner on {meta['arch']} ({meta['ways']}-way) its "
                              f"metadata describes: {first_load_problem(exc)}") from None
    return learner, state, meta
