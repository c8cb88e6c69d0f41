"""The blackbox a query-based attack talks to: scores out, no gradients, every query counted.

An attack on a blackbox target may only *query* it: send images, read back
scores (logits or probabilities) or, for decision-based attacks, the top-1
label. :class:`BlackBox` is that interface and the only thing the attacks in
this package are given:

* ``query(x, index=...)`` runs the model under ``torch.no_grad()`` in eval
  mode on a detached copy of ``x`` and returns detached scores, so no
  autograd (or ``torch.func``) path leads back to the model or its input;
* each row of each query counts one query for the attacked image it belongs
  to (``index``), per-image counts are in ``counts``, their sum in ``total``;
* an optional per-image ``budget`` is enforced (rule below).

Budget rule: a call that would take *any* image beyond its budget raises
:class:`QueryBudgetExceeded` before the model runs and counts nothing (calls
are all-or-nothing). Attack loops ask :meth:`BlackBox.remaining` first and
stop an image cleanly when its next step would not fit. A call refused for
its input, or one in which the model itself fails, counts nothing either:
queries are charged once the model has answered.

The model itself is held in a private attribute. Python cannot truly hide it;
the discipline is by convention (attacks never touch ``_model``) plus the
no-gradient API, which the tests check.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lazyapps.errors import LazyAppsError, UnknownNameError, describe
from lazyapps.runtime import image_layout, set_layout

OUTPUTS = ("logits", "probs", "label")

#: ``remaining`` of an image when there is no budget.
UNLIMITED = torch.iinfo(torch.int64).max


class QueryBudgetExceeded(LazyAppsError):
    """A query would take some image beyond the blackbox's per-image budget; nothing was run."""

    def __init__(self, images: Tensor, budget: int, requested: Tensor, used: Tensor):
        self.images, self.budget, self.requested, self.used = images, budget, requested, used
        shown = ", ".join(
            f"image {int(i)}: {int(u)} used + {int(r)} asked" for i, u, r in zip(images[:5], used[:5], requested[:5])
        )
        more = f" (and {len(images) - 5} more)" if len(images) > 5 else ""
        super().__init__(f"query budget of {budget} per image exceeded — {shown}{more}; raise the budget (--max-queries)")


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


