"""Learners: batched (vmap) vs. looped meta-gradients, MAML against finite differences, BN modes, the registry, the zeroing trick."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import models_zoo
from fewshot import create_learner, get_learner
from fewshot.base import confidence_interval
from fewshot.tasks import TaskBatch
from lazyapps.errors import UnknownNameError


def _tasks(num_tasks=3, ways=3, shots=2, queries=2, size=16, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).expand(num_tasks, -1).clone()  # noqa: E731
    return TaskBatch(torch.rand(num_tasks, ways * shots, 1, size, size, generator=g), labels(shots),
                     torch.rand(num_tasks, ways * queries, 1, size, size, generator=g), labels(queries))


def _conv(seed=0, arch="conv4"):
    torch.manual_seed(seed)
    return models_zoo.create(arch, num_classes=3, in_channels=1, image_size=16, hidden=8)


def _grads_of(learner, tasks):
    if learner.name == "lazy-maml":
        _, grads, _, leaps = learner.meta_gradient(tasks)
        return grads, [leap.gamma for leap in leaps]
    return learner.meta_gradient(tasks).grads, None


@pytest.mark.parametrize("algo,hp,arch", [("maml", {"inner_steps": 2, "inner_lr": 0.4}, "conv4"),
                                          ("fomaml", {"inner_steps": 2}, "conv4"),
                                          ("lazy-maml", {"inner_steps": 11, "last": 3, "weight_step": 1.0}, "conv4"),
                                          ("maml", {"inner_steps": 2, "inner_lr": 0.4}, "conv4-strided")])
def test_vmapped_and_looped_meta_gradients_agree(algo, hp, arch) -> None:
    tasks = _tasks(num_tasks=2)
    out = []
    for vectorize in (True, False):
        learner = create_learner(algo, _conv(arch=arch), vectorize=vectorize, **hp)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a silent fallback to the loop would make this test vacuous
            out.append(_grads_of(learner, tasks))
    (g_vec, gam_vec), (g_loop, gam_loop) = out
    assert gam_vec == gam_loop
    for k in g_vec:
        assert torch.allclose(g_vec[k], g_loop[k], atol=1e-5, rtol=1e-4), k
    assert any(float(v.abs().max()) > 0 for v in g_vec.values())


def test_maml_meta_gradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    model = models_zoo.create("sine_mlp", num_classes=1, in_channels=1, hidden=6).double()
    learner = create_learner("maml", model, problem="regression", inner_lr=0.05, inner_steps=2)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 8, 1, generator=g, dtype=torch.float64) * 10 - 5
    tasks = TaskBatch(x[:, :4], torch.sin(x[:, :4]), x[:, 4:], torch.sin(x[:, 4:]))
    grads = learner.meta_gradient(tasks).grads

    def meta_loss() -> float:
        return float(learner.meta_gradient(tasks).loss)

    name = "layers.0.weight"
    param = dict(model.named_parameters())[name]
    for idx in [(0, 0), (3, 0)]:
        with torch.no_grad():
            old = param[idx].item()
            param[idx] = old + 1e-6
            up = meta_loss()
            param[idx] = old - 1e-6
            down = meta_loss()
            param[idx] = old
        assert abs((up - down) / 2e-6 - float(grads[name][idx])) < 1e-6 * max(1.0, abs(float(grads[name][idx])))
    # The second-order terms matter: FOMAML's gradient differs.
    fo = create_learner("fomaml", model, problem="regression", inner_lr=0.05, inner_steps=2).meta_gradient(tasks).grads
    assert not torch.allclose(fo[name], grads[name], atol=1e-8)


def test_reptile_batched_sgd_inner_loop_equals_loop() -> None:
    tasks = _tasks()
    thetas = []
    for vectorize in (True, False):
        learner = create_learner("reptile", _conv(), inner_optimizer="sgd", inner_lr=0.1, inner_steps=3, inner_batch=4, vectorize=vectorize)
        learner.total_iterations = 10
        torch.manual_seed(5)  # the same minibatch shuffle for both paths
        learner.meta_step(tasks)
        thetas.append({k: v.detach().clone() for k, v in learner.theta.items()})
    start = dict(_conv().named_parameters())
    for k in thetas[0]:
        assert torch.allclose(thetas[0][k], thetas[1][k], atol=1e-5), k
    assert any(not torch.allclose(thetas[0][k], start[k]) for k in start)


def test_lazy_reptile_moves_theta_towards_the_leaps() -> None:
    tasks = _tasks()
    learner = create_learner("lazy-reptile", _conv(), inner_steps=11, inner_lr=0.1, meta_step_size=1.0, gammas=(0.8,))
    learner.total_iterations = 1
    before = {k: v.detach().clone() for k, v in learner.theta.items()}
    from fewshot.learners.lazy_maml import student_checkpoints

    phi_k = student_checkpoints(learner, tasks.support, steps=11, lr=0.1, keep_last=1)[0]
    learner.meta_step(tasks)
    for k, v in learner.theta.items():
        # θ' = θ − (1/T) Σ (θ − (0.8θ + 0.2φ_k)) = θ + 0.2·mean(φ_k − θ)
        expected = before[k] + 0.2 * (phi_k[k] - before[k]).mean(0)
        assert torch.allclose(v, expected, atol=1e-6), k


def test_lazy_reptile_minibatch_student_takes_plain_sgd_steps_on_its_minibatches() -> None:
    from fewshot.learners.lazy_maml import student_checkpoints
    from fewshot.learners.reptile import minibatches

    tasks = _tasks(num_tasks=2, shots=3)
    learner = create_learner("lazy-reptile", _conv(), inner_steps=4, inner_batch=4, inner_lr=0.1)
    torch.manual_seed(3)
    x, y, rows = minibatches(*tasks.support, batch=4, steps=4)
    assert [len(r) for r in rows] == [4] * 4 and set(torch.cat(rows[:2]).tolist()) | set(rows[2][:1].tolist()) == set(range(9))
    for vectorize in (True, False):
        learner.vectorize = vectorize
        kept = student_checkpoints(learner, (x, y), steps=4, lr=0.1, keep_last=2, rows=rows)
        for t in range(2):  # reference: a hand-written SGD loop over the same minibatches
            p = {k: v.detach().clone() for k, v in learner.theta.items()}
            expected = []
            for r in rows:
                p = {k: v.requires_grad_() for k, v in p.items()}
                loss = F.cross_entropy(torch.func.functional_call(learner.model, p, (x[t][r],)), y[t][r])
                g = torch.autograd.grad(loss, list(p.values()))
                p = {k: (v - 0.1 * gk).detach() for (k, v), gk in zip(p.items(), g)}
                expected.append(p)
            for got, want in zip(kept, expected[-2:]):
                for k in want:
                    assert torch.allclose(got[k][t], want[k], atol=1e-5), (vectorize, t, k)


def test_lazy_reptile_minibatch_student_batched_equals_loop() -> None:
    tasks = _tasks(num_tasks=2, shots=3)
    thetas = []
    for vectorize in (True, False):
        learner = create_learner("lazy-reptile", _conv(), inner_steps=11, inner_batch=4, inner_lr=0.1, vectorize=vectorize)
        learner.total_iterations = 10
        torch.manual_seed(5)  # the same minibatch shuffle for both paths
        learner.meta_step(tasks)
        thetas.append({k: v.detach().clone() for k, v in learner.theta.items()})
    for k in thetas[0]:
        assert torch.allclose(thetas[0][k], thetas[1][k], atol=1e-5), k
    with pytest.raises(ValueError, match="inner_batch"):
        create_learner("lazy-reptile", _conv(), inner_batch=0)


def test_non_transductive_bn_scores_each_query_with_the_support_set() -> None:
    tasks = _tasks(num_tasks=2)
    learner = create_learner("maml", _conv(), transductive=False)
    fast = learner.adapt(tasks.support)
    with torch.no_grad():
        out = learner.predict(fast, tasks.support_x, tasks.query_x)
        learner.transductive = True
        trans = learner.predict(fast, tasks.support_x, tasks.query_x)
        for t in range(2):
            p = {k: v[t] for k, v in fast.items()}
            for q in range(tasks.query_x.shape[1]):
                batch = torch.cat([tasks.support_x[t], tasks.query_x[t, q:q + 1]])
                ref = torch.func.functional_call(learner.model, p, (batch,))[-1]
                assert torch.allclose(out[t, q], ref, atol=1e-5)
                assert torch.allclose(trans[t], torch.func.functional_call(learner.model, p, (tasks.query_x[t],)), atol=1e-5)
    assert not torch.allclose(out, trans, atol=1e-4)


def test_evaluate_reports_mean_and_95_percent_interval() -> None:
    values = torch.tensor([80.0, 100.0, 60.0, 100.0])
    mean, ci = confidence_interval(values)
    assert mean == 85.0 and abs(ci - 1.96 * (1100 / 3) ** 0.5 / 2) < 1e-9  # sample std by hand
    assert confidence_interval(torch.tensor([1.0, 3.0])) == pytest.approx((2.0, 1.96))  # two tasks: std √2, n 2
    assert confidence_interval(torch.tensor([7.0])) == (7.0, 0.0)
    learner = create_learner("scratch", _conv(), eval_inner_steps=1)
    ev = learner.evaluate([_tasks(seed=1), _tasks(seed=2)])
    assert ev.tasks == 6 and ev.metric == "accuracy" and ev.transductive is True and 0 <= ev.mean <= 100


def test_a_task_whose_adaptation_diverged_scores_nan_accuracy_not_chance() -> None:
    """NaN logits have argmax 0, a chance accuracy that would hide the divergence: such tasks score NaN, as in MSE."""
    from fewshot.base import task_scores

    logits = torch.zeros(3, 4, 2)
    logits[:, :, 1] = 1.0  # every query classified as class 1
    logits[1, 2, 0] = float("nan")  # one non-finite logit spoils task 1
    logits[2] = float("inf")
    targets = torch.tensor([[1, 1, 0, 0]] * 3)
    scores = task_scores("classification", logits, targets)
    assert scores[0] == 50.0 and scores[1:].isnan().all()
    learner = create_learner("scratch", _conv(), eval_inner_steps=1, inner_lr=1e30)
    ev = learner.evaluate(_tasks(seed=1))
    assert ev.tasks == 3 and all(v != v for v in ev.values)  # (NaN), where argmax gave 33.3% before


def test_regression_tasks_score_the_mean_squared_error_of_their_queries() -> None:
    """Sine's metric is each task's mean (not summed) squared error over its query points, what F.mse_loss gives."""
    from fewshot.base import task_scores

    g = torch.Generator().manual_seed(0)
    out, target = torch.randn(3, 5, 1, generator=g), torch.randn(3, 5, 1, generator=g)
    expected = torch.stack([F.mse_loss(out[t], target[t]) for t in range(3)])
    torch.testing.assert_close(task_scores("regression", out, target), expected)


def test_evaluate_leaves_the_learner_in_the_mode_it_found_it() -> None:
    """evaluate switches to eval mode and back to the caller's mode, not always to training (a running-statistics
    BatchNorm left in training mode would update its statistics on the caller's next forward)."""
    learner = create_learner("scratch", _conv(), eval_inner_steps=1)
    for training in (False, True):
        learner.train(training)
        learner.evaluate(_tasks())
        assert learner.training is training and learner.model.training is training


