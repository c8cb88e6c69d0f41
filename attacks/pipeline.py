"""Everything an attack needs, built on first use and cached: zoo, target, gradient sets, meta-attacker.

The Meta-Attack pipeline (Du et al., ICLR 2020; lazy variant: Jamal, Wang,
Gong, Algorithms 3 and 4):

1. whitebox zoo models (``models_zoo.train``, cached by models_zoo);
2. one gradient set per zoo model (:mod:`attacks.gradient_sets`), cached
   under ``<cache>/gradient_sets`` keyed by the zoo model's own cache key and
   every setting of the set;
3. the meta-attacker meta-trained on them (:mod:`attacks.meta_training`),
   cached under ``<cache>/meta_attackers`` keyed by the gradient sets' keys and
   every training setting.

Each step prints one status line (``lazyapps.progress.status``) saying what it
did; long loops show progress bars. A corrupt cached file is rebuilt with a
warning line.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lazyapps.cache import cached
from lazyapps.errors import CheckpointError, LazyAppsError, UnknownNameError
from lazyapps.progress import status

from .blackbox import run_target
from .inputs import check_image_count

#: The target family → dataset, and each dataset's default zoo and target (Du et al.).
DATASET_OF_FAMILY = {"mnist": "mnist", "cifar": "cifar10"}
DEFAULT_ZOO = {"mnist": ("lenet5", "net2", "net3"), "cifar10": ("vgg13", "vgg16", "vgg19")}
DEFAULT_TARGET = {"mnist": "net4", "cifar10": "resnet18"}

#: The meta-training method behind each meta-attack method (Du et al.'s Reptile; Algorithm 3's lazy Reptile).
META_TRAINING_OF = {"lazy-meta": "lazy-reptile", "meta": "reptile"}
#: The meta-trainings each meta-attack method may use instead (``--meta-training``): the lazy attack a lazy teacher's.
META_TRAININGS_OF = {"lazy-meta": ("lazy-reptile", "lazy-maml"), "meta": ("reptile", "maml")}

#: ``preset -> dataset -> settings``. smoke: seconds (tests); quick: minutes on a
#: 2-core CPU; paper: Du et al.'s settings (MNIST: about a quarter of an hour on one CPU
#: thread from an empty cache, most of it meta-training; CIFAR-10: a GPU). ``None`` = the component's default.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "mnist": dict(zoo_epochs=1, zoo_subset=512, target_epochs=1, target_subset=1024, grad_images=64,
                      meta_iterations=2, meta_batch=8, n_images=2, max_queries=1000,
                      q=128, every=5, step=0.01, h=1e-4, finetune_steps=2, finetune_lr=1e-2, attack_batch=16),
        "cifar10": dict(zoo_epochs=1, zoo_subset=128, target_epochs=1, target_subset=128, grad_images=32,
                        meta_iterations=1, meta_batch=8, n_images=1, max_queries=300,
                        q=125, every=3, step=0.01, h=1e-4, finetune_steps=2, finetune_lr=1e-2, attack_batch=8),
    },
    "quick": {
        "mnist": dict(zoo_epochs=1, zoo_subset=None, target_epochs=2, target_subset=None, grad_images=3000,
                      meta_iterations=300, meta_batch=32, n_images=100, max_queries=10000,
                      q=128, every=5, step=0.01, h=1e-4, finetune_steps=20, finetune_lr=1e-2, attack_batch=250),
        "cifar10": dict(zoo_epochs=2, zoo_subset=6000, target_epochs=3, target_subset=6000, grad_images=1500,
                        meta_iterations=150, meta_batch=16, n_images=100, max_queries=10000,
                        q=125, every=3, step=0.01, h=1e-4, finetune_steps=20, finetune_lr=1e-2, attack_batch=50),
    },
    "paper": {
        "mnist": dict(zoo_epochs=None, zoo_subset=None, target_epochs=None, target_subset=None, grad_images=10000,
                      meta_iterations=2000, meta_batch=32, n_images=100, max_queries=10000,
                      q=128, every=5, step=0.01, h=1e-4, finetune_steps=20, finetune_lr=1e-2, attack_batch=500),
        "cifar10": dict(zoo_epochs=None, zoo_subset=None, target_epochs=None, target_subset=None, grad_images=10000,
                        meta_iterations=2000, meta_batch=32, n_images=100, max_queries=10000,
                        q=125, every=3, step=0.01, h=1e-4, finetune_steps=20, finetune_lr=1e-2, attack_batch=100),
    },
}

GRADIENT_SET_FORMAT = 1
META_ATTACKER_FORMAT = 1


@dataclass
class Target:
    """The attacked classifier (images in [0, 1] → logits) and how it was obtained."""

    model: nn.Module
    name: str
    dataset: str
    description: str


def dataset_of_arch(name: str) -> str:
    """The dataset a zoo architecture is attacked on (MNIST family → mnist, CIFAR family → cifar10)."""
    import models_zoo

    arch = models_zoo.get_arch(name)
    if arch.family not in DATASET_OF_FAMILY:
        raise LazyAppsError(f"model {name!r} is a {arch.family} model; attack targets are MNIST or CIFAR classifiers "
                            f"({', '.join(n for n in models_zoo.available() if models_zoo.get_arch(n).family in DATASET_OF_FAMILY)})")
    return DATASET_OF_FAMILY[arch.family]


def is_user_model(spec: str) -> bool:
    """A model file (TorchScript, zoo checkpoint) or ``ARCH:STATE_DICT`` rather than a zoo name (a zoo name wins)."""
    import models_zoo

    if spec in models_zoo.available() or (spec.startswith("timm:") and spec.count(":") == 1):
        return False
    looks_like_file = Path(spec).suffix in (".pt", ".pth", ".ts", ".jit") or "/" in spec
    return Path(spec).exists() or looks_like_file or ":" in spec


def _user_arch(spec: str) -> str | None:
    """The architecture of an ``ARCH:STATE_DICT`` spec (None for a model file)."""
    if Path(spec).exists() or ":" not in spec:
        return None
    return spec.rsplit(":", 1)[0]


def load_user(spec: str, *, device="cpu") -> nn.Module:
    """A user's model (``models_zoo.load_user_model``: TorchScript, zoo checkpoint or ``ARCH:STATE_DICT``)."""
    import models_zoo

    return models_zoo.load_user_model(spec, device=device)


