"""Training loop: exact resume, Ctrl-C, refusal of other runs' checkpoints, schedule."""
from __future__ import annotations

import json

import pytest
import torch

from lazyapps.errors import CheckpointError, LazyAppsError
from longtail.data import CIFARLongTail
from longtail.schedule import Schedule
from longtail.trainer import Interrupted, TrainConfig, Trainer


@pytest.fixture(scope="module")
def small_lt(data_root):
    return CIFARLongTail.load("cifar10", imbalance=10, root=data_root, n_max=30, test_per_class=5)


def _config(method, **kw):
    return TrainConfig(dataset="cifar10", imbalance=10, method=method, epochs=kw.pop("epochs", 10), batch_size=32,
                       n_max=30, test_per_class=5, model="tiny", inner_steps=2, **kw)


def _trainer(config, data, out, tiny_net):
    return Trainer(config, data, out_dir=out, model=tiny_net())


def test_paper_schedule():
    s = Schedule.scaled(200)
    assert (s.warmup_epochs, s.decay_epochs, s.meta_start) == (5, (160, 180), 160)
    assert [s.lr_at(e) for e in (0, 4, 5, 159)] == pytest.approx([0.02, 0.1, 0.1, 0.1])
    assert s.lr_at(160) == pytest.approx(1e-3) and s.lr_at(179) == pytest.approx(1e-3) and s.lr_at(180) == pytest.approx(1e-5)
    short = Schedule.scaled(20, decay_factors=(0.1, 0.01))  # a reduced budget keeps the shape, gentler decays
    assert (short.warmup_epochs, short.decay_epochs) == (1, (16, 18))
    assert [short.lr_at(e) for e in (0, 15, 16, 17, 18, 19)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert TrainConfig(epochs=20, lr_decay=(0.1, 0.01)).schedule == short


@pytest.mark.parametrize("method", ["meta-weight-net", "lazy-two-component"])
def test_interrupted_then_resumed_equals_uninterrupted(small_lt, tmp_path, tiny_net, method):
    config = _config(method)
    full = _trainer(config, small_lt, tmp_path / "full", tiny_net)
    full.run()
    assert full.history[-1]["meta"] and not full.history[0]["meta"]

    part = _trainer(config, small_lt, tmp_path / "part", tiny_net)
    calls = {"n": 0}
    original = part.method.loss

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if part.epoch == 9 and calls["n"] > 1:  # Ctrl-C in the middle of the last (meta) epoch
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    part.method.loss = interrupting
    with pytest.raises(Interrupted, match=r"interrupted during epoch 10; the checkpoint of epoch 9 is kept at .*--resume"):
        part.run()

    resumed = _trainer(config, small_lt, tmp_path / "part", tiny_net)
    resumed.resume(tmp_path / "part" / "checkpoint.pt")
    assert resumed.epoch == 9
    resumed.run()
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    for (k, a), (_, b) in zip(full.method.state_dict().get("weight_net", {}).items(),
                              resumed.method.state_dict().get("weight_net", {}).items()):
        assert torch.equal(a, b), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "train_s"} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    assert (tmp_path / "part" / "best.pt").exists()


def test_resume_refuses_another_runs_checkpoint(small_lt, tmp_path, tiny_net):
    trainer = _trainer(_config("ce", epochs=1), small_lt, tmp_path / "ce", tiny_net)
    trainer.run()
    before = (tmp_path / "ce" / "checkpoint.pt").read_bytes()
    other = _trainer(_config("cb-ce", epochs=1), small_lt, tmp_path / "tc", tiny_net)
    with pytest.raises(CheckpointError, match="method='ce', but method='cb-ce' is needed"):
        other.resume(tmp_path / "ce" / "checkpoint.pt")
    # a config that does not describe the data it is given is refused before anything (the checkpoint would lie)
    for key, value, cut in (("imbalance", 20.0, 10.0), ("dataset", "cifar100", "cifar10")):
        with pytest.raises(LazyAppsError, match=f"the config says {key}={value!r} but the data were cut with {key}={cut!r}"):
            _trainer(TrainConfig(**{**_config("ce", epochs=1).__dict__, key: value}), small_lt, tmp_path / "x", tiny_net)
    other_decay = _trainer(TrainConfig(**{**_config("ce", epochs=1).__dict__, "lr_decay": (0.1, 0.01)}), small_lt, tmp_path / "z", tiny_net)
    with pytest.raises(CheckpointError, match="lr_decay"):
        other_decay.resume(tmp_path / "ce" / "checkpoint.pt")
    assert (tmp_path / "ce" / "checkpoint.pt").read_bytes() == before  # nothing lost


