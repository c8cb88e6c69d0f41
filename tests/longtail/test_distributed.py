"""Long-tail training on 2 gloo CPU processes: DDP steps equal one process on the combined batch, resume works
across process counts, and the meta-reweighting methods stay identical on every rank."""
from __future__ import annotations

import math
import shutil
from dataclasses import replace

import pytest
import torch
from torch import nn

from lazyapps.errors import LazyAppsError
from longtail.data import CIFARLongTail
from longtail.trainer import TrainConfig, Trainer
from tests.spawn import run_ranks


@pytest.fixture(scope="module")
def small_lt(data_root):
    return CIFARLongTail.load("cifar10", imbalance=10, root=data_root, n_max=30, test_per_class=3)


def plain_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))


def bn_net() -> nn.Module:
    """With BatchNorm: under torchrun the trainer normalises with the whole batch's statistics (GlobalBatchNorm)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 10))


def _config(method: str, epochs: int) -> TrainConfig:
    # batch 15 over the 118 training images: 7 full batches (8 + 7 per rank) and a last one of 13 (7 + 6).
    return TrainConfig(dataset="cifar10", imbalance=10, method=method, epochs=epochs, batch_size=15, n_max=30,
                       test_per_class=3, model="tiny", inner_steps=2, lr=0.05)


class _Stop(Exception):
    pass


def _stop_after(epochs: int):
    def callback(trainer, row):
        if trainer.epoch >= epochs:
            raise _Stop

    return callback


def _run(trainer: Trainer, until: int | None = None) -> Trainer:
    try:
        trainer.run(on_epoch_end=None if until is None else _stop_after(until))
    except _Stop:
        pass
    return trainer


def _state(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_across_process_counts_equals_one_process(small_lt, tmp_path):
    """1 process (epoch 1) -> 2 processes with DDP (epoch 2) -> 1 process (epoch 3) = 3 epochs in one process."""
    config = _config("ce", epochs=3)
    reference = _run(Trainer(config, small_lt, out_dir=tmp_path / "ref", model=plain_net()))
    _run(Trainer(config, small_lt, out_dir=tmp_path / "a", model=plain_net()), until=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    def second_epoch_on_two_ranks():
        trainer = Trainer(config, small_lt, out_dir=tmp_path / "b", model=plain_net())
        assert trainer._ddp is not None
        trainer.resume(tmp_path / "b" / "checkpoint.pt")
        _run(trainer, until=2)
        return {"state": _state(trainer), "loss": trainer.history[-1]["train_loss"], "epoch": trainer.epoch}

    ranks = run_ranks(second_epoch_on_two_ranks, world=2)
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == 2 and ranks[0]["loss"] == ranks[1]["loss"]
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k  # the ranks never drift apart

    # The 2-process epoch equals the single-process one on the same combined batches...
    two_epochs = _run(Trainer(config, small_lt, out_dir=tmp_path / "c", model=plain_net()), until=2)
    for k, v in _state(two_epochs).items():
        torch.testing.assert_close(ranks[0]["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert ranks[0]["loss"] == pytest.approx(two_epochs.history[-1]["train_loss"], rel=1e-5)
    # ...and rank 0's checkpoint resumes in one process to the uninterrupted result.
    final = Trainer(config, small_lt, out_dir=tmp_path / "b", model=plain_net())
    final.resume(tmp_path / "b" / "checkpoint.pt")
    assert final.epoch == 2
    _run(final)
    for k, v in _state(reference).items():
        torch.testing.assert_close(_state(final)[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert [h["epoch"] for h in final.history] == [1, 2, 3]
    # The update moved the weights (else the equalities prove nothing).
    assert not torch.allclose(_state(reference)["4.weight"], plain_net().state_dict()["4.weight"])


def test_batchnorm_epoch_on_two_ranks_equals_one_process(small_lt):
    """DDP with uneven shares (8 + 7, last batch 7 + 6): weights and running statistics of one process."""
    config = _config("ce", epochs=1)

    def train(batchnorm="global"):
        config.batchnorm = batchnorm
        trainer = _run(Trainer(config, small_lt, model=bn_net()))
        return {"state": _state(trainer), "loss": trainer.history[-1]["train_loss"]}

    one = train()
    r0, r1 = run_ranks(train, world=2)
    for k, v in one["state"].items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert not torch.allclose(one["state"]["1.running_var"], torch.ones(4))  # the statistics were tracked
    # --batchnorm local: plain DDP, each rank's own statistics; the ranks agree, one process's numbers are lost.
    l0, l1 = run_ranks(train, "local", world=2)
    assert all(torch.equal(v, l1["state"][k]) for k, v in l0["state"].items())
    assert not torch.allclose(l0["state"]["0.weight"], one["state"]["0.weight"], rtol=1e-4, atol=1e-5)
    with pytest.raises(LazyAppsError, match="batchnorm must be one of global, local"):
        train("sync")


def _resnet32_ddp_gradient(n: int) -> dict:
    """ResNet-32's gradient on n images in float64, each rank's rows through DDP with GlobalBatchNorm, as the trainer."""
    import models_zoo
    from lazyapps import distributed
    from lazyapps.global_batchnorm import use_global_batchnorm

    torch.manual_seed(0)
    model = models_zoo.create("resnet32", num_classes=10).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)
    rows = distributed.shard(n)
    if distributed.is_distributed():
        use_global_batchnorm(model)
    net = distributed.wrap_ddp(model) or model
    loss = nn.functional.cross_entropy(net(x[rows]), y[rows]) * distributed.loss_scale(len(y[rows]), n)
    loss.backward()
    return {k: p.grad for k, p in model.named_parameters()} | {k: b for k, b in model.named_buffers()}


def test_resnet32_ddp_gradient_equals_one_process_in_float64():
    """The real model (31 BatchNorm layers, shortcuts), uneven shares (8 + 7): one process's gradient and running
    statistics to 1e-10. (In float32 ResNet-32's gradient at init is itself only good to ~1e-3 against float64,
    and 1- and 2-process runs differ by as much.)"""
    one = _resnet32_ddp_gradient(15)
    for rank in run_ranks(_resnet32_ddp_gradient, 15, world=2):
        for k, v in one.items():
            torch.testing.assert_close(rank[k], v, rtol=1e-10, atol=1e-13, msg=k)


@pytest.mark.parametrize("method", ["meta-weight-net", "lazy-two-component"])
def test_meta_reweighting_stays_identical_on_every_rank(small_lt, method):
    """Same validation batches, averaged gradients and meta-net updates: every rank ends with the same weights."""
    # epoch 2 is the meta phase; without the lr decay (×0.0001 by then), so that the meta-net's step is not lost below
    # float32's resolution: the check at the end compares it with the seed's initial meta-net
    config = replace(_config(method, epochs=2), lr_decay=(1.0, 1.0))

    def train():
        trainer = _run(Trainer(config, small_lt, model=bn_net()))
        out = {"state": _state(trainer), "history": trainer.history}
        if hasattr(trainer.method, "weight_net"):
            out["weight_net"] = {k: v.clone() for k, v in trainer.method.weight_net.state_dict().items()}
        return out

    r0, r1 = run_ranks(train, world=2)
    assert r0["history"][-1]["meta"] and "meta_val_loss" in r0["history"][-1]
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    for k, v in r0.get("weight_net", {}).items():
        assert torch.equal(v, r1["weight_net"][k]), k
    assert r0["history"][-1]["top1_error"] == r1["history"][-1]["top1_error"]
    assert r0["history"][-1]["train_loss"] == r1["history"][-1]["train_loss"]
    assert r0["history"][-1]["meta_val_loss"] == r1["history"][-1]["meta_val_loss"]  # diagnostics: the mean over ranks
    if method == "meta-weight-net":  # the meta-net learned something (its averaged meta-gradient was not zero)
        fresh = Trainer(config, small_lt, model=bn_net()).method.weight_net.state_dict()  # the run's seed's start
        assert any(not torch.equal(v, fresh[k]) for k, v in r0["weight_net"].items())


# -- meta methods: the weights of a batch split over ranks are those of one process on the whole batch -----------

#: (method, options): every meta method, both ε rules, and lazy students whose k slices each span both ranks
#: (k = 3 over 11 rows) or lie on one rank only (k = 11: one row per step, the other rank's part empty).
META_CASES = [("l2rw", {}), ("meta-weight-net", {}), ("two-component", {}), ("two-component", {"eps_rule": "normalized"}),
              ("lazy-two-component", {"inner_steps": 3}), ("lazy-two-component", {"inner_steps": 11})]
COUNTS = [50, 30, 20, 10, 8, 6, 5, 4, 3, 2]
N_BATCH = 11


def _meta_step_every_case(net=plain_net) -> list[dict]:
    """One meta step of every case, float64 (so the comparison is tight), on this rank's rows of one batch."""
    from lazyapps import distributed
    from lazyapps.global_batchnorm import use_global_batchnorm
    from longtail.methods import StepContext, create_method

    world, rank = distributed.world_size(), distributed.rank()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(N_BATCH, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (N_BATCH,), generator=g)
    val_x, val_y = torch.rand(10, 3, 8, 8, generator=g, dtype=torch.float64), torch.arange(10)
    rows = slice(rank, N_BATCH, world)  # the trainer's meta-phase share
    out = []
    for name, options in META_CASES:
        model = use_global_batchnorm(net().double()) if world > 1 else net().double()  # as the trainer does
        method = create_method(name, COUNTS, **options)
        method.meta_start = 0
        if hasattr(method, "weight_net"):
            method.weight_net.double()
        split = {"batch_size": N_BATCH, "rows": rows} if world > 1 else {}
        loss = method.loss(StepContext(model, 0.5, 0, val_x, val_y, **split), x[rows], y[rows])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        (loss * distributed.loss_scale(len(y[rows]), N_BATCH)).backward()  # what the trainer does
        distributed.average_gradients(model.parameters())
        optimizer.step()
        out.append({"rows": list(range(N_BATCH)[rows]), "weights": method.last_weights, "loss": float(loss.detach()),
                    "base": method.class_weights[y[rows]].double() if hasattr(method, "class_weights") else None,
                    "state": _state_of(model), "diagnostics": dict(method.diagnostics),
                    "weight_net": _state_of(method.weight_net) if hasattr(method, "weight_net") else {}})
    return out