def infer_dataset(target: str) -> str:
    """The dataset of ``target``: from its architecture (zoo name or ``ARCH:PATH``), or by probing a model file."""
    if not is_user_model(target):
        return dataset_of_arch(target)
    arch = _user_arch(target)
    if arch is not None:
        return dataset_of_arch(arch)
    model = load_user(target)
    for dataset, shape in (("mnist", (1, 1, 28, 28)), ("cifar10", (1, 3, 32, 32))):
        try:
            with torch.no_grad():
                # a private generator: probing must not move the global RNG the attack is seeded with
                out = model(torch.rand(shape, generator=torch.Generator().manual_seed(0)))
            if out.dim() == 2 and out.shape[1] == 10:
                return dataset
        except Exception:  # the file decides which input it takes; try the next shape
            continue
    raise LazyAppsError(f"cannot tell which dataset {target} classifies: it accepts neither 1x28x28 (MNIST) "
                        "nor 3x32x32 (CIFAR-10) images with 10 outputs")


def parse_zoo(spec: str | None, dataset: str, target: str) -> list[str]:
    """The whitebox zoo names: ``spec`` (comma separated) or the dataset's default; never the target."""
    import models_zoo

    names = list(DEFAULT_ZOO[dataset]) if spec is None else [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise LazyAppsError("--zoo needs at least one model name")
    for name in names:
        if name not in models_zoo.available():
            raise UnknownNameError("zoo model", name, [n for n in models_zoo.available() if models_zoo.get_arch(n).family in DATASET_OF_FAMILY])
        if dataset_of_arch(name) != dataset:
            raise LazyAppsError(f"zoo model {name!r} is for {dataset_of_arch(name)}, but the target is a {dataset} model")
    # (a zoo checkpoint file counts as its architecture: the zoo trains exactly that model)
    target_arch = (models_zoo.user_model_arch(target) if is_user_model(target) else target) or ""
    if target_arch in names and spec is None:  # (the user passed no --zoo to drop it from)
        rest = ",".join(n for n in names if n != target_arch)
        raise LazyAppsError(f"the target {target_arch!r} is in the default whitebox zoo ({', '.join(names)}); "
                            f"a blackbox target must be held out: pass a zoo without it, e.g. --zoo {rest}")
    if target_arch in names:
        raise LazyAppsError(f"the target {target_arch!r} is in the whitebox zoo ({', '.join(names)}); "
                            "a blackbox target must be held out: drop it from --zoo")
    if len(set(names)) != len(names):
        raise LazyAppsError(f"--zoo lists a model twice: {', '.join(names)}")
    return names


def train_zoo_model(name: str, dataset: str, *, epochs: int | None, subset: int | None, device, seed: int,
                    data_dir, cache_dir, quiet: bool, role: str = "zoo"):
    """A trained zoo model (models_zoo caches it); one status line."""
    import models_zoo

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = models_zoo.train(name, dataset, epochs=epochs, train_subset=subset, device=device, seed=seed,
                                   data_dir=data_dir, cache_dir=cache_dir, quiet=quiet)
    _relay(caught)
    how = "loaded from cache" if trained.from_cache else f"trained in {time.perf_counter() - started:.0f} s"
    status(f"{role} {name} ({dataset}): {how}, test accuracy {trained.test_accuracy:.4f}")
    return trained


def load_target(spec: str, dataset: str, settings: dict[str, Any], *, device, seed: int, data_dir, cache_dir, quiet: bool) -> Target:
    """The target: a zoo name (trained and cached on first use), ``ARCH:STATE_DICT`` or a TorchScript file."""
    if not is_user_model(spec):
        trained = train_zoo_model(spec, dataset, epochs=settings["target_epochs"], subset=settings["target_subset"],
                                  device=device, seed=seed + 1000, data_dir=data_dir, cache_dir=cache_dir, quiet=quiet, role="target")
        return Target(trained.model, spec, dataset, f"{spec} (zoo, test accuracy {trained.test_accuracy:.4f})")
    model = load_user(spec, device=device).eval()
    status(f"target {spec}: user model loaded")
    return Target(model, spec, dataset, f"{spec} (user model)")


class LogProbabilities(nn.Module):
    """A target that returns softmax probabilities, seen through their logarithm.

    log p = z − logsumexp(z): the logits up to a constant per row, so the
    margin losses, which compare scores within a row, are those of the logits.
    Probabilities that underflowed to 0 become log(tiny) ≈ −87 (float32)
    instead of −∞, which would turn finite differences into NaN.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        p = self.model(x)
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()


def returns_probabilities(scores: Tensor, *, atol: float = 1e-4) -> bool:
    """True if every row of (B, K) ``scores`` is a probability vector (entries in [0, 1], sum 1 within ``atol``)."""
    scores = scores.detach().double()
    return bool(len(scores)) and bool(((scores >= 0) & (scores <= 1)).all()) and bool(
        ((scores.sum(1) - 1).abs() <= atol).all())


def as_logit_target(target: Target, probe: Tensor) -> Target:
    """``target``, or a user's target that answers ``probe`` images with probabilities wrapped in :class:`LogProbabilities`.

    The attacks' losses are defined on logits (Du et al.'s margin loss);
    attacked on raw probabilities they would take a different, much flatter
    loss with no error. A user's file may be either, so the first images tell.
    """
    with torch.no_grad():
        scores = run_target(target.model, probe)
    if not returns_probabilities(scores):
        return target
    status(f"target {target.name}: returns probabilities; attacked through their logarithm "
           "(log-probabilities: the logits up to a constant per image)")
    return Target(LogProbabilities(target.model).eval(), target.name, target.dataset,
                  f"{target.description}, probabilities → log")


def _relay(caught: list) -> None:
    for w in caught:
        status(f"warning: {w.message}")


def _zoo_key(trained) -> str:
    return Path(trained.path).name


def gradient_set(trained, name: str, data, *, n_images: int, mode: str, seed: int, device, cache_dir,
                 target_class: int | None = None) -> tuple[dict[str, Tensor], Path]:
    """The (cached) gradient set of zoo model ``name``: ``n_images`` training images drawn with ``seed``.

    ``target_class``: targeted towards that class (``--target-class``), not (y + 1) mod C.
    """
    from .gradient_sets import build_gradient_set

    settings = {"zoo_model": _zoo_key(trained), "n_images": int(n_images), "mode": mode, "seed": int(seed),
                "format": GRADIENT_SET_FORMAT}
    label = f"{data.name}-{name}-{mode}"
    if target_class is not None:  # (only then in the key: the other sets keep their cached files)
        settings["target_class"] = int(target_class)
        label += f"-to{int(target_class)}"
    built: list[bool] = []

    def build() -> dict[str, Tensor]:
        built.append(True)
        n = min(int(n_images), len(data.train))
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
        return build_gradient_set(trained.model.to(device), data.train.images[order], data.train.labels[order],
                                  num_classes=data.num_classes, mode=mode, target_class=target_class,
                                  desc=f"gradients {name}")

    def usable(state: dict[str, Any]) -> None:  # a cached file that loads but holds no gradient set is rebuilt
        shapes = [tuple(state[k].shape) if isinstance(state.get(k), Tensor) else None for k in ("images", "labels", "maps")]
        if None in shapes or not shapes[0][:1] == shapes[1] == shapes[2][:1] or shapes[0][1:] != shapes[2][1:]:
            raise CheckpointError(f"cached gradient set of {name} holds no images, labels and maps of matching shapes")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, path = cached("gradient_sets", label, settings, build, root=cache_dir, validate=usable)
    _relay(caught)
    status(f"gradient set {name}: {len(state['maps'])} maps {'computed' if built else 'loaded from cache'}")
    return state, path


def meta_training_for(method: str, training: str | None = None) -> str:
    """The meta-training of ``method``'s attacker: ``training`` if given (checked), else :data:`META_TRAINING_OF`."""
    if method not in META_TRAINING_OF:
        raise LazyAppsError(f"--meta-training is an option of the meta-attacks ({', '.join(META_TRAINING_OF)}), not of {method}")
    if training is None:
        return META_TRAINING_OF[method]
    if training not in META_TRAININGS_OF[method]:
        raise LazyAppsError(f"--meta-training {training} does not train a {method} attacker; "
                            f"{method} takes {' or '.join(META_TRAININGS_OF[method])}")
    return training