# torch.OutOfMemoryError is new in torch 2.5; before, the same error was only torch.cuda.OutOfMemoryError.
_OUT_OF_MEMORY = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def run_target(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)``, where a failure of the target (a user's model that takes only some batch sizes, say) is
    one clear line instead of a traceback from inside it.

    The answer must be (B, K) scores, one row per image, none NaN: anything else (a model that scores only the
    first image of a batch, or returns labels) would be broadcast against the labels into fake results.
    """
    try:
        out = model(x)
    except Exception as exc:  # whatever the user's model raises
        # (out of memory is the machine's limit, not a shape the target refuses)
        hint = ("; query fewer images at once (BlackBox(batch_size=...))" if isinstance(exc, _OUT_OF_MEMORY)
                else "; a target must classify (B, C, H, W) batches of any size B")
        raise LazyAppsError(f"the target failed on a batch of {len(x)} images of shape {tuple(x.shape[1:])} "
                            f"({_failure(exc)}){hint}") from None
    if not isinstance(out, Tensor) or out.dim() != 2 or len(out) != len(x):
        shown = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise LazyAppsError(f"the target answered a batch of {len(x)} images with {shown}; a target must return "
                            f"(B, K) class scores, one row per image")
    if bool(torch.isnan(out).any()):
        raise LazyAppsError(f"the target returned NaN scores for a batch of {len(x)} images; it cannot be attacked")
    return out


def _failure(exc: BaseException) -> str:
    """What went wrong in a model, in a few words."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "TorchScript" in lines[0]:  # the error itself is the last line, after two tracebacks
        return lines[-1][:200]
    return describe(exc)


def image_index(index: Tensor | Sequence[int] | None, rows: int) -> Tensor:
    """Image numbers of ``rows`` image rows as a CPU long tensor (default ``0..rows-1``); bad ones are a clear error.

    The per-image query counters, estimator priors and meta-attacker copies are all keyed by these numbers.
    """
    if index is None:
        return torch.arange(rows)
    if not isinstance(index, Tensor):
        index = torch.as_tensor(list(index), dtype=torch.long)
    index = index.reshape(-1).cpu()
    if index.is_floating_point() or index.dtype == torch.bool:
        raise LazyAppsError(f"query index must hold integer image numbers, got dtype {index.dtype}")
    index = index.long()
    if len(index) != rows:
        raise LazyAppsError(f"query index has {len(index)} entries for {rows} image rows")
    if rows and int(index.min()) < 0:
        raise LazyAppsError("query index entries must be non-negative image numbers")
    return index


class BlackBox:
    """Query-only access to a classifier, with per-image query counting and a budget.

    Args:
        model: the target classifier, images in [0, 1] → logits. Put into eval
            mode and its 4-D weights into the device's fast memory layout
            (:func:`~lazyapps.runtime.image_layout`: channels-last on a CPU, which
            halves the cost of a query to Net4); never trained or differentiated
            through here.
        output: what a query returns: ``"logits"`` (B, K), ``"probs"`` (B, K)
            softmax probabilities, or ``"label"`` (B,) top-1 labels for
            decision-based attacks.
        budget: maximum queries per attacked image, or None for no limit.
        batch_size: largest number of rows sent to the model at once; bigger
            queries are split into chunks (one logical query, counted the same).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        output: str = "logits",
        budget: int | None = None,
        batch_size: int | None = None,
    ):
        if output not in OUTPUTS:
            raise UnknownNameError("blackbox output", output, OUTPUTS)
        if budget is not None and int(budget) < 1:
            raise LazyAppsError(f"the query budget must be at least 1 per image, got {budget}")
        if batch_size is not None and int(batch_size) < 1:
            raise LazyAppsError(f"batch_size must be at least 1, got {batch_size}")
        self._model = model.eval()
        self.output = output
        self.budget = None if budget is None else int(budget)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.device, self.dtype = _model_device_dtype(model)
        self._layout = image_layout(self.device)
        set_layout(self._model, self._layout)
        self.counts = torch.zeros(0, dtype=torch.long)
        self.total = 0
        self._n_classes: int | None = None
        # One image's (C, H, W), known once the model has answered: later queries of another shape are
        # refused before they are charged.
        self._image_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ counting
    def reset(self, n_images: int = 0) -> None:
        """Zero all counters; size them for ``n_images`` attacked images (they still grow on demand)."""
        self.counts = torch.zeros(int(n_images), dtype=torch.long)
        self.total = 0

    @property
    def n_images(self) -> int:
        """How many per-image counters exist."""
        return len(self.counts)

    def _grow(self, size: int) -> None:
        if size > len(self.counts):
            grown = torch.zeros(size, dtype=torch.long)
            grown[: len(self.counts)] = self.counts
            self.counts = grown

    def remaining(self, index: Tensor | Sequence[int] | None = None) -> Tensor:
        """Queries each image may still make (LongTensor); ``UNLIMITED`` without a budget.

        ``index`` picks images (default: all counted so far).
        """
        if index is None:
            used = self.counts.clone()
        else:
            index = index.reshape(-1) if isinstance(index, Tensor) else torch.as_tensor(list(index), dtype=torch.long)
            index = image_index(index, len(index))
            self._grow(int(index.max()) + 1 if len(index) else 0)
            used = self.counts[index]
        if self.budget is None:
            return torch.full_like(used, UNLIMITED)
        return (self.budget - used).clamp_min(0)

    def _requested(self, index: Tensor) -> Tensor:
        """Queries per image that rows ``index`` ask for; :class:`QueryBudgetExceeded` if any image would go over."""
        self._grow(int(index.max()) + 1 if len(index) else 0)
        requested = torch.bincount(index, minlength=len(self.counts))
        if self.budget is not None:
            over = (self.counts + requested > self.budget).nonzero().flatten()
            if len(over):
                raise QueryBudgetExceeded(over, self.budget, requested[over], self.counts[over].clone())
        return requested

    # ------------------------------------------------------------------ querying
    def _validate(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise LazyAppsError(f"blackbox queries take a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise LazyAppsError(f"blackbox queries take a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise LazyAppsError(f"blackbox queries take float images in [0, 1], got dtype {x.dtype}")
        if self._image_shape is not None and tuple(x.shape[1:]) != self._image_shape:
            raise LazyAppsError(f"blackbox queries take images of shape {self._image_shape} (C, H, W), as the target "
                                f"answered before; got {tuple(x.shape[1:])}")
        if x.numel() == 0:
            return
        # One read-back for the three checks (each float()/bool() of a GPU tensor is a host-device sync).
        finite, lo, hi = torch.stack([torch.isfinite(x).all().to(x.dtype), x.min(), x.max()]).tolist()
        if not finite:
            raise LazyAppsError("blackbox query contains NaN or infinite pixels")
        if lo < 0.0 or hi > 1.0:
            raise LazyAppsError(f"blackbox query pixels must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; clip first")

    def query(self, x: Tensor, *, index: Tensor | Sequence[int] | None = None) -> Tensor:
        """Scores of the target for a batch of images; each row costs its image one query.

        Args:
            x: (B, C, H, W) images in [0, 1].
            index: (B,) which attacked image each row belongs to; default
                ``arange(B)`` (row i is image i).

        Returns:
            Detached (B, K) logits / probabilities, or (B,) int64 labels, on the
            model's device.

        Raises:
            QueryBudgetExceeded: some image would go over the budget (nothing is
                run or counted).
            LazyAppsError: ``x`` is not a float (B, C, H, W) batch in [0, 1] (of the
                shape the target answered before), ``index`` is malformed, or the
                model failed on it (nothing is counted).
        """
        if isinstance(x, Tensor):
            x = x.detach()
        self._validate(x)
        index = image_index(index, x.shape[0])
        requested = self._requested(index)  # the budget is checked before the model runs, charged after it answered
        x = x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=self._layout)
        if self._model.training:  # someone switched it back; targets are queried in eval mode
            self._model.eval()
        chunk = self.batch_size or max(x.shape[0], 1)
        with torch.no_grad():
            logits = torch.cat([run_target(self._model, part) for part in x.split(chunk)]) if x.shape[0] else self._empty(x)
        self._n_classes, self._image_shape = logits.shape[1], tuple(x.shape[1:])
        self.counts += requested
        self.total += len(index)
        if self.output == "probs":
            return logits.softmax(dim=1).detach()
        if self.output == "label":
            return logits.argmax(dim=1).detach()
        return logits.detach()

    def _empty(self, x: Tensor) -> Tensor:
        # An empty query (every image already done) still has (0, K) scores.
        return torch.zeros(0, self._classes_for(tuple(x.shape[1:])), device=self.device, dtype=self.dtype)

    def _classes_for(self, image_shape: tuple[int, ...]) -> int:
        # K is known after the first real query; before it, one all-zero probe row
        # tells it (uncounted: it belongs to no image and reveals nothing about any).
        if self._n_classes is None:
            probe = torch.zeros((1,) + tuple(image_shape), device=self.device, dtype=self.dtype)
            with torch.no_grad():
                self._n_classes = run_target(self._model, probe).shape[1]
            self._image_shape = tuple(image_shape)
        return self._n_classes

    def num_classes(self, image_shape: tuple[int, ...]) -> int:
        """How many classes the target tells apart (public knowledge of a classifier; costs no query).

        ``image_shape`` is one image's (C, H, W), used for a probe before the first query.
        """
        return self._classes_for(tuple(image_shape))

    def __call__(self, x: Tensor, *, index: Tensor | Sequence[int] | None = None) -> Tensor:
        return self.query(x, index=index)

    def __repr__(self) -> str:
        return (
            f"BlackBox(output={self.output!r}, budget={self.budget}, batch_size={self.batch_size}, "
            f"images={self.n_images}, total={self.total})"
        )
