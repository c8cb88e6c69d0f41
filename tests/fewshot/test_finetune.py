"""The ``finetune`` transfer baseline: pre-training learns the global classes, adaptation starts from a fresh head."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models_zoo
from fewshot import create_learner
from fewshot.experiment import load_learner, save_learner
from fewshot.learners.baselines import fit_linear_heads
from fewshot.tasks import EpisodeSampler
from lazyapps.errors import LazyAppsError

CLASSES, SIZE = 8, 16


def _class_images(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c: a bright c-th horizontal band on noise (uint8), so the classes are learnable but not trivial."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 100, (CLASSES * per_class, 1, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    for i, c in enumerate(labels.tolist()):
        images[i, 0, 2 * c: 2 * c + 2] = 255
    return images, labels


def _sampler(**kw) -> EpisodeSampler:
    images, labels = _class_images(6, seed=0)
    return EpisodeSampler(images, labels, **{"ways": 3, "shots": 1, "queries": 2, "seed": 1, **kw})


def _learner(**hp):
    torch.manual_seed(0)
    model = models_zoo.create("conv4", num_classes=3, in_channels=1, image_size=SIZE, hidden=8)
    return create_learner("finetune", model, vectorize=False, **hp)


def test_task_batches_name_each_labels_global_class() -> None:
    # Each image of class c has its bright band at rows 2c, 2c+1: read the class back from the pixels.
    for shuffle in (True, False):
        tasks = _sampler(shuffle_classes=shuffle).sample(4)
        for x, y in (tasks.support, tasks.query):
            band = x[..., 0].argmax(-1).squeeze(-1) // 2  # (T, rows): first bright row // 2 = class
            assert torch.equal(tasks.classes.gather(1, y), band)
        assert torch.equal(tasks.select(slice(1, 3)).classes, tasks.classes[1:3])


def _global_accuracy(learner) -> float:
    """Accuracy over all 8 classes of the network with the global head, on fresh images of every class."""
    images, labels = _class_images(3, seed=7)
    params = learner._with_head(learner.pretrain_head.weight, learner.pretrain_head.bias)
    with torch.no_grad():
        logits = torch.func.functional_call(learner.model, params, (images.float() / 255,))
    assert logits.shape == (len(labels), CLASSES)
    return float((logits.argmax(1) == labels).float().mean())


def test_pretraining_learns_the_global_classes() -> None:
    source = _sampler()
    learner = _learner(meta_lr=1e-2)
    learner.prepare(source)
    assert learner.pretrain_classes == CLASSES and learner.pretrain_head.out_features == CLASSES
    untrained = _global_accuracy(learner)
    learner.meta_train(source, iterations=15, meta_batch=4)
    trained = _global_accuracy(learner)
    assert untrained < 0.35 and trained > 0.6, (untrained, trained)  # chance is 1/8


def test_adaptation_starts_from_a_fresh_zero_head_whatever_the_models_head_holds() -> None:
    source = _sampler()
    tasks = source.sample(2)
    for freeze in (True, False):
        learner = _learner(eval_inner_steps=0, freeze_body=freeze)
        learner.prepare(source)
        fast = learner.adapt(tasks.support)
        assert not fast["head.weight"].any() and not fast["head.bias"].any()
        assert fast["head.weight"].shape == (2, 3, 8)
        for name, p in learner.theta.items():
            if not name.startswith("head."):
                assert torch.equal(fast[name][1], p.detach()), name
        learner.eval_inner_steps = 5
        before = learner.adapt(tasks.support)
        with torch.no_grad():  # the model's own (stale) N-way head must not matter
            learner.model.head.weight.normal_()
            learner.model.head.bias.normal_()
        after = learner.adapt(tasks.support)
        assert all(torch.allclose(before[k], after[k]) for k in before)
        assert before["head.weight"].abs().sum() > 0
        body_moved = any(not torch.allclose(before[k][0], learner.theta[k]) for k in before if not k.startswith("head."))
        assert body_moved is (not freeze)


def _head_by_torch_sgd(feats: torch.Tensor, labels: torch.Tensor, *, classes: int, steps: int, lr: float) -> torch.nn.Linear:
    """The reference: a zero-initialised linear head after ``steps`` full-batch ``torch.optim.SGD`` steps on (feats, labels)."""
    head = torch.nn.Linear(feats.shape[-1], classes, dtype=feats.dtype)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(feats), labels).backward()
        opt.step()
    return head


def test_linear_heads_match_a_per_task_sgd_reference() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]]).repeat(3, 1)
    w, b = fit_linear_heads(feats, labels, classes=3, steps=7, lr=0.3)
    for t in range(3):
        head = _head_by_torch_sgd(feats[t], labels[t], classes=3, steps=7, lr=0.3)
        assert torch.allclose(w[t], head.weight) and torch.allclose(b[t], head.bias)


def test_a_frozen_body_fits_the_head_by_inner_lr_sgd_steps_on_the_support_features() -> None:
    """freeze_body: each task's head is eval_inner_steps full-batch SGD steps of inner_lr from zero on the features of
    its support set (the conv4 body's output, the support set as one BatchNorm batch), as torch's SGD takes them."""
    source = _sampler()
    tasks = source.sample(2)
    learner = _learner(inner_lr=0.5, eval_inner_steps=3)
    learner.prepare(source)
    fast = learner.adapt(tasks.support)
    for t in range(2):
        with torch.no_grad():
            feats = learner.model.features(tasks.support_x[t])
        head = _head_by_torch_sgd(feats, tasks.support_y[t], classes=3, steps=3, lr=0.5)
        torch.testing.assert_close(fast["head.weight"][t], head.weight.detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fast["head.bias"][t], head.bias.detach(), rtol=1e-4, atol=1e-6)


def test_a_pretraining_step_scores_every_support_and_query_image_under_its_global_label() -> None:
    """The pre-training loss is the mean cross-entropy over all the meta-batch's images, support and query, of the
    global head's logits against each image's global class (a task's images forwarded as one batch)."""
    source = _sampler()
    learner = _learner()
    learner.prepare(source)
    tasks = source.sample(3)
    params = learner._with_head(learner.pretrain_head.weight, learner.pretrain_head.bias)
    total, count = 0.0, 0
    with torch.no_grad():
        for t in range(3):
            x = torch.cat([tasks.support_x[t], tasks.query_x[t]])
            y = tasks.classes[t][torch.cat([tasks.support_y[t], tasks.query_y[t]])]
            total += float(F.cross_entropy(torch.func.functional_call(learner.model, params, (x,)), y, reduction="sum"))
            count += len(y)
    assert count == 3 * (3 + 6)
    assert learner.meta_step(tasks)["loss"] == pytest.approx(total / count, rel=1e-5)


def test_a_global_head_of_fewer_than_two_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="pretrain_classes must be >= 2, got 1"):
        _learner(pretrain_classes=1)


def test_finetune_defaults_are_the_documented_ones() -> None:
    """docs/fewshot.md: Adam 1e-3 pre-training; the fresh head takes 100 full-batch steps of lr 0.1; on sine the whole
    pre-trained network is fine-tuned with 10 steps of lr 0.01 (Finn et al.'s sine baseline)."""
    learner = _learner()
    assert (learner.eval_inner_steps, learner.inner_lr, learner.meta_optimizer.defaults["lr"]) == (100, 0.1, 1e-3)
    cls = type(learner)
    assert cls.paper_defaults(dataset="sine", ways=1, shots=5) == {"inner_lr": 0.01, "eval_inner_steps": 10}
    assert cls.paper_defaults(dataset="omniglot", ways=5, shots=1) == {}


def test_checkpoint_keeps_the_global_head_and_refuses_another_class_count(tmp_path, monkeypatch) -> None:
    import fewshot.experiment as experiment

    source = _sampler()
    learner = _learner()
    learner.meta_train(source, iterations=2, meta_batch=2)
    path = tmp_path / "ft.pt"
    meta = {"kind": "fewshot", "algo": "finetune", "arch": "conv4", "dataset": "omniglot", "ways": 3, "shots": 1,
            "hparams": learner.hparams()}
    assert meta["hparams"]["pretrain_classes"] == CLASSES
    save_learner(path, learner, meta)
    # The metadata names Omniglot's conv4; rebuild the slim test network instead.
    monkeypatch.setattr(experiment, "build_model", lambda arch, **kw: models_zoo.create(
        "conv4", num_classes=3, in_channels=1, image_size=SIZE, hidden=8))
    loaded, _, _ = load_learner(path)
    assert loaded.pretrain_classes == CLASSES and torch.equal(loaded.pretrain_head.weight, learner.pretrain_head.weight)
    saved_state, loaded_state = learner.meta_optimizer.state_dict(), loaded.meta_optimizer.state_dict()
    assert len(loaded_state["param_groups"]) == 2 and saved_state["state"].keys() == loaded_state["state"].keys()
    images, labels = _class_images(6, seed=0)
    other = EpisodeSampler(images[labels < 5], labels[labels < 5], ways=3, shots=1, queries=2)
    with pytest.raises(LazyAppsError, match="pre-trained on 8 classes, but the meta-training tasks have 5"):
        loaded.prepare(other)
    # A fresh learner given another count was never pre-trained: the count is what to fix, not the dataset
    with pytest.raises(LazyAppsError, match=r"^pretrain_classes=5 does not match the meta-training tasks' 8 classes; give "
                                            r"pretrain_classes=8 or leave it out \(it is read from the tasks\)$"):
        _learner(pretrain_classes=5).prepare(source)


def test_tasks_without_global_classes_are_refused() -> None:
    source = _sampler()
    learner = _learner()
    learner.prepare(source)
    tasks = source.sample(1)
    from fewshot.tasks import TaskBatch

    with pytest.raises(LazyAppsError, match="carry none"):
        learner.meta_step(TaskBatch(*tasks.support, *tasks.query))


def test_cli_trains_resumes_and_evaluates_finetune_on_omniglot(tmp_path, data_root, session_cache) -> None:
    import json

    from click.testing import CliRunner

    from lazyapps.cli import cli

    here = ["--data-dir", str(data_root), "--cache-dir", str(session_cache), "--device", "cpu", "--quiet"]
    train = ["fewshot", "train", "--algo", "finetune", "--preset", "smoke", "--no-vectorize", "--out", str(tmp_path / "run"), *here]
    result = CliRunner().invoke(cli, train)
    assert result.exit_code == 0, result.output
    ckpt = tmp_path / "run" / "checkpoint.pt"
    meta = json.loads((tmp_path / "run" / "checkpoint.pt.json").read_text())
    assert meta["hparams"]["pretrain_classes"] == 4800 and meta["iteration"] == 3  # 1,200 characters x 4 rotations
    result = CliRunner().invoke(cli, [*train, "--resume", str(ckpt), "--iterations", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "checkpoint.pt.json").read_text())["iteration"] == 4
    result = CliRunner().invoke(cli, ["fewshot", "eval", "--checkpoint", str(ckpt), "--tasks", "3", "--json", str(tmp_path / "e.json"), *here])
    assert result.exit_code == 0, result.output
    test = json.loads((tmp_path / "e.json").read_text())["metrics"]["test"]
    assert test["tasks"] == 3 and 0 <= test["mean"] <= 100


def test_load_learner_reads_the_checkpoint_on_the_cpu(tmp_path, monkeypatch) -> None:
    # Loaded onto a GPU, Adam's "step" counters would stay there (torch keeps them where they are loaded) and
    # every later Adam step would read each back with .item(); load_state_dict moves everything else itself.
    import fewshot.experiment as experiment

    source = _sampler()
    learner = _learner()
    learner.meta_train(source, iterations=1, meta_batch=2)
    path = tmp_path / "ft.pt"
    save_learner(path, learner, {"kind": "fewshot", "algo": "finetune", "arch": "conv4", "dataset": "omniglot",
                                 "ways": 3, "shots": 1, "hparams": learner.hparams()})
    monkeypatch.setattr(experiment, "build_model", lambda arch, **kw: models_zoo.create(
        "conv4", num_classes=3, in_channels=1, image_size=SIZE, hidden=8))
    seen = {}
    real = experiment.load_checkpoint

    def spy(p, **kwargs):
        seen.update(kwargs)
        return real(p, **kwargs)

    monkeypatch.setattr(experiment, "load_checkpoint", spy)
    load_learner(path, device=torch.device("cpu", 0))  # (any device: the checkpoint is read on the CPU all the same)
    assert seen["map_location"] == "cpu"


def test_default_finetune_trains_only_the_head() -> None:
    """Chen et al.'s Baseline (the documented default): the body stays as pre-trained, only a fresh head learns."""
    source = _sampler()
    tasks = source.sample(2)
    learner = _learner(eval_inner_steps=5)
    assert learner.freeze_body is True
    learner.prepare(source)
    fast = learner.adapt(tasks.support)
    assert fast["head.weight"].abs().sum() > 0
    for name, p in learner.theta.items():
        if not name.startswith("head."):
            assert all(torch.equal(fast[name][t], p.detach()) for t in range(2)), name


def test_freeze_body_is_recorded_as_done_and_refused_for_regression() -> None:
    """Classification freezes the body by default; sine fine-tunes the whole network and records so (it recorded
    True before, which it never did); asking sine to freeze it is one clear error, not silently ignored."""
    sine = models_zoo.create("sine_mlp", num_classes=1, in_channels=1)
    regression = create_learner("finetune", sine, problem="regression")
    assert regression.freeze_body is False and regression.hparams()["freeze_body"] is False
    assert "zero_head" not in regression.hparams() and "zero_head" not in regression.hparam_names()
    assert _learner().hparams()["freeze_body"] is True and _learner(freeze_body=False).freeze_body is False
    with pytest.raises(ValueError, match="freeze_body is for classification"):
        create_learner("finetune", sine, problem="regression", freeze_body=True)
    # The whole network adapts on sine: every parameter moves from the pre-trained one.
    x = torch.linspace(-5, 5, 10).reshape(1, 10, 1)
    fast = regression.adapt((x, torch.sin(x)))
    assert all(not torch.equal(fast[k][0], p.detach()) for k, p in regression.theta.items())


def test_checkpoints_of_older_versions_load_without_their_inapplicable_records(tmp_path, monkeypatch) -> None:
    """Before, finetune's metadata recorded zero_head=false, and sine's freeze_body=true: both still load, as what they
    were (on sine a whole-network fine-tune); a classification checkpoint's freeze_body is kept as recorded."""
    import fewshot.experiment as experiment
    from fewshot.experiment import build_learner

    sine = build_learner("finetune", dataset="sine", ways=1)
    path = tmp_path / "sine.pt"
    save_learner(path, sine, {"kind": "fewshot", "algo": "finetune", "arch": "sine_mlp", "dataset": "sine", "ways": 1,
                              "shots": 5, "hparams": {**sine.hparams(), "zero_head": False, "freeze_body": True}})
    loaded, _, _ = load_learner(path)
    assert loaded.freeze_body is False and loaded.hparams() == sine.hparams()

    learner = _learner(freeze_body=False)
    learner.meta_train(_sampler(), iterations=1, meta_batch=2)
    path = tmp_path / "ft.pt"
    save_learner(path, learner, {"kind": "fewshot", "algo": "finetune", "arch": "conv4", "dataset": "omniglot", "ways": 3,
                                 "shots": 1, "hparams": {**learner.hparams(), "zero_head": False}})
    monkeypatch.setattr(experiment, "build_model", lambda arch, **kw: models_zoo.create(
        "conv4", num_classes=3, in_channels=1, image_size=SIZE, hidden=8))
    loaded, _, _ = load_learner(path)
    assert loaded.freeze_body is False and loaded.hparams() == learner.hparams()
