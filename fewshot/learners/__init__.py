"""The few-shot learners; importing this package registers every one of them in :data:`fewshot.base.LEARNERS`."""
from __future__ import annotations

from . import baselines, lazy_maml, maml, reptile  # noqa: F401
from . import imaml, meta_lstm, meta_sgd, turtle  # noqa: F401