def test_resume_names_the_first_weight_that_does_not_fit(small_lt, tmp_path, tiny_net):
    trainer = _trainer(_config("ce", epochs=1), small_lt, tmp_path, tiny_net)
    trainer.run()
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    first = next(iter(state["model"]))
    del state["model"][first]
    torch.save(state, path)  # the .json beside it is unchanged: only the weights are wrong
    with pytest.raises(CheckpointError, match=rf"does not fit this run's custom:Sequential and ce \(missing key '{first}'\)$"):
        _trainer(_config("ce", epochs=1), small_lt, tmp_path, tiny_net).resume(path)


def test_open_split_settings_are_recorded_from_the_data_and_named_ones_must_match_it(data_root, small_lt, tmp_path, tiny_net):
    cut = CIFARLongTail.load("cifar10", imbalance=10, root=data_root, n_max=20, test_per_class=4, val_per_class=5)
    open_config = TrainConfig(dataset="cifar10", imbalance=10, method="ce", epochs=1, batch_size=32, val_per_class=5)
    trainer = Trainer(open_config, cut, out_dir=tmp_path / "open")
    assert (trainer.config.n_max, trainer.config.test_per_class, trainer.config.val_per_class) == (20, 4, 5)
    assert open_config.n_max is None  # the caller's config is left as given
    trainer.run()
    meta = json.loads((tmp_path / "open" / "checkpoint.pt.json").read_text())
    assert (meta["n_max"], meta["test_per_class"], meta["val_per_class"]) == (20, 4, 5)  # what eval rebuilds the data from
    for key, value, actual in (("val_per_class", 10, 5), ("test_per_class", 3, 4), ("n_max", 30, 20)):
        with pytest.raises(LazyAppsError, match=f"the config says {key}={value!r} but the data were cut with {key}={actual!r}"):
            Trainer(TrainConfig(**{**open_config.__dict__, key: value}), cut)
    with pytest.warns(UserWarning, match="not Cao et al.'s split"):  # (the shared data hold a subset)
        ldam = CIFARLongTail.load("cifar10", imbalance=10, root=data_root, rule="ldam", n_max=20, test_per_class=4, seed=3)
    with pytest.raises(LazyAppsError, match="the config says seed=0 but the data were cut with seed=3"):
        Trainer(TrainConfig(dataset="cifar10", imbalance=10, method="ce", epochs=1, rule="ldam"), ldam, model=tiny_net())


def test_cpu_training_runs_channels_last(small_lt, tiny_net):
    # oneDNN's native layout: the model and every batch it trains on are channels-last on a CPU (same values).
    trainer = Trainer(_config("ce", epochs=1), small_lt, model=tiny_net())
    convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    seen = []
    convs[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    trainer.train_epoch()
    assert seen and all(seen)


def test_a_users_network_is_checked_and_recorded_as_such(small_lt, tmp_path, tiny_net):
    too_few = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 5))  # 5 scores for 10 classes
    with pytest.raises(LazyAppsError, match="gives outputs of shape \\(2, 5\\) .* each of the dataset's 10 classes"):
        Trainer(_config("ce", epochs=1), small_lt, model=too_few)
    trainer = _trainer(_config("ce", epochs=1), small_lt, tmp_path / "u", tiny_net)
    trainer.run()
    meta = json.loads((tmp_path / "u" / "best.pt.json").read_text())
    assert meta["model"].startswith("custom:") and meta["normalized_head"] is False
    assert trainer.config.model == meta["model"]  # (the config is what the checkpoints record)
    resumed = _trainer(_config("ce", epochs=1), small_lt, tmp_path / "u", tiny_net)
    resumed.resume(tmp_path / "u" / "checkpoint.pt")  # its own checkpoint: the same network name
    from click.testing import CliRunner

    from lazyapps.cli import cli

    result = CliRunner().invoke(cli, ["longtail", "eval", "--checkpoint", str(tmp_path / "u" / "best.pt")])
    assert result.exit_code == 2 and "was trained with the user's own network" in result.output
    for kwargs, message in (({"lr_decay": (0.1,)}, "lr_decay must be two positive factors"),
                            ({"epochs": 2.5}, "--epochs must be a whole number, got 2.5")):
        with pytest.raises(LazyAppsError, match=message):
            TrainConfig(**{**_config("ce").__dict__, **kwargs}).check()


