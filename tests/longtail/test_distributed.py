"""Long-tail training on 2 gloo CPU processes: DDP steps equal one process on the combined batch, resume works
across process counts, and the meta-reweighting methods stay identical on every rank."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from longtail.data import CIFARLongTail
from longtail.trainer import TrainConfig, Trainer
from tests.spawn import run_ranks


@pytest.fixture(scope="module")
def small_lt(data_root):
    return CIFARLongTail.load("cifar10", imbalance=10, root=data_root, n_max=30, test_per_class=3)


def plain_net() -> nn.Module:
    """No BatchNorm: DDP (per-rank batch statistics, as in any DDP run) then equals one process exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))


def bn_net() -> nn.Module:
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


@pytest.mark.parametrize("method", ["meta-weight-net", "lazy-two-component"])
def test_meta_reweighting_stays_identical_on_every_rank(small_lt, method):
    """Same validation batches, averaged gradients and meta-net updates: every rank ends with the same weights."""
    config = _config(method, epochs=2)  # epoch 2 is the meta phase

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
        fresh = Trainer(config, small_lt, model=bn_net()).method.weight_net.state_dict()
        assert any(not torch.equal(v, fresh[k]) for k, v in r0["weight_net"].items())