def _state_of(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _gathered(ranks: list[dict], key: str) -> torch.Tensor:
    out = torch.zeros(N_BATCH, dtype=torch.float64)
    for r in ranks:
        out[r["rows"]] = r[key].double()
    return out


@pytest.mark.parametrize("net", [plain_net, bn_net])
def test_meta_step_on_two_ranks_equals_one_process_on_the_whole_batch(net):
    """Per-example weights (ε), the meta-net and the weights after the step: 2 ranks == 1 process, to float64 rounding.
    With BatchNorm, every forward (the virtual steps', the lazy student's slices', the real one) normalises
    with the statistics one process sees. Its sums are taken in another order than one process's BatchNorm
    kernel, and the pull-back's difference quotient (step √ε·‖θ‖/‖v‖) amplifies that rounding to ~1e-8."""
    close = {"rtol": 1e-10, "atol": 1e-13} if net is plain_net else {"rtol": 1e-7, "atol": 1e-9}
    single = _meta_step_every_case(net)
    ranks = run_ranks(_meta_step_every_case, net, world=2)
    for case, one, r0, r1 in zip(META_CASES, single, *ranks):
        weights = _gathered([r0, r1], "weights")
        # (with BatchNorm the amplified rounding is of the batch's scale: a weight near 0 is off by up to 2e-8 of the
        # largest weight, seen on one CPU)
        of_batch = {} if net is plain_net else {"atol": 1e-7 * float(one["weights"].abs().max())}
        torch.testing.assert_close(weights, one["weights"].double(), **{**close, **of_batch}, msg=str(case))
        if one["base"] is not None:  # ε alone (it is small next to w_y): relative to itself
            eps, eps_one = weights - _gathered([r0, r1], "base"), one["weights"].double() - one["base"]
            assert eps_one.abs().max() > 0, case
            # With BatchNorm the rounding the difference quotient amplifies is of the batch's scale, not of each ε_i:
            # a small ε_i can be off by 1.5e-6 of itself (seen on one CPU) while every one is within 3e-8 of max |ε|.
            scale = 1e-16 if net is plain_net else 1e-6 * float(eps_one.abs().max())
            torch.testing.assert_close(eps, eps_one, rtol=1e-8 if net is plain_net else 1e-6, atol=scale, msg=str(case))
        assert weights.std() > 0, case  # the weights tell the examples apart: the comparison is not of constants
        for r in (r0, r1):
            for k, v in one["state"].items():  # BatchNorm's running statistics included
                torch.testing.assert_close(r["state"][k], v, **close, msg=f"{case} {k}")
            for k, v in one["weight_net"].items():
                torch.testing.assert_close(r["weight_net"][k], v, **close, msg=f"{case} {k}")
            assert r["diagnostics"] == pytest.approx(one["diagnostics"], rel=1e-6), case  # (float32 means of w_y)
        # The loss each rank returns is its share's example-weighted part of the single-process loss.
        mean = (len(r0["rows"]) * r0["loss"] + len(r1["rows"]) * r1["loss"]) / N_BATCH
        assert mean == pytest.approx(one["loss"], rel=close["rtol"]), case
        if case[0] == "l2rw":  # normalised over the whole batch, not per rank
            assert float(weights.sum()) == pytest.approx(1.0)
    assert any(not torch.equal(v, single[1]["weight_net"][k]) for k, v in plain_meta_net().items())  # MWN learned


def plain_meta_net() -> dict:
    from longtail.methods import create_method

    return _state_of(create_method("meta-weight-net", COUNTS).weight_net.double())


@pytest.mark.parametrize(("method", "net"), [("meta-weight-net", plain_net), ("two-component", plain_net),
                                             ("lazy-two-component", plain_net), ("lazy-two-component", bn_net)])
def test_meta_training_on_two_ranks_equals_one_process(small_lt, method, net):
    """The trainer's meta epochs (strided rows, batch sizes 15 and 13) on 2 ranks == 1 process, float32."""
    config = _config(method, epochs=2)
    config.lr_decay = (1.0, 1.0)  # the meta epoch keeps lr 0.05, so ε is not negligible

    def train():
        from lazyapps import distributed

        trainer = _run(Trainer(config, small_lt, model=net()))
        return {"state": _state(trainer), "history": trainer.history[-1], "weights": trainer.method.last_weights,
                "rows": list(range(13)[distributed.rank()::distributed.world_size()])}

    one = train()
    r0, r1 = run_ranks(train, world=2)
    assert one["history"]["meta"] and abs(one["history"]["meta_weight_mean"]) > 0
    for k, v in one["state"].items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        assert torch.equal(r0["state"][k], r1["state"][k])
    assert r0["history"]["train_loss"] == pytest.approx(one["history"]["train_loss"], rel=1e-5)
    last = torch.zeros(13, dtype=one["weights"].dtype)
    last[r0["rows"]], last[r1["rows"]] = r0["weights"], r1["weights"]
    torch.testing.assert_close(last, one["weights"], rtol=1e-4, atol=1e-6)  # the last batch's weights


@pytest.mark.parametrize("method", ["cb-ce", "cb-focal", "ldam-drw"])
def test_class_weighted_losses_on_two_ranks_equal_one_process(small_lt, method):
    """Σwℓ/Σw is a ratio over the whole batch: each rank's own Σw (uneven shares 8 + 7) would give another gradient.
    LDAM-DRW re-weights from epoch 2 (its deferred phase) and takes its plain mean in epoch 1."""
    config = _config(method, epochs=2)
    config.lr_decay = (1.0, 1.0)  # the second epoch keeps its lr: a wrong gradient would show
    if method == "ldam-drw":
        config.lr = 0.002  # LDAM's scale s = 30 on this net's plain linear head diverges at 0.05

    def train():
        trainer = _run(Trainer(config, small_lt, model=plain_net()))
        return {"state": _state(trainer), "losses": [row["train_loss"] for row in trainer.history]}

    one = train()
    r0, r1 = run_ranks(train, world=2)
    for k, v in one["state"].items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["losses"] == pytest.approx(one["losses"], rel=1e-5) and all(math.isfinite(x) for x in one["losses"])


def test_a_last_batch_smaller_than_the_process_count_is_the_one_skipped():
    from longtail.trainer import skipped_last_batch

    assert skipped_last_batch(403, 67, 2) == 1 and skipped_last_batch(403, 66, 2) == 0  # 403 = 6·67 + 1 = 6·66 + 7
    assert skipped_last_batch(403, 67, 1) == 0 and skipped_last_batch(402, 67, 2) == 0  # one process; no last batch
    assert skipped_last_batch(10, 4, 3) == 2 and skipped_last_batch(10, 4, 2) == 0
