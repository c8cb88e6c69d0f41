"""Query-based adversarial attacks on blackbox classifiers.

Meta-Attack (Du et al., ICLR 2020) and its lazy variant, with the zeroth-order
(ZOO, NES, Bandits) and decision-based (HopSkipJump, Boundary) baselines. Every
attack sees the target only through :class:`BlackBox`, which counts queries.
The foolbox bridge (``run_hsja``, ``run_boundary``, ``BlackBoxFoolboxModel``)
is imported on first use, so ``import attacks`` does not pay for foolbox.
"""
from .blackbox import UNLIMITED, BlackBox, QueryBudgetExceeded
from .estimators import BanditsEstimator, GradientEstimator, NESEstimator, ZOOEstimator
from .losses import MarginLoss, is_adversarial, margin_loss, predicted_labels
from .outcome import AttackOutcome, l2_distance
from .score_attack import BASELINE_SETTINGS, baseline_settings, make_estimator, run_baseline, score_attack

_FOOLBOX_BRIDGE = ("BlackBoxFoolboxModel", "run_boundary", "run_foolbox_attack", "run_hsja")


def __getattr__(name: str):
    if name in _FOOLBOX_BRIDGE:
        from . import foolbox_bridge

        return getattr(foolbox_bridge, name)
    raise AttributeError(f"module 'attacks' has no attribute {name!r}")


__all__ = [
    "AttackOutcome",
    "BASELINE_SETTINGS",
    "BanditsEstimator",
    "BlackBox",
    "BlackBoxFoolboxModel",
    "GradientEstimator",
    "MarginLoss",
    "NESEstimator",
    "QueryBudgetExceeded",
    "UNLIMITED",
    "ZOOEstimator",
    "baseline_settings",
    "is_adversarial",
    "l2_distance",
    "make_estimator",
    "margin_loss",
    "predicted_labels",
    "run_baseline",
    "run_boundary",
    "run_foolbox_attack",
    "run_hsja",
    "score_attack",
]

# The meta-attacker half (MetaAttackFoolbox lives in attacks.foolbox_meta: it imports foolbox).
from .meta_attack import meta_attack  # noqa: E402
from .meta_attacker import MetaAttacker  # noqa: E402
from .meta_estimator import MetaEstimator  # noqa: E402
from .meta_training import meta_train  # noqa: E402

__all__ += ["MetaAttacker", "MetaEstimator", "meta_attack", "meta_train"]
