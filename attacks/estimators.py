"""Zeroth-order estimators of the attack loss's input gradient, from blackbox queries only.

All estimators share one interface (:class:`GradientEstimator`)::

    gradient, queries = estimator.estimate(blackbox, x, y, loss=loss, index=index, target=target)

``x`` is a batch of B images (one row per attacked image), ``gradient`` the
(B, C, H, W) estimate of ∇ₓ loss(f(x), y), ``queries`` the (B,) number of
queries each image spent. Every estimate sends *all* its perturbed images in
**one** ``blackbox.query`` call (the blackbox splits it into ``batch_size``
chunks if asked), each row charged to its image through ``index``.

* :class:`ZOOEstimator` — coordinate finite differences (Chen et al., "ZOO:
  Zeroth order optimization based black-box attacks", AISec 2017), symmetric
  or forward, on all coordinates, a random subset, or given coordinates
  (:meth:`ZOOEstimator.estimate_on`, what Meta-Attack's Algorithm 4 uses on the
  top-q coordinates ranked by the meta-attacker).
* :class:`NESEstimator` — Gaussian search directions with antithetic sampling
  (Ilyas, Engstrom, Athalye, Lin, "Black-box adversarial attacks with limited
  queries and information", ICML 2018).
* :class:`BanditsEstimator` — gradient priors (Ilyas, Engstrom, Madry, "Prior
  convictions: black-box adversarial attacks with bandits and priors", ICLR
  2019): a per-image *time* prior carried from one estimate to the next and a
  *data* prior (tiles of ``tile_size`` pixels share one value).

Perturbed points are clipped to [0, 1] (the blackbox refuses anything else);
ZOO divides by the step actually taken and NES uses the actual displacement,
so their estimates stay consistent at the box boundary; Bandits divides by
the nominal η·δ, as Ilyas et al.'s Algorithm 2 does.

Random numbers (ZOO's coordinates, NES's directions, Bandits' exploration)
come from one stream per image number (:class:`ImageStreams`), so an image's
attack does not depend on the other images of its batch, nor on how torchrun
splits the images over processes.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from lazyapps.errors import LazyAppsError

from .blackbox import BlackBox, image_index
from .losses import LossFn, MarginLoss

ZOO_MODES = ("symmetric", "forward")
PRIOR_UPDATES = ("eg", "gd")


def default_loss(blackbox: BlackBox) -> LossFn:
    """The C&W margin loss on whatever scores ``blackbox`` returns (logits or probabilities)."""
    if blackbox.output == "label":
        raise LazyAppsError("score-based estimators need a blackbox with output='logits' or 'probs', not 'label'")
    return MarginLoss(kind=blackbox.output)


def query_losses(
    blackbox: BlackBox,
    points: Tensor,
    y: Tensor,
    *,
    loss: LossFn,
    index: Tensor,
    target: Tensor | None = None,
) -> Tensor:
    """Loss of M query points per image, in one blackbox call.

    Args:
        points: (B, M, C, H, W) query points, M per image.
        y, target: (B,) labels / target classes of the B images.
        index: (B,) blackbox image numbers; each of the B·M rows is charged to its image.

    Returns:
        (B, M) losses, in the points' dtype and on their device.
    """
    b, m = points.shape[:2]
    flat = points.reshape((b * m,) + tuple(points.shape[2:]))
    scores = blackbox.query(flat, index=index.repeat_interleave(m))
    y_rep = y.to(scores.device).repeat_interleave(m)
    t_rep = None if target is None else target.to(scores.device).repeat_interleave(m)
    return loss(scores, y_rep, t_rep).reshape(b, m).to(device=points.device, dtype=points.dtype)


def query_losses_with_base(
    blackbox: BlackBox,
    points: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    loss: LossFn,
    index: Tensor,
    target: Tensor | None = None,
    scores: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`query_losses` of ``points`` and the loss at the base images ``x`` themselves.

    One-sided differences need f(x): it comes from ``scores`` (the blackbox's
    scores of ``x``, already paid for) when given, else it is queried in the
    same blackbox call as the points (one more query per image).

    Returns:
        (B, M) losses of the points and (B, 1) losses of ``x``.
    """
    if scores is None:
        losses = query_losses(blackbox, torch.cat([points, x.unsqueeze(1)], 1), y, loss=loss, index=index, target=target)
        return losses[:, :-1], losses[:, -1:]
    t = None if target is None else target.to(scores.device)
    f_x = loss(scores, y.to(scores.device), t).to(device=points.device, dtype=points.dtype).unsqueeze(1)
    return query_losses(blackbox, points, y, loss=loss, index=index, target=target), f_x


