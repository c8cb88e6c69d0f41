"""Load a model the user trained elsewhere: the attack product's ``--target``.

Three forms of ``spec``:

- a zoo checkpoint written by :func:`models_zoo.train` (its ``.pt.json``
  metadata names the architecture);
- a TorchScript file (``torch.jit.save``) or a ``torch.export`` program
  (``torch.export.save``; export it with a dynamic batch dimension), both of
  which carry their own code;
- ``ARCH:PATH`` — a zoo architecture name (``net4``, ``timm:resnet10t``, ...)
  and a file holding its state dict (``torch.save(model.state_dict(), PATH)``),
  read with ``weights_only=True``.

A state dict saved from a normalised zoo model (keys ``normalize.*`` and
``net.*``) keeps its normalisation; a bare network's state dict gets
``Normalize(mean, std)`` in front when ``mean``/``std`` are given, and
otherwise is assumed to take images in [0, 1] as they are.
"""
from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lazyapps.checkpoint import load_error, load_weights
from lazyapps.errors import CheckpointError, LazyAppsError, describe
from lazyapps.runtime import resolve_device

from .normalize import with_normalization
from .registry import create, get_arch
from .training import is_zoo_checkpoint, load_trained


class ExportedModel(nn.Module):
    """A ``torch.export`` program as an ordinary module.

    An exported graph is fixed (it was exported in eval form) and refuses
    ``train()``/``eval()``; here those only set the flag, so code that calls
    ``model.eval()`` on any target works.
    """

    keeps_layout = True  # a fixed graph: leave its tensors' memory layout alone

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.program(*args)


#: How messages name each kind of archive :func:`archive_kind` tells apart.
ARCHIVE_NAMES = {"torchscript": "TorchScript", "export": "torch.export"}


def archive_kind(path: Path) -> str | None:
    """``"torchscript"``, ``"export"`` (torch.export's .pt2) or ``None`` (a plain torch.save file, or not a zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    # TorchScript archives hold the model's code (``<name>/code/...``); exported programs an ``archive_format`` entry.
    if any("/code/" in name for name in names):
        return "torchscript"
    if any(name.endswith("/archive_format") or name == "archive_format" for name in names):
        return "export"
    return None


def _fixed_batch(program) -> int | None:
    """The batch size a ``torch.export`` program's first input is fixed to (``None``: a dynamic batch dimension)."""
    from torch.export.graph_signature import InputKind

    names = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]
    for node in program.graph.nodes:
        if node.op == "placeholder" and names and node.name == names[0]:
            shape = getattr(node.meta.get("val"), "shape", None)
            if shape and isinstance(shape[0], int):
                return int(shape[0])
            return None
    return None


def _split_spec(spec: str) -> tuple[str | None, Path]:
    if Path(spec).exists():
        return None, Path(spec)
    if ":" in spec:
        arch, path = spec.rsplit(":", 1)
        get_arch(arch)  # unknown architecture -> UnknownNameError listing the valid ones
        if not path:
            raise CheckpointError(f"{spec!r} names no file after '{arch}:'; give ARCH:STATE_DICT_PATH")
        return arch, Path(path)
    raise CheckpointError(f"model file {spec!r} does not exist; give a TorchScript file, a zoo checkpoint, or ARCH:STATE_DICT_PATH")


def user_model_arch(spec: str) -> str | None:
    """The zoo architecture ``spec`` holds: ARCH of ``ARCH:PATH``, or the one a zoo checkpoint records (else None)."""
    path = Path(spec)
    if path.is_file():
        if not is_zoo_checkpoint(path):
            return None  # TorchScript / torch.export: their own code, no zoo name
        from lazyapps.checkpoint import load_metadata

        return (load_metadata(path).get("settings") or {}).get("arch")
    return spec.rsplit(":", 1)[0] if ":" in spec else None


def load_user_model(
    spec: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    **options,
) -> nn.Module:
    """The model described by ``spec`` (see the module docstring), in eval mode on ``device``.

    ``num_classes``/``in_channels``/``image_size``/``options`` build the
    architecture for an ``ARCH:PATH`` state dict (defaults: the
    architecture's). A missing, corrupt or mismatching file raises
    :class:`~lazyapps.errors.CheckpointError` with one line saying why.
    """
    if (mean is None) != (std is None):
        raise LazyAppsError("give both mean and std (or neither)")
    device = resolve_device(device)
    arch, path = _split_spec(spec)
    if not path.is_file():
        raise CheckpointError(f"model file {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    if arch is None:
        if is_zoo_checkpoint(path):
            return load_trained(path, device=device).model
        kind = archive_kind(path)
        try:
            if kind == "torchscript":
                with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; users' files still load
                    warnings.simplefilter("ignore", FutureWarning)
                    return torch.jit.load(str(path), map_location=device).eval()
            if kind == "export":
                program = torch.export.load(str(path))
        except Exception as exc:  # a damaged archive fails in many ways inside the loaders
            raise CheckpointError(f"{ARCHIVE_NAMES[kind]} file {path} cannot be loaded ({describe(exc, 300)})") from None
        if kind == "export":
            batch = _fixed_batch(program)
            if batch is not None:  # every other batch size would fail deep inside the program's guards
                raise CheckpointError(f"torch.export program {path} was exported for a fixed batch of {batch} images; "
                                      f"export it with a dynamic batch dimension: torch.export.export(model, (x,), "
                                      f"dynamic_shapes=({{0: torch.export.Dim.DYNAMIC}},))")
            return ExportedModel(program.module()).to(device).eval()
        raise CheckpointError(f"{path} is not TorchScript, a torch.export program or a zoo checkpoint; "
                              f"for a state dict pass ARCH:{path} (e.g. net4:{path})")
    kind = archive_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is a {ARCHIVE_NAMES[kind]} file, not a state dict: it carries its own code, "
                              f"so pass it without '{arch}:'")
    try:
        state = load_weights(path)
    except Exception as exc:  # corrupt, truncated, or pickled code that weights_only refuses
        raise CheckpointError(f"{path} cannot be read as a state dict ({load_error(exc)})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a zoo checkpoint without its metadata file
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a dict of tensors)")
    net = create(arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)
    normalized = "normalize.mean" in state
    model: nn.Module = net
    if normalized:  # the real mean/std are loaded from the state dict
        channels = state["normalize.mean"].numel()
        model = with_normalization(net, [0.0] * channels, [1.0] * channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit architecture {arch!r} ({describe(exc, 300)}); check ARCH and num_classes/in_channels") from None
    if not normalized and mean is not None:
        model = with_normalization(net, mean, std)
    return model.to(device).eval()