def meta_attacker(method: str, dataset: str, sets: list[tuple[dict[str, Tensor], Path]], settings: dict[str, Any], *,
                  seed: int, device, cache_dir, in_channels: int, training: str | None = None):
    """The (cached) meta-attacker for ``method`` (``lazy-meta`` / ``meta``), meta-trained on ``sets``.

    ``training``: the meta-training (:func:`meta_training_for`; default Reptile / lazy Reptile).
    Returns ``(module, params, path)``.
    """
    from .gradient_sets import as_pairs
    from .meta_attacker import MetaAttacker, describe
    from .meta_training import GRADIENT_METHODS, INNER_LR, INNER_STEPS, meta_train

    training = meta_training_for(method, training)
    # The tasks in the order of their files' names, which the key records: `--zoo a,b` and `--zoo b,a`
    # train the same attacker (meta-training samples tasks by position).
    sets = sorted(sets, key=lambda s: Path(s[1]).name)
    torch.manual_seed(seed)
    model = MetaAttacker.for_dataset(dataset, in_channels=in_channels).to(device)
    inner_steps = settings.get("inner_steps") or INNER_STEPS[training].get(dataset, INNER_STEPS[training]["cifar10"])
    key = {"method": training, "gradient_sets": [Path(p).name for _, p in sets], "arch": describe(model),
           "iterations": int(settings["meta_iterations"]), "batch": int(settings["meta_batch"]),
           "inner_steps": int(inner_steps), "inner_lr": INNER_LR[training], "seed": int(seed), "format": META_ATTACKER_FORMAT}
    if training in GRADIENT_METHODS:  # (added only here, so the Reptile family's cached attackers keep their keys)
        key["meta_lr"] = 1e-3  # Finn et al.; 3e-4 and 3e-3 were no better (docs/attack.md)
    built: list[float] = []

    def build() -> dict[str, Any]:
        started = time.perf_counter()
        tasks = [as_pairs(state, device) for state, _ in sets]
        result = meta_train(model, tasks, method=training, iterations=key["iterations"], batch_size=key["batch"],
                            inner_steps=key["inner_steps"], inner_lr=key["inner_lr"], meta_lr=key.get("meta_lr", 1e-3),
                            eval_every=max(1, key["iterations"] // 10),
                            generator=torch.Generator().manual_seed(seed))
        built.append(time.perf_counter() - started)
        return {"params": {k: v.detach().cpu() for k, v in result.params.items()},
                "history": [[int(i), float(v)] for i, v in result.history]}

    def fits(state: dict[str, Any]) -> None:  # a cached file that loads but does not fit the network is rebuilt
        shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
        params = state.get("params")
        if not isinstance(params, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in params.items()} != shapes:
            raise CheckpointError(f"cached meta-attacker {method} does not fit the network")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, path = cached("meta_attackers", f"{dataset}-{method}", key, build, root=cache_dir, validate=fits)
    _relay(caught)
    params = {k: v.to(device) for k, v in state["params"].items()}
    history = state.get("history") or []
    mse = f", validation MSE {history[0][1]:.3f} -> {history[-1][1]:.3f}" if len(history) >= 2 else ""
    how = (f"meta-trained ({training}, {key['iterations']} iterations of {key['inner_steps']} inner steps) in {built[0]:.0f} s"
           if built else "loaded from cache")
    status(f"meta-attacker {method}: {how}{mse}")
    return model.eval(), params, path


def select_images(model: nn.Module, split, n: int, *, device, batch_size: int = 500) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``n`` test images the target classifies correctly: ``(x in [0, 1], labels, test indices)``."""
    check_image_count(n)  # (a count below 1 would slice the selection from its end)
    chosen: list[Tensor] = []
    found = 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            x = split.images[start:start + batch_size].to(device).float().div(255)
            y = split.labels[start:start + batch_size].to(device)
            # (a user's model has seen one image (the dataset probe) and 16 (the probability probe) by now)
            ok = (run_target(model, x).argmax(1) == y).nonzero().flatten().cpu() + start
            chosen.append(ok)
            found += len(ok)
            if found >= n:
                break
    index = torch.cat(chosen)[:n]
    if len(index) < n:
        raise LazyAppsError(f"the target classifies only {len(index)} test images correctly; ask for at most that many (--n-images)")
    return split.images[index].float().div(255), split.labels[index].clone(), index
