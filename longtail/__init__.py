"""Long-tailed recognition on CIFAR-LT: the lazy two-component weighting and its baselines.

- :class:`~longtail.data.CIFARLongTail` — long-tailed CIFAR-10/100 training sets
  with a balanced validation set (``longtail.data``).
- :mod:`longtail.methods` — ce, cb-ce, cb-focal, ldam-drw, logit-adjust, l2rw,
  meta-weight-net, two-component, lazy-two-component.
- :mod:`longtail.reweighting` — the one functional look-ahead the meta methods share.
- :class:`~longtail.trainer.Trainer` — schedule, per-epoch checkpoints, exact resume.
- ``lazyapps longtail train|eval`` — the command line (:mod:`longtail.cli`).
"""
