"""GlobalBatchNorm: on 2 gloo processes holding uneven parts of a batch, the outputs, gradients (first and second
order) and running statistics of plain BatchNorm on the whole batch in one process."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lazyapps.global_batchnorm import GlobalBatchNorm, use_global_batchnorm
from tests.spawn import run_ranks

#: rows of the batch each rank holds: uneven, and one split where rank 1 holds nothing
SPLITS = [(slice(0, 5), slice(5, 7)), (slice(0, 7), slice(7, 7))]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 4), nn.BatchNorm1d(4, momentum=None)).double()


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(7, 2, 4, 4, generator=g, dtype=torch.float64) * 2 + 1


def _step(rows: slice | None) -> dict:
    """Forward, gradient and a second-order gradient of this rank's part of one loss over the whole batch."""
    net = use_global_batchnorm(_net()) if rows is not None else _net()
    x = _batch()
    part = x if rows is None else x[rows]
    weights = torch.linspace(-1, 2, 7 * 4, dtype=torch.float64).view(7, 4)
    out = net(part)
    # The whole batch's loss is a sum over rows: each rank takes its rows' terms.
    loss = (out * (weights if rows is None else weights[rows])).pow(2).sum() / 7
    params = list(net.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    # Second order: a Hessian-vector product H·v = ∇(v·∇loss), additive over the ranks' parts like the loss.
    g = torch.Generator().manual_seed(5)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    hess = torch.autograd.grad(sum((a * b).sum() for a, b in zip(grads, v)), params)
    return {"out": out.detach(), "grads": [g.detach() for g in grads], "hess": list(hess),
            "state": {k: v.clone() for k, v in net.state_dict().items()}}


def _one_rank(split_of: int) -> dict:
    from lazyapps import distributed

    return _step(SPLITS[split_of][distributed.rank()])


@pytest.mark.parametrize("split_of", range(len(SPLITS)))
def test_two_ranks_give_one_process_batch_statistics_gradients_and_running_stats(split_of):
    one = _step(None)
    r0, r1 = run_ranks(_one_rank, split_of, world=2)
    rows = SPLITS[split_of]
    torch.testing.assert_close(torch.cat([r0["out"], r1["out"]]), one["out"], rtol=1e-10, atol=1e-12)
    for name, ref in (("grads", one["grads"]), ("hess", one["hess"])):
        for a, b, g in zip(r0[name], r1[name], ref):  # each rank's gradient is its part of the sum
            torch.testing.assert_close(a + b, g, rtol=1e-9, atol=1e-11, msg=name)
    for k, v in one["state"].items():  # running mean/var (unbiased, global count), counters: as one process
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-10, atol=1e-12, msg=k)
        torch.testing.assert_close(r1["state"][k], v, rtol=1e-10, atol=1e-12, msg=k)
    if rows[1].stop > rows[1].start:  # plain BatchNorm on a part gives other numbers: the comparison is not vacuous
        assert not torch.allclose(_net()(_batch()[rows[0]]), one["out"][rows[0]])


def test_conversion_keeps_parameters_buffers_and_single_process_behaviour():
    net = _net()
    params = {k: id(v) for k, v in net.named_parameters()}
    keys = list(net.state_dict())
    bn = net[1]
    reference = _net()
    use_global_batchnorm(net)
    assert isinstance(net[1], GlobalBatchNorm) and isinstance(net[5], GlobalBatchNorm) and net[1] is not bn
    assert {k: id(v) for k, v in net.named_parameters()} == params  # optimisers built before still hold them
    assert list(net.state_dict()) == keys
    assert net[1].running_mean is bn.running_mean
    x = _batch()
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)  # one process: plain BatchNorm
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)
    net.eval(), reference.eval()
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    assert isinstance(use_global_batchnorm(nn.BatchNorm2d(3)), GlobalBatchNorm)


def _eval_step(split_of: int) -> dict:
    from lazyapps import distributed

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.25]))
    net = use_global_batchnorm(bn).double().eval()
    x = _batch()[:, :2]
    rows = SPLITS[split_of][distributed.rank()]
    return {"out": net(x[rows]).detach(), "state": {k: v.clone() for k, v in net.state_dict().items()}}


