"""Few-shot meta-training on 2 gloo CPU processes: the meta-batch's tasks split across ranks, meta-gradients
averaged, and the result equal (to float tolerance) to one process on the whole meta-batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.spawn import run_ranks

#: (algorithm, task source, hyperparameters). Meta-batch 3 splits 2 + 1, so unequal shares are covered.
CASES = [
    ("maml", "sine", {"inner_steps": 2, "inner_lr": 0.01}),
    ("meta-sgd", "sine", {}),
    ("reptile", "sine", {"inner_optimizer": "sgd", "inner_steps": 3, "inner_batch": 100, "inner_lr": 0.02}),
    ("lazy-reptile", "sine", {"inner_steps": 4, "inner_lr": 0.01}),
    # minibatches smaller than the task: each task's shuffle must be the one a single process draws for it
    ("reptile", "sine", {"inner_optimizer": "sgd", "inner_steps": 3, "inner_batch": 3, "inner_lr": 0.02}),
    ("lazy-reptile", "sine", {"inner_steps": 4, "inner_lr": 0.01, "inner_batch": 2}),
    ("maml", "images", {"inner_steps": 1}),
    ("lazy-maml", "images", {"inner_steps": 3}),
]
META_BATCH = 3


def _source(kind: str):
    from fewshot.datasets import SineTasks
    from fewshot.tasks import EpisodeSampler

    if kind == "sine":
        return SineTasks(shots=5, queries=5, seed=1)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8 * 6, 1, 16, 16), dtype=torch.uint8, generator=g)
    return EpisodeSampler(images, torch.arange(8).repeat_interleave(6), ways=3, shots=1, queries=2, seed=1)


def _one_iteration(algo: str, kind: str, hparams: dict, iterations: int = 1) -> dict:
    """Build the learner (seeded), meta-train one iteration (or more); return the last meta-gradient, the new θ and
    the metrics."""
    import models_zoo
    from fewshot import create_learner

    torch.manual_seed(0)
    if kind == "sine":
        model = models_zoo.create("sine_mlp", num_classes=1, in_channels=1)
        problem = "regression"
    else:
        model = models_zoo.create("conv4", num_classes=3, in_channels=1, image_size=16, hidden=4)
        problem = "classification"
    learner = create_learner(algo, model, problem=problem, **hparams)
    history = learner.meta_train(_source(kind), iterations=iterations, meta_batch=META_BATCH)
    grads = {k: None if p.grad is None else p.grad.detach().clone() for k, p in learner.named_parameters()}
    # Evaluation: 3 batches of 2 tasks, split 2 + 1 over two ranks, scores gathered in order.
    evaluation = learner.evaluate(_source(kind).fixed_tasks(6, seed=5, batch_size=2))
    return {"params": {k: v.detach().clone() for k, v in learner.state_dict().items()}, "grads": grads,
            "metrics": history[-1], "eval": evaluation.values}


def _all_cases() -> list[dict]:
    return [_one_iteration(*case) for case in CASES]


def test_two_processes_give_the_single_process_meta_update():
    single = _all_cases()
    ranks = run_ranks(_all_cases, world=2)
    for (algo, kind, _), one, *per_rank in zip(CASES, single, *ranks):
        for res in per_rank:
            for name, g in one["grads"].items():
                if g is None:
                    assert res["grads"][name] is None, (algo, name)
                else:
                    torch.testing.assert_close(res["grads"][name], g, rtol=1e-5, atol=1e-6, msg=f"{algo}/{kind}: ∇ {name}")
            for name, value in one["params"].items():
                # Adam's first step is ±lr wherever g ≠ 0, so entries whose meta-gradient is rounding noise
                # (conv biases in front of BatchNorm: exactly 0 in exact arithmetic) move by ±lr either way.
                g = one["grads"].get(name)
                keep = torch.ones_like(value, dtype=torch.bool) if g is None or not value.is_floating_point() else g.abs() > 1e-5
                torch.testing.assert_close(res["params"][name][keep], value[keep], rtol=1e-5, atol=1e-6,
                                           msg=f"{algo}/{kind}: θ {name}")
            assert len(res["eval"]) == 6
            torch.testing.assert_close(torch.tensor(res["eval"]), torch.tensor(one["eval"]), rtol=1e-4, atol=1e-5)
            for key, value in one["metrics"].items():
                assert abs(res["metrics"][key] - value) <= 1e-4 * max(1.0, abs(value)), (algo, key)
        # The update did something (else equality would prove nothing).
        assert any(not torch.equal(one["params"][k], v) for k, v in _initial(algo, kind).items()), algo


#: Learners that clip the meta-gradient's norm (meta-LSTM by default: 0.25), with bounds below the unclipped norms
#: (about 1.4 and 6 here) and below each rank's part, so every step clips.
CLIP_CASES = [
    ("meta-lstm", "sine", {}),
    ("turtle", "sine", {"grad_clip": 0.5, "inner_steps": 2}),
]


def _clip_cases() -> list[dict]:
    # Two iterations: Adam's first step is ±lr whatever the gradient's scale; the second depends on it.
    return [_one_iteration(*case, iterations=2) for case in CLIP_CASES]


def test_two_processes_clip_the_whole_meta_batch_gradient():
    """grad_clip bounds the norm of the meta-gradient averaged over ranks (one process's), not each rank's part."""
    single = _clip_cases()
    ranks = run_ranks(_clip_cases, world=2)
    for (algo, kind, hparams), one, *per_rank in zip(CLIP_CASES, single, *ranks):
        bound = hparams.get("grad_clip", 0.25)
        norm = torch.cat([g.flatten() for g in one["grads"].values() if g is not None]).norm()
        assert norm.item() == pytest.approx(bound, rel=1e-4), (algo, "the single-process step did not clip")
        for res in per_rank:
            for name, g in one["grads"].items():
                torch.testing.assert_close(res["grads"][name], g, rtol=1e-5, atol=1e-6, msg=f"{algo}: ∇ {name}")
            for name, value in one["params"].items():
                torch.testing.assert_close(res["params"][name], value, rtol=1e-5, atol=1e-6, msg=f"{algo}: θ {name}")
            for key, value in one["metrics"].items():
                assert abs(res["metrics"][key] - value) <= 1e-4 * max(1.0, abs(value)), (algo, key)
        assert any(not torch.equal(one["params"][k], v) for k, v in _initial(algo, kind).items()), algo


def _initial(algo: str, kind: str) -> dict:
    import models_zoo

    torch.manual_seed(0)
    if kind == "sine":
        model = models_zoo.create("sine_mlp", num_classes=1, in_channels=1)
    else:
        model = models_zoo.create("conv4", num_classes=3, in_channels=1, image_size=16, hidden=4)
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def test_fewer_tasks_than_processes_is_one_clear_error():
    from lazyapps.errors import LazyAppsError

    def worker():
        import models_zoo
        from fewshot import create_learner

        learner = create_learner("maml", models_zoo.create("sine_mlp", num_classes=1, in_channels=1), problem="regression")
        try:
            learner.meta_train(_source("sine"), iterations=1, meta_batch=1)
        except LazyAppsError as exc:
            return str(exc)
        return None

    messages = run_ranks(worker, world=2)
    assert messages[0] == messages[1] and "--meta-batch 1 is smaller than the 2 processes" in messages[0]


def test_torchrun_fewshot_train_matches_one_process_and_writes_once(tmp_path):
    """`torchrun --nproc_per_node 2 -m lazyapps fewshot train`: same checkpoint as one process, one table, one JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--preset", "smoke", "--meta-batch", "4",
            "--device", "cpu", "--quiet"]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "lazyapps", *args, "--out", str(tmp_path / "multi"), "--json", str(tmp_path / "multi.json")],
                           capture_output=True, text=True, env=env, timeout=180)
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "lazyapps", *args, "--out", str(tmp_path / "single"),
                             "--json", str(tmp_path / "single.json")], capture_output=True, text=True, env=env, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    assert multi.stdout.count("few-shot meta-training") == 1  # the table, printed by rank 0 only
    a = torch.load(tmp_path / "multi" / "checkpoint.pt", weights_only=True)["learner"]
    b = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)["learner"]
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    ra, rb = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("multi", "single"))
    # float32 sums in another order (two processes' gradients all-reduced): equal to rounding, not bit for bit
    assert ra["metrics"]["test"]["mean"] == pytest.approx(rb["metrics"]["test"]["mean"], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == ["checkpoint.pt", "checkpoint.pt.json"]


def _maml_sine():
    import models_zoo
    from fewshot import create_learner

    torch.manual_seed(0)
    return create_learner("maml", models_zoo.create("sine_mlp", num_classes=1, in_channels=1), problem="regression",
                          inner_steps=2, inner_lr=0.01)


def test_resume_on_another_process_count():
    """One meta-iteration on 2 processes, checkpoint state, then one more in a single process = 2 in one process."""
    def first_iteration():
        learner, source = _maml_sine(), _source("sine")
        learner.meta_train(source, iterations=1, meta_batch=META_BATCH)
        return {"state": learner.checkpoint_state(), "sampler": source.generator.get_state()}

    saved = run_ranks(first_iteration, world=2)[0]
    resumed, source = _maml_sine(), _source("sine")
    resumed.load_checkpoint_state(saved["state"])
    source.generator.set_state(saved["sampler"])
    resumed.meta_train(source, iterations=2, meta_batch=META_BATCH)
    straight = _maml_sine()
    straight.meta_train(_source("sine"), iterations=2, meta_batch=META_BATCH)
    assert resumed.iteration == straight.iteration == 2
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
