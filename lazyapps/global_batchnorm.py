"""BatchNorm that normalises with the statistics of the whole batch, however many torchrun ranks hold its parts.

When a batch is split over N processes, plain BatchNorm normalises each rank's
share with that share's mean and variance, so an N-process step is not the
step one process takes on the combined batch. :class:`GlobalBatchNorm` sums the
per-channel counts, sums and squared deviations of every rank with a
collective that is itself differentiable (its gradient is a sum over ranks), so
gradients, second order included, flow across ranks as they flow through one
process's batch statistics. ``torch.nn.SyncBatchNorm`` does the same on GPUs only; its forward
refuses CPU tensors, so it cannot run under gloo. This one runs on any device
and backend, which is what makes the CPU tests able to check it.

In a single process, or where BatchNorm uses its running statistics (eval mode), it is plain BatchNorm.
:func:`use_global_batchnorm` swaps it in for a model's BatchNorm layers, keeping
their parameters, buffers and state-dict keys.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import distributed


class _SumOverRanks(torch.autograd.Function):
    """The sum over ranks of every rank's tensor; its gradient is again the sum over ranks of the incoming
    gradients (each rank's loss depends on every rank's part), itself differentiable for second order."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _SumOverRanks.apply(grad)


class _GatherFromRanks(torch.autograd.Function):
    """Every rank's tensor, stacked in rank order (a new leading dim); differentiable to any order: rank r's
    gradient is row r of the incoming gradients summed over ranks."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _SumOverRanks.apply(grad)[dist.get_rank()]


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over any input of shape (N, C, ...) with training statistics taken over every rank's rows.

    Each rank may hold a different number of rows (zero included). The running
    statistics get the global mean and unbiased variance, so they are the same
    on every rank and equal a single process's on the combined batch.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dims (N, C, ...), got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        uses_batch_stats = self.training or self.running_mean is None
        if not (uses_batch_stats and distributed.is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, input.dim())]
        shape = (1, -1, *([1] * (input.dim() - 2)))
        # One collective per forward (and one in the backward): every rank's count, sum and sum of squared
        # deviations from its own mean, combined as in a parallel variance (Chan et al.), which keeps the
        # precision of two passes without E[x²] − E[x]²'s cancellation.
        local_count = input.numel() // max(input.shape[1], 1)
        local_sum = input.sum(dims)
        local_centered = input - (local_sum / max(local_count, 1)).view(shape)
        local_m2 = (local_centered * local_centered).sum(dims)
        parts = _GatherFromRanks.apply(torch.cat([local_sum, local_m2, local_sum.new_tensor([local_count])]))
        channels = input.shape[1]
        sums, m2s, counts = parts[:, :channels], parts[:, channels:2 * channels], parts[:, -1:].detach()
        count = counts.sum()
        if float(count) < 2:
            raise ValueError(f"BatchNorm needs more than 1 value per channel over all ranks, got {int(count)}")
        mean = sums.sum(0) / count
        # Σ_r M2_r + Σ_r n_r (μ_r − μ)², written with sums so that a rank holding no rows adds exactly 0.
        var = (m2s.sum(0) + ((sums - counts * mean) ** 2 / counts.clamp(min=1)).sum(0)) / count
        centered = input - mean.view(shape)
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (count / (count - 1)), alpha=factor)
        return out


def use_global_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` (in place) by a :class:`GlobalBatchNorm` sharing its
    parameters and buffers; returns ``model`` (itself a GlobalBatchNorm if it was a BatchNorm layer)."""
    if isinstance(model, _BatchNorm) and not isinstance(model, GlobalBatchNorm):
        return _converted(model)
    for name, child in model.named_children():
        new = use_global_batchnorm(child)
        if new is not child:
            setattr(model, name, new)
    return model


def _converted(bn: _BatchNorm) -> GlobalBatchNorm:
    new = GlobalBatchNorm(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                          track_running_stats=bn.track_running_stats)
    # The same Parameter and buffer objects, so optimisers and state dicts built on the model still see them.
    new._parameters = bn._parameters
    new._buffers = bn._buffers
    new.train(bn.training)
    return new