@pytest.mark.parametrize("method", ["ce", "two-component"])
def test_a_float64_network_trains_on_float64_batches(small_lt, tiny_net, method):
    trainer = Trainer(_config(method, epochs=2), small_lt, model=tiny_net().double())
    trainer.run()  # (float32 batches met float64 weights inside the first conv)
    assert trainer.last["top1_error"] is not None
    assert all(p.dtype == torch.float64 for p in trainer.model.parameters())


def test_resume_loads_on_the_cpu_and_takes_rng_states_back_there(small_lt, tmp_path, tiny_net, monkeypatch):
    # On a GPU a checkpoint loaded with map_location=<cuda> brings the CPU generator's state along as a CUDA
    # tensor, and torch.Generator.set_state / torch.set_rng_state refuse it ("RNG state must be a torch.ByteTensor").
    import longtail.trainer as trainer_module
    from lazyapps.checkpoint import load_checkpoint

    first = _trainer(_config("ce", epochs=2), small_lt, tmp_path / "run", tiny_net)
    first.train_epoch()
    first.epoch = 1
    first.save()
    seen = {}

    def spy(path, **kwargs):
        seen.update(kwargs)
        return load_checkpoint(path, **kwargs)

    monkeypatch.setattr(trainer_module, "load_checkpoint", spy)
    resumed = _trainer(_config("ce", epochs=2), small_lt, tmp_path / "run", tiny_net)
    resumed.resume(tmp_path / "run" / "checkpoint.pt")
    assert str(seen["map_location"]) == "cpu"

    class OffCPU:  # a state tensor on another device: only .cpu() gives the ByteTensor back
        def __init__(self, t):
            self.t = t

        def cpu(self):
            return self.t

    state, _ = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    expected = state["generator"].clone()
    state["generator"], state["torch_rng"] = OffCPU(state["generator"]), OffCPU(state["torch_rng"])
    resumed.load_state(state)
    assert torch.equal(resumed.generator.get_state(), expected)


def _scripted_errors(trainer, errors):
    """``trainer.evaluate`` with the real result but the top-1 error of epoch e (0-based) set to ``errors[e]``."""
    real = trainer.evaluate

    def scripted():
        return {**real(), "top1_error": errors[trainer.epoch]}

    trainer.evaluate = scripted