_MASK64 = (1 << 64) - 1


def _image_seed(seed: int, image: int) -> int:
    """A 63-bit seed for image ``image`` of an attack seeded ``seed`` (splitmix64 of the pair: nearby pairs spread)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(image) + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class ImageStreams:
    """One random stream per image number, so an estimator's draws for an image do not depend on its batch.

    Image ``i``'s stream is a :class:`torch.Generator` seeded from ``(seed, i)``
    and advanced only by that image's draws. A draw for a batch takes each row
    from its own image's stream (one small call per image, the rows then stacked),
    so attacking images all together, in halves, or split across torchrun's
    processes gives every image the same random numbers and hence the same
    attack; the blackbox queries stay batched. ``seed`` None: drawn once from
    torch's global generator (so ``torch.manual_seed`` / ``--seed`` fix it).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = int(torch.randint(0, 2**62, (1,))) if seed is None else int(seed)
        self._generators: dict[tuple[str, int], torch.Generator] = {}

    def reset(self) -> None:
        """Restart every image's stream from its seed (a new attack)."""
        self._generators.clear()

    def generator(self, image: int, device: torch.device | str) -> torch.Generator:
        """Image ``image``'s generator on ``device`` (created from its seed on first use)."""
        device = torch.device(device)
        key = (str(device), int(image))
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(_image_seed(self.seed, image))
        return self._generators[key]

    def draw(self, index: Tensor, shape: tuple[int, ...], *, like: Tensor, normal: bool = True) -> Tensor:
        """(B, *shape) numbers, row b from image ``index[b]``'s stream: standard normal, or uniform on [0, 1)."""
        sample = torch.randn if normal else torch.rand
        rows = [sample(shape, generator=self.generator(i, like.device), device=like.device, dtype=like.dtype)
                for i in index.tolist()]
        return torch.stack(rows) if rows else like.new_empty((0,) + tuple(shape))