def test_eval_mode_on_two_ranks_uses_the_running_statistics():
    r0, r1 = run_ranks(_eval_step, 0, world=2)
    x = _batch()[:, :2]
    expected = (x - torch.tensor([0.5, -1.0], dtype=torch.float64).view(1, 2, 1, 1)) / torch.sqrt(
        torch.tensor([2.0, 0.25], dtype=torch.float64).view(1, 2, 1, 1) + 1e-5)
    torch.testing.assert_close(torch.cat([r0["out"], r1["out"]]), expected, rtol=1e-10, atol=1e-12)
    assert int(r0["state"]["num_batches_tracked"]) == 0 and r0["state"]["running_mean"].tolist() == [0.5, -1.0]


def test_conversion_keeps_eps_and_momentum():
    bn = nn.BatchNorm2d(3, eps=0.5, momentum=0.3)
    converted = use_global_batchnorm(bn)
    assert (converted.eps, converted.momentum) == (0.5, 0.3)
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(converted(x), nn.BatchNorm2d(3, eps=0.5, momentum=0.3)(x))


def _no_running_stats_and_one_value(split_of: int) -> dict:
    from lazyapps import distributed

    rows = SPLITS[split_of][distributed.rank()]
    # conv4's BatchNorm (track_running_stats=False) normalises with batch statistics in eval mode too: the whole
    # batch's, over every rank, as one process would.
    bn = use_global_batchnorm(nn.BatchNorm2d(2, track_running_stats=False).double()).eval()
    out = {"eval_out": bn(_batch()[rows]).detach()}
    # One value per channel over all ranks: refused on every rank, as plain BatchNorm refuses it in one process
    # (training on it would set running_var to inf: the unbiased factor count / (count - 1) divides by zero).
    one = use_global_batchnorm(nn.BatchNorm1d(2).double())
    try:
        one(torch.ones(1 if distributed.rank() == 0 else 0, 2, dtype=torch.float64))
        out["error"] = None
    except ValueError as exc:
        out["error"] = str(exc)
    out["running_var"] = one.running_var.clone()
    return out


def test_two_ranks_use_global_batch_statistics_without_running_stats_and_refuse_a_single_value():
    expected = nn.BatchNorm2d(2, track_running_stats=False).double().eval()(_batch())
    r0, r1 = run_ranks(_no_running_stats_and_one_value, 0, world=2)
    torch.testing.assert_close(torch.cat([r0["eval_out"], r1["eval_out"]]), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):  # one process refuses it too
        nn.BatchNorm1d(2)(torch.ones(1, 2))
    for res in (r0, r1):
        assert res["error"] == "BatchNorm needs more than 1 value per channel over all ranks, got 1"
        assert res["running_var"].tolist() == [1.0, 1.0]


def test_conversion_keeps_eval_mode():
    # A model converted after model.eval() must keep using (and not update) its running statistics.
    bn = nn.BatchNorm2d(3).eval()
    converted = use_global_batchnorm(bn)
    assert not converted.training
    x = torch.randn(4, 3, 2, 2) * 3 + 2
    torch.testing.assert_close(converted(x), x / (1 + 1e-5) ** 0.5)  # running mean 0, var 1: eval BatchNorm
    assert converted.running_mean.tolist() == [0.0, 0.0, 0.0] and int(converted.num_batches_tracked) == 0


def _own_eps_and_momentum(split_of: int) -> dict:
    from lazyapps import distributed

    rows = SPLITS[split_of][distributed.rank()]
    bn = use_global_batchnorm(nn.BatchNorm2d(2, eps=0.5, momentum=0.3).double())
    out = bn(_batch()[:, :2][rows]).detach()
    return {"out": out, "mean": bn.running_mean.clone(), "var": bn.running_var.clone()}


def test_two_ranks_keep_the_layers_own_eps_and_momentum():
    # eps 0.5 and momentum 0.3 (not BatchNorm's 1e-5 and 0.1) in the normalisation and the running statistics
    one = nn.BatchNorm2d(2, eps=0.5, momentum=0.3).double()
    expected = one(_batch()[:, :2]).detach()
    r0, r1 = run_ranks(_own_eps_and_momentum, 0, world=2)
    torch.testing.assert_close(torch.cat([r0["out"], r1["out"]]), expected, rtol=1e-10, atol=1e-12)
    for res in (r0, r1):
        torch.testing.assert_close(res["mean"], one.running_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res["var"], one.running_var, rtol=1e-10, atol=1e-12)