def test_best_is_the_lowest_error_and_best_pt_changes_only_when_it_improves_resume_included(small_lt, tmp_path, tiny_net, monkeypatch):
    import longtail.trainer as trainer_module
    from lazyapps.checkpoint import load_checkpoint, save_checkpoint

    errors = [50.0, 40.0, 45.0, 40.0]  # best: epoch 2 (a later tie is no improvement); epochs 3 and 4 are worse
    written, weights = [], {}

    def spy(path, state, meta=None):
        if path.name == "best.pt":
            written.append(meta["best_epoch"])
        return save_checkpoint(path, state, meta)

    monkeypatch.setattr(trainer_module, "save_checkpoint", spy)
    keep = lambda tr, row: weights.__setitem__(row["epoch"], {k: v.clone() for k, v in tr.model.state_dict().items()})  # noqa: E731
    out = tmp_path / "run"
    part = _trainer(_config("ce", epochs=4), small_lt, out, tiny_net)
    _scripted_errors(part, errors)
    real = part.evaluate

    def interrupted_in_epoch_3():  # Ctrl-C while epoch 3 is being scored: its training is done, its checkpoint not
        if part.epoch == 2:
            raise KeyboardInterrupt
        return real()

    part.evaluate = interrupted_in_epoch_3
    with pytest.raises(Interrupted, match="interrupted during epoch 3; the checkpoint of epoch 2"):
        part.run(on_epoch_end=keep)
    state, meta = load_checkpoint(out / "checkpoint.pt")
    assert meta["epochs_done"] == 2 and all(torch.equal(state["model"][k], weights[2][k]) for k in weights[2])
    resumed = _trainer(_config("ce", epochs=4), small_lt, out, tiny_net)
    resumed.resume(out / "checkpoint.pt")
    _scripted_errors(resumed, errors)
    resumed.run(on_epoch_end=keep)
    assert [r["top1_error"] for r in resumed.history] == errors
    assert resumed.best["epoch"] == 2 and resumed.best["top1_error"] == 40.0 and resumed.last["epoch"] == 4
    assert written == [1, 2]  # best.pt rewritten only when the error went down
    best, best_meta = load_checkpoint(out / "best.pt")
    assert best_meta["best_epoch"] == 2 and all(torch.equal(best["model"][k], weights[2][k]) for k in weights[2])


def test_every_training_step_runs_in_train_mode_whatever_mode_the_model_was_left_in(small_lt, tiny_net):
    trainer = Trainer(_config("ce", epochs=2), small_lt, model=tiny_net())
    trainer.model.eval()  # e.g. scored by the user (or an evaluation) before training goes on
    modes, original = [], trainer.method.loss

    def spy(ctx, x, y):
        modes.append(ctx.model.training)
        return original(ctx, x, y)

    trainer.method.loss = spy
    trainer.run()  # BatchNorm must train on batch statistics, not the running ones
    assert len(trainer.history) == 2 and modes and all(modes)


def test_ldam_drw_reweights_from_the_schedules_first_decay(small_lt, tiny_net):
    from longtail.methods import StepContext

    trainer = Trainer(_config("ldam-drw", epochs=10), small_lt, model=tiny_net())
    start = trainer.schedule.meta_start
    assert 0 < start < 10 and trainer.method.drw_start == start
    x, y = trainer.prepare_images(small_lt.train_images[:32]), small_lt.train_labels[:32]
    trainer.model.eval()
    loss = lambda epoch: float(trainer.method.loss(StepContext(trainer.model, 0.1, epoch), x, y).detach())  # noqa: E731
    assert loss(start - 1) == pytest.approx(loss(0)) and loss(start) != pytest.approx(loss(start - 1))


def test_epoch_times_split_plain_and_meta_epochs():
    from longtail.trainer import epoch_times

    history = [{"train_s": 1.0, "meta": False}, {"train_s": 3.0, "meta": False}, {"train_s": 8.0, "meta": True}]
    assert epoch_times(history) == {"epoch_s": 4.0, "plain_epoch_s": 2.0, "meta_epoch_s": 8.0}
    assert epoch_times(history[:2]) == {"epoch_s": 2.0, "plain_epoch_s": 2.0, "meta_epoch_s": None}