class GradientEstimator(ABC):
    """Estimates ∇ₓ loss(f(x), y) for a batch of images using queries to a :class:`BlackBox`."""

    #: short name used in tables and the CLI
    name: str = "estimator"

    @abstractmethod
    def queries_per_estimate(self, x_shape: tuple[int, ...], *, scores_known: bool = True) -> int:
        """Queries one :meth:`estimate` charges each image (``scores_known``: ``scores`` of ``x`` are passed in)."""

    def next_cost(self, index: Tensor, x_shape: tuple[int, ...], *, scores_known: bool = True) -> Tensor:
        """Queries the next :meth:`estimate` will charge each of images ``index`` (by default every call's cost).

        An attack loop stops an image whose next call does not fit its budget; an estimator whose calls cost
        different amounts (the meta-attacker's free predictions between ZOO steps) says which is next.
        """
        cost = self.queries_per_estimate(x_shape, scores_known=scores_known)
        return torch.full((len(index),), cost, dtype=torch.long)

    @abstractmethod
    def estimate(
        self,
        blackbox: BlackBox,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        index: Tensor | None = None,
        target: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Gradient estimate (B, C, H, W) and per-image queries (B,) int64.

        Args:
            blackbox: the target.
            x: (B, C, H, W) current images in [0, 1].
            y: (B,) true labels; target: (B,) target classes (targeted) or None.
            loss: ``loss(scores, y, target) -> (B,)`` to differentiate; default
                the C&W margin loss on the blackbox's scores.
            index: (B,) blackbox image numbers (default ``arange(B)``); also the
                key of per-image state (Bandits' prior).
            scores: the blackbox's scores at ``x`` if the caller already paid
                for them (saves the baseline query of forward differences).
        """

    def reset(self) -> None:
        """Forget per-image state (start of a new attack)."""


class ZOOEstimator(GradientEstimator):
    """Coordinate-wise finite differences (Chen et al. 2017, ZOO).

    ``ĝᵢ = (f(x + h eᵢ) − f(x − h eᵢ)) / 2h`` (symmetric, 2 queries per
    coordinate) or ``(f(x + h eᵢ) − f(x)) / h`` (forward, 1 query per
    coordinate plus f(x) unless its scores are passed in). Coordinates not
    estimated get gradient 0, so a sign step on the estimate moves exactly the
    estimated coordinates (ZOO's / Meta-Attack's coordinate update).

    Args:
        h: finite-difference step (Chen et al. and Du et al.: 1e-4).
        mode: ``"symmetric"`` or ``"forward"``.
        coordinates: estimate this many coordinates per image, drawn uniformly
            without replacement at each call (ZOO uses 128 per iteration); None
            means all coordinates.
        seed: seed of the per-image coordinate draws (:class:`ImageStreams`;
            None: drawn from torch's global generator).
    """

    name = "zoo"

    def __init__(self, *, h: float = 1e-4, mode: str = "symmetric", coordinates: int | None = None,
                 seed: int | None = None):
        if mode not in ZOO_MODES:
            raise LazyAppsError(f"unknown ZOO mode {mode!r}; valid: {', '.join(ZOO_MODES)}")
        if not 0 < h < 0.5:
            raise LazyAppsError(f"the finite-difference step h must lie in (0, 0.5), got {h}")
        if coordinates is not None and coordinates < 1:
            raise LazyAppsError(f"coordinates must be at least 1 (or None for all), got {coordinates}")
        self.h, self.mode, self.coordinates = float(h), mode, coordinates
        self.streams = ImageStreams(seed) if coordinates is not None else None  # all coordinates: nothing random

    def reset(self) -> None:
        if self.streams is not None:
            self.streams.reset()

    def _per_coordinate(self) -> int:
        return 2 if self.mode == "symmetric" else 1

    def queries_per_estimate(self, x_shape: tuple[int, ...], *, scores_known: bool = True) -> int:
        d = math.prod(x_shape[1:])
        q = d if self.coordinates is None else min(self.coordinates, d)
        return self.queries_on(q, scores_known=scores_known)

    def queries_on(self, n_coordinates: int, *, scores_known: bool = True) -> int:
        """Queries :meth:`estimate_on` charges each image for ``n_coordinates`` coordinates."""
        extra = 1 if self.mode == "forward" and not scores_known else 0
        return n_coordinates * self._per_coordinate() + extra

    def estimate(
        self,
        blackbox: BlackBox,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        index: Tensor | None = None,
        target: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        d = x[0].numel()
        if self.coordinates is None or self.coordinates >= d:
            coords = torch.arange(d, device=x.device).expand(b, d)
        else:  # each image's random subset from its own stream
            keys = self.streams.draw(image_index(index, b), (d,), like=x.new_empty(0, dtype=torch.float32), normal=False)
            coords = keys.argsort(dim=1)[:, : self.coordinates]
        return self.estimate_on(blackbox, x, y, coords, loss=loss, index=index, target=target, scores=scores)

    def estimate_on(
        self,
        blackbox: BlackBox,
        x: Tensor,
        y: Tensor,
        coords: Tensor,
        *,
        loss: LossFn | None = None,
        index: Tensor | None = None,
        target: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Finite differences on given coordinates, all images' queries in one blackbox call.

        Args:
            coords: (B, q) flat coordinate numbers (into ``x[i].flatten()``) per
                image, distinct within a row (e.g. the top-q of |meta-attacker output|).

        Returns:
            (B, C, H, W) gradient, zero except at ``coords``; (B,) queries
            (``q·2`` symmetric; ``q`` forward with ``scores`` given, else ``q + 1``).
        """
        loss = loss or default_loss(blackbox)
        b, q = coords.shape
        index = image_index(index, b)
        flat = x.detach().flatten(1)
        coords = coords.to(flat.device).long()
        base = flat.gather(1, coords)  # (B, q)
        up = (base + self.h).clamp(max=1.0)
        if self.mode == "symmetric":
            down = (base - self.h).clamp(min=0.0)
            values = torch.stack([up, down], dim=2)  # (B, q, 2)
        else:
            # at the upper edge step backwards instead: the point must stay in [0, 1]
            up = torch.where(base + self.h > 1.0, base - self.h, up)
            values = up.unsqueeze(2)
        k = values.shape[2]
        points = flat.unsqueeze(1).repeat(1, q * k, 1)  # (B, q·k, d)
        images = torch.arange(b, device=flat.device).unsqueeze(1)
        rows = torch.arange(q * k, device=flat.device).unsqueeze(0)
        points[images, rows, coords.repeat_interleave(k, dim=1)] = values.reshape(b, q * k)
        points = points.reshape((b, q * k) + tuple(x.shape[1:]))
        if self.mode == "symmetric":
            pair = query_losses(blackbox, points, y, loss=loss, index=index, target=target).reshape(b, q, 2)
            grad_q = (pair[..., 0] - pair[..., 1]) / (up - down)
        else:
            losses, f_x = query_losses_with_base(blackbox, points, x.detach(), y, loss=loss, index=index, target=target,
                                                 scores=scores)
            grad_q = (losses - f_x) / (up - base)
        grad = torch.zeros_like(flat).scatter_(1, coords, grad_q)
        queries = torch.full((b,), self.queries_on(q, scores_known=scores is not None), dtype=torch.long)
        return grad.reshape(x.shape), queries

    def __repr__(self) -> str:
        return f"ZOOEstimator(h={self.h}, mode={self.mode!r}, coordinates={self.coordinates})"


class NESEstimator(GradientEstimator):
    """Natural-evolution-strategies gradient estimate (Ilyas et al., ICML 2018, Algorithm 1).

    ``ĝ = 1/(2σ n/2) Σᵢ (f(x + σuᵢ) − f(x − σuᵢ)) uᵢ`` with ``uᵢ ~ N(0, I)``
    (antithetic pairs), or ``1/(σ n) Σᵢ (f(x + σuᵢ) − f(x)) uᵢ`` without.

    Args:
        sigma: search standard deviation (Ilyas et al.: 0.001).
        samples: queries per estimate, n (Ilyas et al.: 50); even when antithetic.
        antithetic: draw ±u pairs (lower variance; the paper's choice).
        seed: seed of the per-image search directions (:class:`ImageStreams`;
            None: drawn from torch's global generator).
    """

    name = "nes"

    def __init__(self, *, sigma: float = 0.001, samples: int = 50, antithetic: bool = True, seed: int | None = None):
        if sigma <= 0:
            raise LazyAppsError(f"NES sigma must be positive, got {sigma}")
        if samples < 1 or (antithetic and samples % 2):
            raise LazyAppsError(f"NES samples must be a positive (even, when antithetic) number, got {samples}")
        self.sigma, self.samples, self.antithetic = float(sigma), int(samples), antithetic
        self.streams = ImageStreams(seed)

    def reset(self) -> None:
        self.streams.reset()

    def queries_per_estimate(self, x_shape: tuple[int, ...], *, scores_known: bool = True) -> int:
        return self.samples + (0 if self.antithetic or scores_known else 1)

    def estimate(
        self,
        blackbox: BlackBox,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        index: Tensor | None = None,
        target: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        loss = loss or default_loss(blackbox)
        b = x.shape[0]
        index = image_index(index, b)
        x = x.detach()
        n = self.samples // 2 if self.antithetic else self.samples
        u = self.streams.draw(index, (n,) + tuple(x.shape[1:]), like=x)  # each image's directions from its own stream
        plus = (x.unsqueeze(1) + self.sigma * u).clamp(0.0, 1.0)
        if self.antithetic:
            minus = (x.unsqueeze(1) - self.sigma * u).clamp(0.0, 1.0)
            losses = query_losses(blackbox, torch.cat([plus, minus], 1), y, loss=loss, index=index, target=target)
            diff = losses[:, :n] - losses[:, n:]
            # actual displacement (= 2σu away from the box edges)
            step = plus - minus
            scale = 4 * self.sigma**2
        else:
            losses, f_x = query_losses_with_base(blackbox, plus, x, y, loss=loss, index=index, target=target, scores=scores)
            diff = losses - f_x
            step = plus - x.unsqueeze(1)
            scale = self.sigma**2
        view = (b, diff.shape[1]) + (1,) * (x.dim() - 1)
        grad = (diff.reshape(view) * step).mean(dim=1) / scale
        queries = torch.full((b,), self.queries_per_estimate(tuple(x.shape), scores_known=scores is not None))
        return grad, queries.long()

    def __repr__(self) -> str:
        return f"NESEstimator(sigma={self.sigma}, samples={self.samples}, antithetic={self.antithetic})"


def _eg_step(prior: Tensor, grad: Tensor, lr: float) -> Tensor:
    """Exponentiated-gradient step for a prior in [−1, 1] (Ilyas et al. 2019, the L∞ prior update)."""
    p = (prior + 1) / 2
    # log-space form of p·e^{lr g} / (p·e^{lr g} + (1−p)·e^{−lr g}): no overflow for large lr·g
    logit = torch.log(p.clamp_min(1e-12)) - torch.log((1 - p).clamp_min(1e-12)) + 2 * lr * grad
    return 2 * torch.sigmoid(logit) - 1


class BanditsEstimator(GradientEstimator):
    """Bandit optimisation of a gradient prior (Ilyas, Engstrom, Madry, ICLR 2019, Algorithm 2).

    Each image keeps a prior ``v`` of shape (C, ⌈H/tile⌉, ⌈W/tile⌉) (the *data*
    prior: neighbouring pixels share gradients, so tiles share one value),
    carried across calls (the *time* prior: successive gradients are
    correlated). One estimate spends 2 queries per image::

        u ~ N(0, I)·δ/√dim(v);  qᵢ = up(v ± u)
        Δ = (L(x + η q₁/‖q₁‖) − L(x + η q₂/‖q₂‖)) / (η δ) · u
        v ← v + lr·Δ (``"gd"``)   or the exponentiated-gradient step (``"eg"``)

    and returns ``up(v)``, the upsampled prior, as the gradient estimate.

    Defaults are the paper's L∞ ImageNet settings (exploration δ = 1.0, probe
    η = ``fd_eta`` = 0.1, online lr 100, exponentiated-gradient prior), except
    ``tile_size``: the paper uses 6 px tiles on 299 px images (a 50×50 prior);
    on 28–32 px MNIST / CIFAR images we use 4 px tiles (7×7 / 8×8 priors).
    For the paper's L2 attack use ``prior_update="gd", fd_eta=0.01,
    exploration=0.01, online_lr=0.1``.
    """

    name = "bandits"

    def __init__(
        self,
        *,
        exploration: float = 1.0,
        fd_eta: float = 0.1,
        online_lr: float = 100.0,
        tile_size: int = 4,
        prior_update: str = "eg",
        seed: int | None = None,
    ):
        if prior_update not in PRIOR_UPDATES:
            raise LazyAppsError(f"unknown prior update {prior_update!r}; valid: {', '.join(PRIOR_UPDATES)}")
        if tile_size < 1:
            raise LazyAppsError(f"tile_size must be at least 1, got {tile_size}")
        if exploration <= 0 or fd_eta <= 0 or online_lr <= 0:
            raise LazyAppsError("exploration, fd_eta and online_lr must be positive")
        self.exploration, self.fd_eta, self.online_lr = float(exploration), float(fd_eta), float(online_lr)
        self.tile_size, self.prior_update = int(tile_size), prior_update
        self._prior: Tensor | None = None
        self.streams = ImageStreams(seed)  # per-image exploration directions (seed None: from torch's generator)

    def reset(self) -> None:
        self._prior = None
        self.streams.reset()

    def queries_per_estimate(self, x_shape: tuple[int, ...], *, scores_known: bool = True) -> int:
        return 2

    def prior_shape(self, x_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, h, w) of one image's prior."""
        if len(x_shape) != 4:
            raise LazyAppsError(f"Bandits needs (B, C, H, W) images, got shape {tuple(x_shape)}")
        _, c, height, width = x_shape
        return c, math.ceil(height / self.tile_size), math.ceil(width / self.tile_size)

    def priors(self, index: Tensor, x: Tensor) -> Tensor:
        """The current priors of images ``index`` (zeros for images not seen yet)."""
        shape = self.prior_shape(tuple(x.shape))
        stored = self._prior
        needed = int(index.max()) + 1
        if stored is None or tuple(stored.shape[1:]) != shape or stored.device != x.device or stored.dtype != x.dtype:
            stored = torch.zeros((needed,) + shape, device=x.device, dtype=x.dtype)
        elif needed > len(stored):
            stored = torch.cat([stored, stored.new_zeros((needed - len(stored),) + shape)])
        self._prior = stored
        return stored[index.to(stored.device)]

    def _up(self, v: Tensor, x: Tensor) -> Tensor:
        return F.interpolate(v, size=tuple(x.shape[2:]), mode="nearest")

    def estimate(
        self,
        blackbox: BlackBox,
        x: Tensor,
        y: Tensor,
        *,
        loss: LossFn | None = None,
        index: Tensor | None = None,
        target: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        loss = loss or default_loss(blackbox)
        b = x.shape[0]
        index = image_index(index, b)
        x = x.detach()
        prior = self.priors(index, x)
        u = self.streams.draw(index, tuple(prior.shape[1:]), like=prior) * (self.exploration / math.sqrt(prior[0].numel()))
        q1, q2 = self._up(prior + u, x), self._up(prior - u, x)

        def probe(q: Tensor) -> Tensor:
            norm = q.flatten(1).norm(dim=1).clamp_min(1e-12).reshape((b,) + (1,) * (x.dim() - 1))
            return (x + self.fd_eta * q / norm).clamp(0.0, 1.0)

        losses = query_losses(blackbox, torch.stack([probe(q1), probe(q2)], 1), y, loss=loss, index=index, target=target)
        deriv = (losses[:, 0] - losses[:, 1]) / (self.fd_eta * self.exploration)
        step = deriv.reshape(b, 1, 1, 1) * u
        if self.prior_update == "gd":
            prior = prior + self.online_lr * step
        else:
            prior = _eg_step(prior, step, self.online_lr)
        self._prior[index.to(prior.device)] = prior
        return self._up(prior, x), torch.full((b,), 2, dtype=torch.long)

    def __repr__(self) -> str:
        return (
            f"BanditsEstimator(exploration={self.exploration}, fd_eta={self.fd_eta}, online_lr={self.online_lr}, "
            f"tile_size={self.tile_size}, prior_update={self.prior_update!r})"
        )
