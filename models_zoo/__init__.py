"""The model zoo: architectures shared by the attack, long-tail and few-shot products.

- :func:`create` / :func:`available` — build a network by name (``net4``,
  ``resnet32``, ``conv4``, ..., or ``timm:<name>``).
- :func:`train` / :func:`load` / :func:`evaluate` — train a zoo model on a
  dataset, cached by every setting that made it; trained models take images
  in [0, 1] (normalisation is inside the model).
- :func:`load_user_model` — a user's TorchScript file or ``ARCH:STATE_DICT``.

Attributes are imported on first use so that ``import models_zoo`` (and the
``lazyapps zoo`` CLI's help) does not pay for torch until it is needed.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create": "registry",
    "available": "registry",
    "get_arch": "registry",
    "num_parameters": "registry",
    "Arch": "registry",
    "Normalize": "normalize",
    "with_normalization": "normalize",
    "unwrap": "normalize",
    "train": "training",
    "load": "training",
    "evaluate": "training",
    "load_trained": "training",
    "cache_path": "training",
    "training_settings": "training",
    "TrainedModel": "training",
    "load_user_model": "user_models",
    "check_outputs": "fits",
    "user_model_arch": "user_models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