def test_resume_restores_the_global_random_stream_a_dropout_network_draws_from(small_lt, tmp_path, tiny_net):
    def dropout_net():
        net = tiny_net()
        return torch.nn.Sequential(*list(net)[:-1], torch.nn.Dropout(0.5), net[-1])

    config = _config("ce", epochs=3)
    full = Trainer(config, small_lt, out_dir=tmp_path / "full", model=dropout_net())
    full.run()
    part = Trainer(config, small_lt, out_dir=tmp_path / "part", model=dropout_net())
    original = part.method.loss

    def interrupting(*args, **kwargs):
        if part.epoch == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    part.method.loss = interrupting
    with pytest.raises(Interrupted):
        part.run()
    torch.manual_seed(123)  # whatever the process drew meanwhile
    resumed = Trainer(config, small_lt, out_dir=tmp_path / "part", model=dropout_net())
    resumed.resume(tmp_path / "part" / "checkpoint.pt")
    resumed.run()
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_an_epochs_train_loss_is_the_mean_over_its_examples_of_each_batchs_loss(small_lt, tiny_net):
    trainer = Trainer(_config("ce", epochs=1), small_lt, model=tiny_net())
    batches, original = [], trainer.method.loss

    def spy(ctx, x, y):
        loss = original(ctx, x, y)
        batches.append((float(loss.detach()), len(y)))
        return loss

    trainer.method.loss = spy
    row = trainer.train_epoch()
    sizes = [n for _, n in batches]
    assert len(batches) > 1 and sum(sizes) == len(small_lt.train_labels) and len(set(sizes)) == 2  # a short last batch
    assert row["train_loss"] == pytest.approx(sum(l * n for l, n in batches) / sum(sizes), rel=1e-12)


@pytest.mark.parametrize("during", ["checkpoint.pt", "best.pt"])
def test_ctrl_c_while_an_epochs_files_are_written_names_the_epoch_on_disk_and_best_pt_keeps_up(
        small_lt, tmp_path, tiny_net, monkeypatch, during):
    import longtail.trainer as trainer_module
    from lazyapps.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    part = _trainer(_config("ce", epochs=3), small_lt, out, tiny_net)
    _scripted_errors(part, [50.0, 40.0, 45.0])  # epoch 2 improves: it writes best.pt and checkpoint.pt

    def interrupted_in_epoch_2(path, state, meta=None):
        if part.epoch == 2 and path.name == during:
            raise KeyboardInterrupt
        return save_checkpoint(path, state, meta)

    monkeypatch.setattr(trainer_module, "save_checkpoint", interrupted_in_epoch_2)
    with pytest.raises(Interrupted, match="interrupted during epoch 2; the checkpoint of epoch 1 is kept"):
        part.run()
    assert load_checkpoint(out / "checkpoint.pt")[1]["epochs_done"] == 1
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_checkpoint)
    resumed = _trainer(_config("ce", epochs=3), small_lt, out, tiny_net)
    resumed.resume(out / "checkpoint.pt")
    _scripted_errors(resumed, [50.0, 40.0, 45.0])
    resumed.run()
    assert resumed.best["epoch"] == 2
    assert load_checkpoint(out / "best.pt")[1]["best_epoch"] == 2  # the weights the run calls its best


def test_ctrl_c_while_the_first_checkpoint_is_written_says_none_was(small_lt, tmp_path, tiny_net, monkeypatch):
    import longtail.trainer as trainer_module
    from lazyapps.checkpoint import save_checkpoint

    def interrupted(path, state, meta=None):
        if path.name == "checkpoint.pt":
            raise KeyboardInterrupt
        return save_checkpoint(path, state, meta)

    monkeypatch.setattr(trainer_module, "save_checkpoint", interrupted)
    part = _trainer(_config("ce", epochs=2), small_lt, tmp_path / "run", tiny_net)
    with pytest.raises(Interrupted, match="interrupted during epoch 1; no epoch's checkpoint was written") as info:
        part.run()
    assert "--resume" not in str(info.value) and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_refuses_a_two_component_run_whose_meta_epochs_took_the_mean_form_step(small_lt, tmp_path, tiny_net):
    # Written before the virtual step followed Jamal et al.'s summed loss, such a checkpoint records no form.
    config = _config("two-component", epochs=2)
    trainer = _trainer(config, small_lt, tmp_path, tiny_net)
    trainer.run()
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert state["method"] == {"virtual_reduction": "sum"} and state["history"][-1]["meta"]
    _trainer(config, small_lt, tmp_path, tiny_net).resume(path)  # its own checkpoint goes on
    state["method"] = {}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"cannot resume .*checkpoint.pt: its meta epochs took the virtual step on "
                                              r"the mean loss.*start a new run with another --out$"):
        _trainer(config, small_lt, tmp_path, tiny_net).resume(path)
    state["history"] = [dict(row, meta=False) for row in state["history"]]  # no meta epoch yet: nothing to mix
    torch.save(state, path)
    _trainer(config, small_lt, tmp_path, tiny_net).resume(path)


