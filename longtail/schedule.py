"""The CIFAR-LT training schedule (Cao et al., NeurIPS 2019, and every paper after it).

200 epochs of SGD (momentum 0.9, weight decay 2e-4, batch 128) at lr 0.1 with
a linear warm-up over the first 5 epochs, then ×0.01 after epoch 160 and
×0.0001 after epoch 180 — "×0.01 at 160 and again at 180", exactly the rule of
Cao et al.'s released training script (lr·e/5 for e ≤ 5; 0.01·lr for e > 160;
0.0001·lr for e > 180, with 1-based e). Deferred re-weighting (LDAM-DRW) and the
meta-reweighting phase (Jamal et al.) start at the first decay.
Shorter runs keep the same shape: warm-up, decays and the meta phase sit at the
same fractions (2.5 %, 80 %, 90 %) of the epochs, rounded; under 10 epochs the
two decays can round to one epoch (no ×0.01 phase), and a 1-epoch run has none.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Epoch-wise learning rate: warm-up, then two step decays (0-based epochs throughout)."""

    epochs: int = 200
    lr: float = 0.1
    warmup_epochs: int = 5
    decay_epochs: tuple[int, int] = (160, 180)
    decay_factors: tuple[float, float] = (0.01, 0.0001)

    @classmethod
    def scaled(cls, epochs: int, *, lr: float = 0.1, decay_factors: tuple[float, float] = (0.01, 0.0001)) -> Schedule:
        """The paper's schedule squeezed into ``epochs`` (200 gives it exactly).

        ``decay_factors`` are the lr multipliers from the first and the second decay
        (the paper's ×0.01 and ×0.0001; short CPU budgets may use gentler ones so the
        meta phase still moves the model).
        """
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        first = min(epochs - 1, max(1, round(0.8 * epochs))) if epochs > 1 else 1
        second = min(epochs - 1, max(first, round(0.9 * epochs))) if epochs > 1 else 1
        return cls(epochs=epochs, lr=lr, warmup_epochs=int(0.025 * epochs + 0.5), decay_epochs=(first, second),
                   decay_factors=(float(decay_factors[0]), float(decay_factors[1])))

    @property
    def meta_start(self) -> int:
        """First epoch of deferred re-weighting and of the meta-reweighting steps."""
        return self.decay_epochs[0]

    def describe(self) -> str:
        """The schedule in words, as a run's status line gives it: only the decays that happen within the run."""
        first, second = self.decay_epochs
        if first >= self.epochs:
            decays = "no decay within the run"
        elif first == second:
            decays = f"×{self.decay_factors[1]:g} from epoch {second + 1}, where both decays fall: no ×{self.decay_factors[0]:g} phase"
        else:
            decays = f"×{self.decay_factors[0]:g} from epoch {first + 1}" + (
                f", ×{self.decay_factors[1]:g} from {second + 1}" if second < self.epochs else "")
        return (f"{self.epochs} epoch{'' if self.epochs == 1 else 's'}, lr {self.lr:g} (warm-up {self.warmup_epochs}, "
                f"{decays})")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of (0-based) ``epoch``."""
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / self.warmup_epochs
        if epoch >= self.decay_epochs[1]:
            return self.lr * self.decay_factors[1]
        if epoch >= self.decay_epochs[0]:
            return self.lr * self.decay_factors[0]
        return self.lr