def _steps_by_torch(model, optimizer, loss_fn, x, y, *, steps, lr):
    """The reference adaptation: ``steps`` steps of a fresh torch optimizer on (x, y), in place; returns the model."""
    opt = optimizer(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


def test_scratch_never_meta_trains_and_adapts_by_plain_sgd_from_its_init() -> None:
    """scratch: meta-training leaves the random init alone; adaptation is eval_inner_steps SGD steps on the support set."""
    learner = create_learner("scratch", _conv(), eval_inner_steps=3, inner_lr=0.1, vectorize=False)
    init = {k: v.detach().clone() for k, v in learner.theta.items()}
    learner.meta_train(type("Source", (), {"sample": lambda self, n: _tasks(num_tasks=n, seed=5)})(), iterations=2, meta_batch=2)
    assert all(torch.equal(init[k], v) for k, v in learner.theta.items())
    tasks = _tasks(num_tasks=2, seed=6)
    fast = learner.adapt(tasks.support)
    for t in range(2):
        model = _conv()
        model.load_state_dict(init)
        _steps_by_torch(model, torch.optim.SGD, F.cross_entropy, tasks.support_x[t], tasks.support_y[t], steps=3, lr=0.1)
        for k, v in model.named_parameters():
            assert torch.allclose(fast[k][t], v.detach(), atol=1e-5, rtol=1e-4), k


def test_scratch_defaults_to_ten_sgd_steps_of_0_1() -> None:
    """The documented scratch baseline: 10 SGD steps of lr 0.1 on each test task's support set."""
    learner = create_learner("scratch", _conv())
    assert (learner.eval_inner_steps, learner.inner_lr) == (10, 0.1)


def test_registry_and_hparams_round_trip() -> None:
    with pytest.raises(UnknownNameError, match="unknown algorithm 'mamll'; valid: .*lazy-maml.*maml"):
        get_learner("mamll")
    learner = create_learner("lazy-maml", _conv(), inner_steps=13, gammas=(0.9, 0.95), last=3)
    hp = learner.hparams()
    assert hp["inner_steps"] == 13 and hp["gammas"] == [0.9, 0.95] and hp["last"] == 3 and hp["transductive"] is True
    again = create_learner("lazy-maml", _conv(), **hp)
    assert again.hparams() == hp
    with pytest.raises(ValueError, match="already registered"):
        from fewshot.base import register

        register("maml")(type("Other", (get_learner("scratch"),), {}))


def test_vmap_safe_batchnorm_computes_what_torch_batchnorm_does() -> None:
    from fewshot.base import BatchStatNorm2d, make_vmap_safe

    model = _conv()
    x = torch.rand(6, 1, 16, 16)
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(x)
        make_vmap_safe(model)
        after = model(x)
    assert isinstance(model.features[1], BatchStatNorm2d) and list(model.state_dict()) == keys
    assert torch.allclose(before, after, atol=1e-5)


def test_a_batchnorm_with_running_statistics_still_uses_them_once_wrapped_by_a_learner() -> None:
    """Only batch-statistics BatchNorm is rewritten for vmap: a layer with running statistics (resnet18, timm) still
    normalises by them in eval mode, as the model did before the learner took it."""
    model = models_zoo.create("conv4", num_classes=3, in_channels=1, image_size=16, hidden=8, track_running_stats=True)
    with torch.no_grad():  # statistics that are not the (0, 1) a fresh layer starts with
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(model).eval()
    learner = create_learner("maml", model).eval()
    x = _tasks().query_x[0]
    with torch.no_grad():
        torch.testing.assert_close(learner.model(x), reference(x))


def test_fomaml_meta_gradient_is_the_query_gradient_at_the_adapted_weights() -> None:
    # Hand-written first-order MAML (Finn et al. Sec. 5.2): per task, φ = θ − α∇L_s(θ) with the gradient a constant,
    # meta-gradient = mean over tasks of ∇_φ L_q(φ).
    from torch.func import functional_call

    torch.manual_seed(0)
    model = models_zoo.create("conv4", num_classes=3, in_channels=1, image_size=16, hidden=4).double()
    tasks = _tasks(num_tasks=2, shots=1)
    tasks = TaskBatch(tasks.support_x.double(), tasks.support_y, tasks.query_x.double(), tasks.query_y)
    got = create_learner("fomaml", model, inner_lr=0.4, inner_steps=1, vectorize=False).meta_gradient(tasks).grads
    theta = {k: v.detach() for k, v in model.named_parameters()}
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in range(2):
        p = {k: v.clone().requires_grad_() for k, v in theta.items()}
        inner = torch.autograd.grad(F.cross_entropy(functional_call(model, p, (tasks.support_x[t],)), tasks.support_y[t]), list(p.values()))
        phi = {k: (v - 0.4 * g).detach().requires_grad_() for (k, v), g in zip(p.items(), inner)}
        outer = torch.autograd.grad(F.cross_entropy(functional_call(model, phi, (tasks.query_x[t],)), tasks.query_y[t]), list(phi.values()))
        for k, g in zip(phi, outer):
            expected[k] += g / 2
    for k in expected:
        assert torch.allclose(got[k], expected[k], atol=1e-12), k
    assert any(float(v.abs().max()) > 1e-3 for v in expected.values())


# -- the zeroing trick (``zero_head``, Kao, Chiu, Chen, ICLR 2022) --


def test_zero_head_first_inner_step_moves_each_class_towards_its_support_features() -> None:
    # Closed form: with zero logits the softmax is uniform, so one SGD step of lr a on the mean cross-entropy gives
    # W_c = a/n * sum_i (1[y_i = c] - 1/N) f_i, a zero bias for balanced classes, and no gradient to the body.
    lr = 0.4
    learner = create_learner("fomaml", _conv(), inner_steps=1, inner_lr=lr, zero_head=True)
    tasks = _tasks(num_tasks=2)
    fast = learner.adapt(tasks.support)
    for t in range(2):
        with torch.no_grad():
            feats = learner.model.features(tasks.support_x[t])
        onehot = F.one_hot(tasks.support_y[t], 3).float()
        expected = lr / len(feats) * (onehot - 1 / 3).T @ feats
        assert torch.allclose(fast["head.weight"][t], expected, rtol=1e-4, atol=1e-6)
        assert float(fast["head.bias"][t].abs().max()) < 1e-7
        for name, value in learner.theta.items():
            if not name.startswith("head."):
                assert torch.equal(fast[name][t], value), name  # the body's gradient is 0 at a zero head


def test_zero_head_zeroes_the_output_layer_of_a_network_with_several_linear_layers() -> None:
    """The head is the model's last nn.Linear: an MLP classifier's hidden layer keeps its weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    learner = create_learner("maml", model, zero_head=True)
    assert not learner.model[3].weight.any() and not learner.model[3].bias.any()
    assert learner.model[1].weight.abs().min() > 0 and learner.model[1].bias.abs().min() > 0


@pytest.mark.parametrize("algo", ["maml", "reptile", "lazy-maml"])
def test_zero_head_stays_zero_through_meta_training_while_the_body_learns(algo) -> None:
    hp = {"inner_steps": 11} if algo == "lazy-maml" else {}
    control = create_learner(algo, _conv(), **hp)
    learner = create_learner(algo, _conv(), zero_head=True, **hp)
    head = learner.model.head
    assert float(head.weight.detach().abs().max()) == 0 and float(head.bias.detach().abs().max()) == 0
    body = {k: v.clone() for k, v in learner.theta.items() if not k.startswith("head.")}
    for seed in range(2):
        tasks = _tasks(num_tasks=2, seed=seed)
        control.train_step(tasks)
        learner.train_step(tasks)
        assert float(head.weight.detach().abs().max()) == 0 and float(head.bias.detach().abs().max()) == 0
    assert learner.iteration == 2
    assert any(not torch.equal(body[k], learner.theta[k]) for k in body)
    assert float(control.model.head.weight.detach().abs().max()) > 0  # without the trick the head is meta-learned
    assert learner.hparams()["zero_head"] is True and control.hparams()["zero_head"] is False


def test_zero_head_refuses_regression_finetune_and_non_booleans() -> None:
    sine = models_zoo.create("sine_mlp", num_classes=1, in_channels=1)
    with pytest.raises(ValueError, match="zero_head is for classification"):
        create_learner("maml", sine, problem="regression", zero_head=True)
    with pytest.raises(ValueError, match="finetune starts every test head at zero already"):
        create_learner("finetune", _conv(), zero_head=True)
    with pytest.raises(ValueError, match="zero_head must be true or false, got 'maybe'"):
        create_learner("maml", _conv(), zero_head="maybe")
    assert create_learner("maml", _conv(), zero_head="no").zero_head is False  # as a command line writes it


def test_hyperparameters_are_checked_from_python_too() -> None:
    import fewshot

    with pytest.raises(ValueError, match="grad_clip must be a positive finite number, got -1.0"):
        fewshot.MetaLSTM(_conv(), grad_clip=-1.0)  # a negative bound would flip the meta-gradient
    with pytest.raises(ValueError, match="inner_steps must be >= 1, got -1"):
        fewshot.MAML(_conv(), inner_steps=-1)
    with pytest.raises(ValueError, match="inner_lr must be a number, got '0.4'"):
        fewshot.MAML(_conv(), inner_lr="0.4")
    assert fewshot.MAML(_conv(), transductive="no").transductive is False


def test_check_hparams_reads_command_line_values_as_the_declared_types() -> None:
    from fewshot.base import get_learner

    turtle = get_learner("turtle").check_hparams({"first_order": "False", "time_input": "yes", "inner_steps": 3.0,
                                                  "hidden": [8, 8], "grad_clip": None, "lr_init": 1})
    assert turtle == {"first_order": False, "time_input": True, "inner_steps": 3, "hidden": (8, 8), "grad_clip": None,
                      "lr_init": 1.0}
    assert type(turtle["inner_steps"]) is int and type(turtle["lr_init"]) is float
    assert get_learner("meta-sgd").check_hparams({"lr_init": [0.005, 0.1]}) == {"lr_init": (0.005, 0.1)}
    assert get_learner("maml").check_hparams({"eval_inner_steps": 0}) == {"eval_inner_steps": 0}
    for algo, values, message in (("meta-sgd", {"lr_init": [0.1]}, "lr_init must be 2 values, got 1"),
                                  ("maml", {"inner_lr": 0}, "inner_lr must be a positive finite number, got 0"),
                                  ("imaml", {"cg_damping": -1.0}, "cg_damping must be a non-negative finite number"),
                                  ("maml", {"inner_steps": True}, "inner_steps must be a whole number, got True"),
                                  ("reptile", {"inner_optimizer": 3}, "inner_optimizer must be text, got 3"),
                                  ("turtle", {"first_order": 2}, "first_order must be true or false, got 2"),
                                  ("maml", {"meta_lr": float("inf")}, "meta_lr must be a positive finite number, got inf")):
        with pytest.raises(ValueError, match=message):
            get_learner(algo).check_hparams(values)


@pytest.mark.parametrize("algo,message", [
    ("reptile", "reptile meta-training diverged at iteration 1: the meta-parameters are no longer finite.*--hp inner_lr="),
    # the lazy teacher stops first: its students' NaN logits score NaN accuracy, which no leap candidate may win with
    ("lazy-reptile", r"every leap candidate of the lazy teacher scored NaN: the student diverged; lower its learning rate \(--inner-lr\)"),
])
def test_reptile_family_divergence_stops_training_though_it_reports_no_loss(algo, message) -> None:
    from lazyapps.errors import DivergedError

    sane = create_learner(algo, _conv(), inner_optimizer="sgd", inner_lr=0.1, inner_steps=3)
    assert "loss" not in sane.train_step(_tasks(seed=1))  # what the check cannot rely on
    learner = create_learner(algo, _conv(), inner_optimizer="sgd", inner_lr=1e10, inner_steps=3)
    with pytest.raises(DivergedError, match=message):
        learner.train_step(_tasks(seed=1))


def test_task_batches_a_learner_cannot_use_are_named() -> None:
    learner = create_learner("maml", _conv(), inner_steps=1)
    good = _tasks()
    cases = [
        (TaskBatch(good.support_x, good.support_y, good.query_x, good.query_y + 100), r"query label 10\d of task 0 is not among its support labels"),
        (TaskBatch(good.support_x, good.support_y, good.query_x[:1], good.query_y[:1]), "hold different numbers of tasks"),
        (TaskBatch(good.support_x[:, :5], good.support_y, good.query_x, good.query_y), "support_x .* and support_y .* one target per row"),
        (TaskBatch(good.support_x, good.support_y - 1, good.query_x, good.query_y), "class labels must be >= 0, got -1"),
        (TaskBatch(good.support_x[:, :0], good.support_y[:, :0], good.query_x, good.query_y), "the support sets are empty"),
        (TaskBatch(good.support_x[:0], good.support_y[:0], good.query_x[:0], good.query_y[:0]), "holds no tasks"),
    ]
    for tasks, message in cases:
        with pytest.raises(ValueError, match=message):
            learner.evaluate(tasks)  # (it scored 0% without a word for the out-of-range query labels)
        with pytest.raises(ValueError, match=message):
            learner.train_step(tasks)
    with pytest.raises(ValueError, match="evaluate needs at least one task batch"):
        learner.evaluate([])


def test_meta_train_names_bad_arguments_and_a_source_of_the_other_problem() -> None:
    from fewshot.datasets import SineTasks

    learner = create_learner("maml", _conv(), inner_steps=1)
    for kwargs, message in (({"iterations": 1, "meta_batch": 0}, "meta_batch must be a whole number >= 1, got 0"),
                            ({"iterations": 1, "meta_batch": 2.5}, "meta_batch must be a whole number >= 1, got 2.5"),
                            ({"iterations": -1, "meta_batch": 2}, "iterations must be a whole number >= 0, got -1")):
        with pytest.raises(ValueError, match=message):
            learner.meta_train(SineTasks(shots=5, queries=5), **kwargs)
    with pytest.raises(ValueError, match="poses regression tasks, but this learner was built for classification"):
        learner.meta_train(SineTasks(shots=5, queries=5), iterations=1, meta_batch=2)


def test_a_float64_model_gets_float64_tasks() -> None:
    learner = create_learner("maml", _conv().double(), inner_steps=1)
    assert learner.dtype is torch.float64
    result = learner.evaluate(_tasks())  # float32 images: cast, not a dtype error inside the conv
    assert 0 <= result.mean <= 100


def test_python_values_of_every_common_kind_are_read_as_declared() -> None:
    import numpy as np

    sine = lambda: models_zoo.create("sine_mlp", num_classes=1, in_channels=1)  # noqa: E731
    maml = create_learner("maml", sine(), problem="regression", inner_steps=np.int64(2), inner_lr=torch.tensor(0.1))
    assert (maml.inner_steps, type(maml.inner_steps), type(maml.inner_lr)) == (2, int, float)
    lazy = create_learner("lazy-maml", sine(), problem="regression", gammas=(g for g in np.linspace(0.5, 0.9, 3)))
    assert lazy.gammas == pytest.approx((0.5, 0.7, 0.9))
    assert create_learner("meta-lstm", sine(), problem="regression", first_order=0).first_order is False  # --hp first_order=0
    assert create_learner("meta-sgd", sine(), problem="regression", lr_init=(0.0, 0.1)).lr_init == (0.0, 0.1)


def test_a_users_own_learner_gets_type_conversion_but_not_the_packages_ranges() -> None:
    from fewshot.base import Learner

    class MyLearner(Learner):
        def __init__(self, model, *, bias: float = 0.0, warmup: int = 0, **base) -> None:
            super().__init__(model, **base)
            self.bias, self.warmup = bias, warmup

        def meta_step(self, tasks):
            return {}

        def adapt(self, support):
            return {k: v.unsqueeze(0).expand(support[0].shape[0], *v.shape) for k, v in self.theta.items()}

    learner = MyLearner(_conv(), bias=-0.5, warmup=0.0)  # no rule of ours on its own names; the types still read
    assert (learner.bias, learner.warmup, type(learner.warmup)) == (-0.5, 0, int)
    with pytest.raises(ValueError, match="warmup must be a whole number"):
        MyLearner(_conv(), warmup=0.5)
    assert MyLearner(_conv(), transductive="no").transductive is False  # the base class's names as ever

    class Shift:  # local to this function: under postponed annotations it cannot be resolved later
        pass

    class Annotated(MyLearner):
        def __init__(self, model, *, shift: Shift | None = None, **rest) -> None:
            super().__init__(model, **rest)
            self.shift = shift

    assert Annotated(_conv(), shift=Shift()).shift is not None  # (get_type_hints raised NameError here)


def _sine_tasks(num_tasks=2, shots=4, queries=3, seed=3) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(num_tasks, shots + queries, 1, generator=g, dtype=torch.float64) * 10 - 5
    y = torch.sin(x) * 2
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def _sgd_by_hand(model, theta, x, y, *, steps, lr):
    p = {k: v.detach().clone() for k, v in theta.items()}
    for _ in range(steps):
        leaf = {k: v.requires_grad_() for k, v in p.items()}
        loss = F.mse_loss(torch.func.functional_call(model, leaf, (x,)), y)
        grads = torch.autograd.grad(loss, list(leaf.values()))
        p = {k: (v - lr * g).detach() for (k, v), g in zip(leaf.items(), grads)}
    return p


@pytest.mark.parametrize("algo,hp", [("maml", {}), ("fomaml", {}), ("lazy-maml", {}), ("reptile", {"inner_optimizer": "sgd"})])
def test_test_time_adaptation_takes_eval_inner_steps_sgd_steps_on_the_support_set(algo, hp) -> None:
    torch.manual_seed(0)
    model = models_zoo.create("sine_mlp", num_classes=1, in_channels=1, hidden=5).double()
    learner = create_learner(algo, model, problem="regression", inner_lr=0.05, inner_steps=1, eval_inner_steps=3, **hp)
    tasks = _sine_tasks()
    fast = learner.adapt(tasks.support)
    theta = dict(model.named_parameters())
    for t in range(tasks.num_tasks):
        ref = _sgd_by_hand(model, theta, tasks.support_x[t], tasks.support_y[t], steps=3, lr=0.05)
        one_step = _sgd_by_hand(model, theta, tasks.support_x[t], tasks.support_y[t], steps=1, lr=0.05)
        for k in ref:
            assert torch.allclose(fast[k][t], ref[k], atol=1e-10), (k, t)
        assert not all(torch.allclose(ref[k], one_step[k]) for k in ref)


def test_maml_adapts_at_test_with_its_training_steps_unless_told_otherwise() -> None:
    """eval_inner_steps defaults to inner_steps: MAML(inner_steps=2) adapts a test task by 2 SGD steps."""
    torch.manual_seed(0)
    model = models_zoo.create("sine_mlp", num_classes=1, in_channels=1, hidden=5).double()
    learner = create_learner("maml", model, problem="regression", inner_lr=0.05, inner_steps=2)
    tasks = _sine_tasks()
    fast = learner.adapt(tasks.support)
    theta = dict(model.named_parameters())
    for t in range(tasks.num_tasks):
        ref = _sgd_by_hand(model, theta, tasks.support_x[t], tasks.support_y[t], steps=2, lr=0.05)
        for k in ref:
            assert torch.allclose(fast[k][t], ref[k], atol=1e-10), (k, t)


def test_maml_meta_step_reports_the_adapted_query_metrics_and_steps_adam_at_meta_lr() -> None:
    """The step's loss and accuracy are the means over tasks of the query scores of the weights adapted from θ (as
    evaluate adapts them), and Adam's first step moves every coordinate with a gradient by meta_lr."""
    learner = create_learner("maml", _conv(), inner_lr=0.05, inner_steps=1, meta_lr=0.01, vectorize=False)
    tasks = _tasks(num_tasks=4, seed=3)
    theta = {k: v.detach().clone() for k, v in learner.theta.items()}
    with torch.no_grad():
        out = learner.predict(learner.adapt(tasks.support), tasks.support_x, tasks.query_x)
    losses = [float(F.cross_entropy(out[t], tasks.query_y[t])) for t in range(4)]
    accuracies = [100 * float((out[t].argmax(-1) == tasks.query_y[t]).float().mean()) for t in range(4)]
    assert len(set(accuracies)) > 1  # (a mean, not a max or the first task's)
    grads = learner.meta_gradient(tasks).grads
    metrics = learner.meta_step(tasks)
    assert metrics["loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(sum(accuracies) / 4)
    steps = torch.cat([(v.detach() - theta[k]).flatten() for k, v in learner.theta.items()])
    g = torch.cat([grads[k].flatten() for k in learner.theta])
    big = g.abs() > 1e-4  # Adam's first step is −lr·g/(|g| + 1e-8): −lr·sign(g) where |g| >> 1e-8
    assert float(big.float().mean()) > 0.5
    torch.testing.assert_close(steps[big], -0.01 * torch.sign(g[big]), rtol=1e-3, atol=0)


def test_reptile_adapts_a_test_task_by_adam_steps_by_default() -> None:
    """Nichol et al. adapt at test time with their inner optimiser, Adam: ``eval_inner_steps`` steps of
    ``torch.optim.Adam`` (fresh state, lr ``inner_lr``) on each task's full support set, not SGD steps."""
    torch.manual_seed(0)
    model = models_zoo.create("sine_mlp", num_classes=1, in_channels=1, hidden=5).double()
    learner = create_learner("reptile", model, problem="regression", inner_lr=0.05, eval_inner_steps=3)
    assert learner.inner_optimizer == "adam"
    tasks = _sine_tasks()
    fast = learner.adapt(tasks.support)
    for t in range(tasks.num_tasks):
        ref = _steps_by_torch(copy.deepcopy(model), torch.optim.Adam, F.mse_loss, tasks.support_x[t], tasks.support_y[t],
                              steps=3, lr=0.05)
        for k, v in ref.named_parameters():
            assert torch.allclose(fast[k][t], v.detach(), atol=1e-10), (k, t)
    sgd = _sgd_by_hand(model, dict(model.named_parameters()), tasks.support_x[0], tasks.support_y[0], steps=3, lr=0.05)
    assert not all(torch.allclose(fast[k][0], sgd[k], atol=1e-6) for k in sgd)  # the reference tells Adam from SGD


def test_reptile_meta_step_moves_towards_sgd_on_support_and_query_with_the_annealed_step() -> None:
    torch.manual_seed(0)
    model = models_zoo.create("sine_mlp", num_classes=1, in_channels=1, hidden=5).double()
    tasks = _sine_tasks(num_tasks=2, shots=4, queries=3)
    # full-batch inner steps (inner_batch = all 7 rows): the order of the rows does not matter
    learner = create_learner("reptile", model, problem="regression", inner_optimizer="sgd", inner_lr=0.05, inner_steps=2,
                             inner_batch=7, meta_step_size=1.0, meta_step_final=0.2)
    learner.iteration, learner.total_iterations = 1, 4  # ε = 1 + (0.2 − 1)·1/4 = 0.8
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    phis = [_sgd_by_hand(model, theta, torch.cat([tasks.support_x[t], tasks.query_x[t]]),
                         torch.cat([tasks.support_y[t], tasks.query_y[t]]), steps=2, lr=0.05) for t in range(2)]
    metrics = learner.meta_step(tasks)
    assert metrics["step_size"] == pytest.approx(0.8)
    # the logged distance: the mean over tasks of the Euclidean norm ||φ_i − θ|| over all parameters
    norms = [sum(float(((phi[k] - theta[k]) ** 2).sum()) for k in theta) ** 0.5 for phi in phis]
    assert metrics["distance"] == pytest.approx(sum(norms) / 2, rel=1e-9)
    for k, v in model.named_parameters():
        expected = theta[k] + 0.8 * ((phis[0][k] + phis[1][k]) / 2 - theta[k])
        assert torch.allclose(v, expected, atol=1e-10), k
    # past the horizon ε stays at its final value; with no horizon set (train_step driven by hand) at its first
    learner.iteration = 9
    assert learner.current_step_size() == pytest.approx(0.2)
    learner.total_iterations = 0
    assert [learner.train_step(tasks)["step_size"] for _ in range(3)] == [1.0, 1.0, 1.0]


def test_reptile_trained_further_anneals_over_the_longer_run() -> None:
    """As docs/fewshot.md says: a finished run given more iterations follows the longer schedule, ε = 1 − i/N."""
    from fewshot.datasets import SineTasks

    torch.manual_seed(0)
    learner = create_learner("reptile", models_zoo.create("sine_mlp", num_classes=1, in_channels=1, hidden=5),
                             problem="regression", inner_steps=1, inner_batch=4)
    source = SineTasks(shots=2, queries=2, seed=0)
    first = learner.meta_train(source, iterations=2, meta_batch=1, progress=False)
    further = learner.meta_train(source, iterations=4, meta_batch=1, progress=False)
    assert [m["step_size"] for m in first + further] == pytest.approx([1.0, 0.5, 0.5, 0.25])


def test_evaluate_scores_each_task_after_adapting_on_its_support_set() -> None:
    learner = create_learner("maml", _conv(), inner_lr=0.5, inner_steps=1, eval_inner_steps=8)
    tasks = _tasks(num_tasks=4, seed=3)
    ev = learner.evaluate(tasks)
    fast = learner.adapt(tasks.support)
    expected = []
    with torch.no_grad():
        out = learner.predict(fast, tasks.support_x, tasks.query_x)
    for t in range(4):
        hits = [int(out[t, q].argmax()) == int(tasks.query_y[t, q]) for q in range(tasks.query_y.shape[1])]
        expected.append(100 * sum(hits) / len(hits))
    assert ev.values == pytest.approx(expected)
    assert len(set(expected)) > 1 or expected[0] < 100  # per task, and not the query-memorising 100 %
    on_query = learner.predict(learner.adapt(tasks.query), tasks.support_x, tasks.query_x).argmax(-1)
    assert float((on_query == tasks.query_y).float().mean()) * 100 > sum(expected) / 4  # the test tells support from query


@pytest.mark.parametrize("algo,hp", [("maml", {}), ("lazy-maml", {}), ("scratch", {}), ("reptile", {}),
                                     ("reptile", {"inner_optimizer": "sgd"}), ("lazy-reptile", {}),
                                     ("lazy-reptile", {"inner_optimizer": "adam"})])
def test_zero_test_time_steps_score_the_meta_parameters_unadapted(algo, hp) -> None:
    """eval_inner_steps=0 is allowed (>= 0): every task is scored with θ itself, also on Reptile's Adam path."""
    learner = create_learner(algo, _conv(), eval_inner_steps=0, **hp)
    tasks = _tasks(num_tasks=2, seed=4)
    fast = learner.adapt(tasks.support)
    for k, v in learner.theta.items():
        assert fast[k].shape == (2, *v.shape) and torch.equal(fast[k][0], v.detach()) and torch.equal(fast[k][1], v.detach()), k
    with torch.no_grad():
        out = torch.stack([torch.func.functional_call(learner.model, dict(learner.theta), (tasks.query_x[t],)) for t in range(2)])
    expected = ((out.argmax(-1) == tasks.query_y).float().mean(-1) * 100).tolist()
    assert learner.evaluate(tasks).values == pytest.approx(expected)


def test_lazy_reptile_refuses_a_teacher_mixing_more_checkpoints_than_the_student_takes() -> None:
    # as LazyMAML does, at construction: the student's first meta-step would otherwise fail
    for algo in ("lazy-maml", "lazy-reptile"):
        with pytest.raises(ValueError, match=r"^inner_steps \(2\) must be >= last \(3\)$"):
            create_learner(algo, _conv(), inner_steps=2, last=3)
    assert create_learner("lazy-reptile", _conv(), inner_steps=3, last=3).last == 3


def test_reptile_paper_defaults_are_nichol_et_als_omniglot_commands() -> None:
    """openai/supervised-reptile's README (archived): 5-way Adam 1e-3, 5 steps on batches of 10, 100,000 iterations;
    20-way Adam 5e-4, 10 steps on batches of 20, 200,000 iterations; meta-batch 5 and 10 training shots for both."""
    reptile, lazy = get_learner("reptile"), get_learner("lazy-reptile")
    for shots in (1, 5):
        assert reptile.paper_defaults(dataset="omniglot", ways=5, shots=shots) == {
            "inner_lr": 1e-3, "inner_steps": 5, "inner_batch": 10, "meta_batch": 5, "iterations": 100000, "train_shots": 10}
        assert reptile.paper_defaults(dataset="omniglot", ways=20, shots=shots) == {
            "inner_lr": 5e-4, "inner_steps": 10, "inner_batch": 20, "meta_batch": 5, "iterations": 200000, "train_shots": 10}
    # lazy Reptile takes Reptile's data (minibatches, training shots), not its Adam rate: its student is SGD at 0.1
    assert lazy.paper_defaults(dataset="omniglot", ways=20, shots=1) == {"inner_lr": 0.1, "inner_steps": 15, "meta_batch": 5,
                                                                        "inner_batch": 20, "train_shots": 10}
    # miniImageNet (the other image datasets): 8 steps on batches of 10, 100,000 iterations, 15 training shots
    for shots in (1, 5):
        assert reptile.paper_defaults(dataset="folder:/data/mini", ways=5, shots=shots) == {
            "inner_steps": 8, "inner_batch": 10, "meta_batch": 5, "iterations": 100000, "train_shots": 15}


def test_maml_defaults_are_finn_et_als_settings() -> None:
    """Finn et al. (2017): the class defaults are their 5-way Omniglot run (inner lr 0.4, 1 step, Adam 1e-3), and
    paper_defaults gives 3 steps at test there; 20-way lr 0.1 with 5 steps and meta-batch 16; sine lr 0.01, 1 step
    (10 at test), meta-batch 25; the miniImageNet-style datasets lr 0.01, 5 steps (10 at test), meta-batch 4 for
    1-shot and 2 for 5-shot. A wrong value here silently changes every benchmark run of maml/fomaml/meta-sgd/turtle."""
    for algo in ("maml", "fomaml"):
        cls = get_learner(algo)
        learner = cls(_conv())
        assert (learner.inner_lr, learner.inner_steps, learner.eval_inner_steps, learner.meta_lr) == (0.4, 1, 1, 1e-3)
        assert isinstance(learner.meta_optimizer, torch.optim.Adam) and learner.meta_optimizer.defaults["lr"] == 1e-3
        for shots in (1, 5):
            assert cls.paper_defaults(dataset="omniglot", ways=5, shots=shots) == {
                "inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3, "meta_lr": 1e-3, "meta_batch": 32, "iterations": 60000}
            assert cls.paper_defaults(dataset="omniglot", ways=20, shots=shots) == {
                "inner_lr": 0.1, "inner_steps": 5, "eval_inner_steps": 5, "meta_lr": 1e-3, "meta_batch": 16, "iterations": 60000}
        assert cls.paper_defaults(dataset="sine", ways=1, shots=5) == {
            "inner_lr": 0.01, "inner_steps": 1, "eval_inner_steps": 10, "meta_lr": 1e-3, "meta_batch": 25, "iterations": 70000}
        for shots, meta_batch in ((1, 4), (5, 2)):
            assert cls.paper_defaults(dataset="cifar-fs", ways=5, shots=shots) == {
                "inner_lr": 0.01, "inner_steps": 5, "eval_inner_steps": 10, "meta_lr": 1e-3, "meta_batch": meta_batch,
                "iterations": 60000}


def test_evaluate_refuses_a_task_source_which_never_runs_out(monkeypatch) -> None:
    from fewshot.datasets import SineTasks
    from fewshot.tasks import EpisodeSampler

    endless = EpisodeSampler.__iter__

    def cut_short(self):  # the sampler's own endless stream, stopped so that iterating it fails instead of hanging
        for i, batch in enumerate(endless(self)):
            if i == 50:
                raise AssertionError("evaluate kept drawing tasks from an endless sampler")
            yield batch

    monkeypatch.setattr(EpisodeSampler, "__iter__", cut_short)
    sampler = EpisodeSampler(torch.rand(12, 1, 16, 16), torch.arange(3).repeat_interleave(4), ways=3, shots=1, queries=1)
    learner = create_learner("scratch", _conv(), eval_inner_steps=1)
    with pytest.raises(TypeError, match=r"not a task source \(EpisodeSampler\).*source\.fixed_tasks\(num_tasks, seed=\.\.\.\)"):
        learner.evaluate(sampler)
    with pytest.raises(TypeError, match=r"not a task source \(SineTasks\)"):
        create_learner("scratch", models_zoo.create("sine_mlp", num_classes=1, in_channels=1), problem="regression").evaluate(
            SineTasks(shots=2, queries=2))
    assert learner.evaluate(sampler.fixed_tasks(3, seed=0)).tasks == 3  # what the message says to pass


def test_batchnorm_with_running_statistics_reports_the_mode_used_not_the_flag() -> None:
    """Running statistics (resnet18, timm, conv4 with track_running_stats): the queries never see each other, so the
    transductive flag changes nothing and is not reported; batch statistics report the flag."""
    tasks = _tasks(num_tasks=2, seed=8)
    results = {}
    for running in (True, False):
        for transductive in (True, False):
            torch.manual_seed(0)
            model = models_zoo.create("conv4", num_classes=3, in_channels=1, image_size=16, hidden=8, track_running_stats=running)
            learner = create_learner("maml", model, transductive=transductive, inner_lr=0.5, eval_inner_steps=2)
            with torch.no_grad():  # running statistics that are not the (0, 1) a fresh layer starts with
                for m in learner.model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None:
                        m.running_mean.uniform_(-0.5, 0.5)
                        m.running_var.uniform_(0.5, 2.0)
            results[running, transductive] = learner.evaluate(tasks)
    for transductive in (True, False):
        ev = results[True, transductive]
        assert (ev.transductive, ev.batchnorm, ev.bn_label) == (None, "running", "n/a (running stats)")
        assert ev.as_dict()["transductive"] is None and ev.as_dict()["batchnorm"] == "running"
        batch = results[False, transductive]
        assert (batch.transductive, batch.batchnorm, batch.bn_label) == (transductive, "batch", "yes" if transductive else "no")
    assert results[True, True].values == results[True, False].values
    sine = create_learner("maml", models_zoo.create("sine_mlp", num_classes=1, in_channels=1), problem="regression")
    ev = sine.evaluate(_sine_tasks().to("cpu", torch.float32))
    assert (ev.transductive, ev.batchnorm, ev.bn_label) == (None, None, "n/a")


def test_the_running_statistics_fallback_warning_names_the_command_line_flag_too() -> None:
    """``--arch resnet18`` meta-trains in a loop; the warning says how a command-line user silences it."""
    model = models_zoo.create("conv4", num_classes=3, in_channels=1, image_size=16, hidden=8, track_running_stats=True)
    learner = create_learner("maml", model, inner_steps=1)
    with pytest.warns(RuntimeWarning, match=r"running statistics in place.*vectorize=False \(--no-vectorize on the command line\)"):
        learner.train_step(_tasks(seed=1))


def test_reptile_minibatches_take_each_row_once_per_step_when_the_batch_exceeds_the_task() -> None:
    from fewshot.learners.reptile import minibatches

    x = torch.arange(8.0).reshape(2, 4, 1)
    torch.manual_seed(0)
    sx, sy, rows = minibatches(x, x.squeeze(-1).long(), batch=10, steps=3)
    assert [r.tolist() for r in rows] == [[0, 1, 2, 3]] * 3  # min(batch, rows): no row twice in one step
    assert torch.equal(sx.squeeze(-1).long(), sy) and sorted(sy[1].tolist()) == [4, 5, 6, 7]  # rows shuffled in pairs


def test_reptile_and_lazy_reptile_defaults_are_the_papers() -> None:
    """Nichol et al.'s 5-way Omniglot inner loop (Adam 1e-3, 5 steps on batches of 10, 50 steps at test, ε annealed
    1 → 0); the lazy paper's student (15 SGD steps of 0.1, also at test) and teacher (γ grid, b = 1, spacing 0.1)."""
    from fewshot.learners.lazy_maml import LAZY_GAMMAS

    reptile = create_learner("reptile", _conv())
    assert (reptile.inner_lr, reptile.inner_steps, reptile.inner_batch, reptile.eval_inner_steps, reptile.inner_optimizer,
            reptile.meta_step_size, reptile.meta_step_final) == (1e-3, 5, 10, 50, "adam", 1.0, 0.0)
    lazy = create_learner("lazy-reptile", _conv())
    assert (lazy.inner_lr, lazy.inner_steps, lazy.eval_inner_steps, lazy.inner_batch, lazy.inner_optimizer,
            lazy.meta_step_size, lazy.meta_step_final) == (0.1, 15, 15, None, "sgd", 1.0, 0.0)
    assert (lazy.gammas, lazy.last, lazy.weight_step, lazy.criterion) == (LAZY_GAMMAS, 1, 0.1, "accuracy")
    assert create_learner("lazy-reptile", _conv(), inner_steps=12).eval_inner_steps == 12
    # meta-training shots are never fewer than the test shots; sine and miniImageNet-style settings of the lazy learner
    reptile_cls, lazy_cls = get_learner("reptile"), get_learner("lazy-reptile")
    assert reptile_cls.paper_defaults(dataset="omniglot", ways=5, shots=20)["train_shots"] == 20
    assert reptile_cls.paper_defaults(dataset="omniglot", ways=20, shots=20)["train_shots"] == 20
    assert reptile_cls.paper_defaults(dataset="cifar-fs", ways=5, shots=20)["train_shots"] == 20
    assert lazy_cls.paper_defaults(dataset="sine", ways=1, shots=5) == {"inner_lr": 0.01, "inner_steps": 15, "meta_batch": 25}
    assert lazy_cls.paper_defaults(dataset="cifar-fs", ways=5, shots=1) == {"inner_lr": 0.01, "inner_steps": 15, "meta_batch": 5}


def test_lazy_reptile_meta_step_moves_to_the_teachers_leaps_of_its_minibatch_student_and_logs_their_means() -> None:
    from fewshot.learners.lazy_maml import student_checkpoints, teacher_leaps
    from fewshot.learners.reptile import minibatches

    tasks = _tasks(num_tasks=3, shots=3, seed=2)
    learner = create_learner("lazy-reptile", _conv(), inner_steps=4, inner_batch=4, inner_lr=0.5, last=2,
                             gammas=(0.2, 0.6, 0.95), weight_step=0.5)
    learner.total_iterations = 1  # ε = 1 at the first iteration
    theta = {k: v.detach().clone() for k, v in learner.theta.items()}
    torch.manual_seed(3)
    x, y, rows = minibatches(*tasks.support, batch=4, steps=4)
    checkpoints = student_checkpoints(learner, (x, y), steps=4, lr=0.5, keep_last=2, rows=rows)  # the last b = 2
    leaps = teacher_leaps(learner, learner.teacher, theta, checkpoints, tasks.query)
    torch.manual_seed(3)  # the same shuffle
    metrics = learner.meta_step(tasks)
    for k, v in learner.theta.items():
        expected = theta[k] + sum(leap.params[k] - theta[k] for leap in leaps) / 3
        assert torch.allclose(v, expected, atol=1e-6), k
    gammas, scores = [leap.gamma for leap in leaps], [float(leap.score) for leap in leaps]
    assert learner.last_gammas == gammas
    assert metrics["gamma"] == pytest.approx(sum(gammas) / 3) and metrics["accuracy"] == pytest.approx(sum(scores) / 3)
    assert len(set(gammas)) > 1 and len(set(scores)) > 1  # (means, not a max or the first task's)