def test_meta_weight_nets_mlp_starts_from_the_runs_seed_whatever_the_process_drew_before(small_lt, tiny_net):
    """The benchmark builds trainers one after another in one process: the MLP must not depend on what ran first."""
    first = [], []
    for draw, seeds in zip((1, 2), first):
        torch.manual_seed(draw)
        torch.rand(draw * 10)
        trainer = Trainer(_config("meta-weight-net", seed=3), small_lt, model=tiny_net())
        seeds.extend(p.detach().clone() for p in trainer.method.weight_net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(*first))
    other = Trainer(_config("meta-weight-net", seed=4), small_lt, model=tiny_net())
    assert not torch.equal(next(other.method.weight_net.parameters()), first[0][0])


def test_a_zoo_network_starts_from_the_runs_seed_whatever_the_method_or_the_process_drew_before(small_lt):
    # "the same initial weights for every method of a seed": methods are compared from one initialisation, and
    # a run is reproducible from its seed alone (not from what the process drew before the trainer was built)
    def initial(method, seed, drawn):
        torch.manual_seed(drawn)
        config = TrainConfig(dataset="cifar10", imbalance=10, method=method, epochs=10, batch_size=32, n_max=30,
                             test_per_class=5, model="resnet32", seed=seed)
        return Trainer(config, small_lt).model.state_dict()

    a, b, other = initial("ce", 3, 100), initial("cb-ce", 3, 200), initial("ce", 4, 100)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)  # the seed is what decides them


def test_the_meta_phase_starts_at_the_schedules_first_decay_epoch(small_lt, tiny_net):
    # the epoch meta_start itself is a meta epoch (the validation batch reaches the method), the one before is not
    trainer = Trainer(_config("l2rw", epochs=10), small_lt, model=tiny_net())
    start = trainer.schedule.meta_start
    assert start == 8
    seen, sizes, original = [], [], trainer.method.loss

    def spy(ctx, x, y):
        seen.append((ctx.epoch, ctx.val_inputs is not None))
        if ctx.val_inputs is not None:  # a batch of --batch-size distinct validation images, not the whole set
            sizes.append((len(ctx.val_inputs), len(ctx.val_targets), len(torch.unique(ctx.val_inputs.flatten(1), dim=0))))
        return original(ctx, x, y)

    trainer.method.loss = spy
    rows = []
    for epoch in (start - 1, start):
        trainer.epoch = epoch
        rows.append(trainer.train_epoch())
    assert [(r["epoch"], r["meta"]) for r in rows] == [(start, False), (start + 1, True)]
    assert {e: v for e, v in seen} == {start - 1: False, start: True} and "meta_val_loss" in rows[1]
    assert len(small_lt.val_labels) > 32 and sizes and set(sizes) == {(32, 32, 32)}


def test_an_epoch_is_sgd_at_the_schedules_lr_on_shuffled_augmented_batches(small_lt, tiny_net):
    """One epoch against a hand-written loop: batches in the order of the run's seeded generator, cropped and flipped
    from that same stream, normalised, cross-entropy, SGD with the config's momentum and weight decay at lr_at(epoch)."""
    import torch.nn.functional as F

    from longtail.augment import normalize, random_crop_flip

    config = _config("ce", epochs=60, momentum=0.5, weight_decay=0.01)  # 2 warm-up epochs: the first runs at lr 0.05
    trainer = Trainer(config, small_lt, model=tiny_net().double())  # (float64: the comparison can be tight)
    reference = tiny_net().double()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.5, weight_decay=0.01)
    for idx in torch.randperm(len(small_lt.train_labels), generator=generator).split(config.batch_size):
        x = normalize(random_crop_flip(small_lt.train_images[idx], generator=generator), small_lt.mean, small_lt.std)
        loss = F.cross_entropy(reference(x.double()), small_lt.train_labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    row = trainer.train_epoch()
    assert row["lr"] == 0.05 and trainer.optimizer.param_groups[0]["lr"] == 0.05
    for (k, want), (_, got) in zip(reference.state_dict().items(), trainer.model.state_dict().items()):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=k)


def test_a_data_split_without_test_images_is_refused(small_lt, tiny_net):
    from dataclasses import replace

    empty = replace(small_lt, test_images=small_lt.test_images[:0], test_labels=small_lt.test_labels[:0])
    with pytest.raises(LazyAppsError, match="cifar10 has no test images; every epoch is scored on the test split"):
        Trainer(_config("ce"), empty, model=tiny_net())


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 1}, "--batch-size must be >= 2 \\(BatchNorm needs a batch\\), got 1"),
    ({"lr_decay": (0.0, 0.01)}, "lr_decay must be two positive factors"),
    ({"lr_decay": (0.1, float("inf"))}, "lr_decay must be two positive factors"),
    ({"epochs": True}, "--epochs must be a whole number, got True"),
    ({"method": "lazy-two-component", "inner_steps": 33}, "--inner-steps 33 is more than --batch-size 32"),
])
def test_config_check_refuses_settings_out_of_range(kwargs, message):
    with pytest.raises(LazyAppsError, match=message):
        TrainConfig(**{**_config("ce").__dict__, **kwargs}).check()


def test_config_check_takes_as_many_student_steps_as_batch_rows():
    TrainConfig(**{**_config("lazy-two-component").__dict__, "inner_steps": 32}).check()  # one row per slice


def test_resume_refuses_a_checkpoint_made_with_other_training_settings(small_lt, tmp_path, tiny_net):
    # Each of these changes the run's numbers: resuming under another would mix two runs in one checkpoint.
    config = _config("lazy-two-component")
    Trainer(config, small_lt, out_dir=tmp_path, model=tiny_net()).save()
    for key, value in (("batch_size", 16), ("epochs", 20), ("inner_steps", 3), ("gammas", (0.8, 0.9)), ("inner_lr", 0.01),
                       ("eps_rule", "normalized"), ("lr", 0.05), ("momentum", 0.8), ("weight_decay", 1e-3), ("seed", 1)):
        other = Trainer(TrainConfig(**{**config.__dict__, key: value}), small_lt, model=tiny_net())
        with pytest.raises(CheckpointError, match=f"was made with {key}=.*, but {key}=.* is needed here"):
            other.resume(tmp_path / "checkpoint.pt")


def test_resume_refuses_a_weights_only_file_even_without_a_best_epoch_in_its_metadata(tmp_path):
    from longtail.trainer import refuse_best_checkpoint

    with pytest.raises(CheckpointError, match="holds only the best epoch's weights; resume from the run's checkpoint.pt"):
        refuse_best_checkpoint(tmp_path / "weights.pt", {"kind": "longtail-train"}, {"model": {}})
    refuse_best_checkpoint(tmp_path / "checkpoint.pt", {"kind": "longtail-train"}, {"model": {}, "optimizer": {}})


def test_ldams_cosine_head_is_resnet32s_alone(small_lt):
    # another zoo network keeps its linear head (it takes no normalized_head option), and its checkpoint says so,
    # so the eval command rebuilds it as trained
    for model, cosine in (("lenet5", False), ("resnet32", True)):
        trainer = Trainer(TrainConfig(**{**_config("ldam-drw").__dict__, "model": model}), small_lt)
        assert any(type(m).__name__ == "NormedLinear" for m in trainer.model.modules()) == cosine
        assert trainer.metadata()["normalized_head"] is cosine


def test_a_method_without_meta_steps_has_no_meta_epochs(small_lt, tiny_net):
    # (the history's meta flag splits the reported epoch times; ce's late epochs are plain ones)
    trainer = Trainer(_config("ce", epochs=10), small_lt, model=tiny_net())
    trainer.epoch = trainer.schedule.meta_start
    assert trainer.train_epoch()["meta"] is False
