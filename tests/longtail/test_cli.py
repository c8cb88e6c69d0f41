"""``lazyapps longtail``: smoke runs on the real CIFAR-10 subset, outputs, and bad-input messages."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from lazyapps.cli import cli

TINY = ["--dataset", "cifar10", "--preset", "smoke", "--n-max", "30", "--imbalance", "10", "--test-per-class", "5", "--quiet"]


def _invoke(*args):
    return CliRunner().invoke(cli, ["longtail", *args], catch_exceptions=False)


@pytest.fixture
def env(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYAPPS_DATA", str(data_root))
    monkeypatch.setenv("LAZYAPPS_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_train_smoke_resnet32_writes_json_csv_and_eval_agrees(env):
    out = env / "run"
    result = _invoke("train", *TINY, "--method", "ce", "--out", str(out), "--json", str(env / "r.json"),
                     "--per-class-csv", str(env / "pc.csv"))
    assert result.exit_code == 0, result.output
    assert "the literature reports the best epoch" in result.output and "best (" in result.output
    res = json.loads((env / "r.json").read_text())
    assert res["command"] == "longtail train" and res["config"]["model"] == "resnet32"
    counts = res["metrics"]["counts"]
    assert counts == [int(30 * 0.1 ** (c / 9)) for c in range(10)]
    assert len(res["metrics"]["history"]) == 2 and res["metrics"]["last"]["few_classes"] == sum(n < 20 for n in counts)
    rows = list(csv.DictReader(open(env / "pc.csv")))
    assert [r["train_images"] for r in rows] == [str(c) for c in res["metrics"]["counts"]] and rows[9]["group"] == "few"
    # eval of the last checkpoint reproduces the last epoch's test error
    ev = _invoke("eval", "--checkpoint", str(out / "checkpoint.pt"), "--json", str(env / "e.json"), "--quiet",
                 "--plot", str(env / "plots" / "pc.png"), "--per-class-csv", str(env / "epc.csv"))
    assert ev.exit_code == 0, ev.output
    evaluated = json.loads((env / "e.json").read_text())["metrics"]
    assert evaluated["top1_error"] == pytest.approx(res["metrics"]["last"]["top1_error"])
    assert [r["accuracy"] for r in csv.DictReader(open(env / "epc.csv"))] == [r["last_accuracy"] for r in rows]
    assert (env / "plots" / "pc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an output naming the run's checkpoint or its .json is refused before any work: the run would be lost
    before = (out / "checkpoint.pt").read_bytes(), (out / "checkpoint.pt.json").read_bytes()
    for option, target, what in (("--json", out / "checkpoint.pt", "is a lazyapps checkpoint"),
                                 ("--per-class-csv", out / "checkpoint.pt.json", "is the metadata of checkpoint checkpoint.pt")):
        bad = CliRunner().invoke(cli, ["longtail", "eval", "--checkpoint", str(out / "best.pt"), option, str(target)])
        assert bad.exit_code == 2 and bad.output.startswith(f"Error: {option} {target}: cannot write there ({target} {what}")
    assert ((out / "checkpoint.pt").read_bytes(), (out / "checkpoint.pt.json").read_bytes()) == before
    # a file that is not a longtail checkpoint: one line, no traceback
    (env / "junk.pt").write_bytes(b"not a checkpoint")
    bad = CliRunner().invoke(cli, ["longtail", "eval", "--checkpoint", str(env / "junk.pt")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1


def test_train_lazy_method_small_model_and_resume_refusals(env):
    out = env / "lazy"
    args = [*TINY, "--model", "lenet5", "--method", "lazy-two-component", "--inner-steps", "2", "--gammas", "0.8,0.9"]
    result = _invoke("train", *args, "--out", str(out), "--json", str(env / "l.json"))
    assert result.exit_code == 0, result.output
    history = json.loads((env / "l.json").read_text())["metrics"]["history"]
    assert [h["meta"] for h in history] == [False, True] and 0.8 <= history[1]["meta_gamma"] <= 0.9
    before = (out / "checkpoint.pt").read_bytes()
    again = CliRunner().invoke(cli, ["longtail", "train", *args, "--out", str(out)])
    assert again.exit_code == 2 and "already holds a run's checkpoint" in again.output
    other = CliRunner().invoke(cli, ["longtail", "train", *TINY, "--model", "lenet5", "--method", "ce", "--resume", str(out / "checkpoint.pt")])
    assert other.exit_code == 2 and "method='lazy-two-component', but method='ce' is needed" in other.output
    # settings that change the data are named too, before the data load could fail on them
    for flag, value, named in (("--dataset", "cifar100", "dataset='cifar10', but dataset='cifar100'"),
                               ("--imbalance", "5", "imbalance=10.0, but imbalance=5.0")):
        moved = CliRunner().invoke(cli, ["longtail", "train", flag, value, "--resume", str(out / "checkpoint.pt")])
        assert moved.exit_code == 2 and named in moved.output, moved.output
    assert "Traceback" not in other.output and (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--imbalance", "0.5"], "--imbalance must be a finite number >= 1"),
    (["--imbalance", "inf"], "--imbalance must be a finite number >= 1"),  # (no --n-max could give its classes images)
    (["--method", "focal-magic"], "unknown method 'focal-magic'; valid: cb-ce, cb-focal, ce, l2rw, lazy-two-component"),
    (["--val-per-class", "3000"], "needs 3000 for validation"),
    (["--gammas", "0.8,2"], "Invalid value for '--gammas': must be comma-separated numbers in [0, 1]"),
    (["--inner-lr", "0"], "--inner-lr must be a positive finite number"),
    (["--inner-lr", "inf"], "--inner-lr must be a positive finite number, got inf"),
    (["--inner-steps", "0"], "--inner-steps must be >= 1"),
    (["--inner-steps", "65"], "--inner-steps 65 is more than --batch-size 64: the lazy student's steps run over that many slices"),
    (["--lr", "-0.1"], "--lr must be a positive number, got -0.1"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--test-per-class", "0"], "--test-per-class must be >= 1 (--preset paper evaluates on the whole test set), got 0"),
    (["--test-per-class", "0", "--dataset", "npz:/nonexistent/lt.npz"], "--test-per-class must be >= 1"),  # (no data load)
    (["--n-max", "0", "--dataset", "npz:/nonexistent/lt.npz"], "--n-max (images of the largest class) must be >= 1, got 0"),
    (["--test-per-class", "-5"], "--test-per-class must be >= 1"),
    (["--method", "two-component", "--val-per-class", "0"], "learns its weights on a balanced validation set; give --val-per-class >= 1"),
    (["--method", "lazy-two-component", "--epochs", "1"], "starts its meta steps at epoch 2 of the schedule, after the 1 epochs asked"),
    (["--method", "ldam-drw", "--epochs", "1"], "starts its deferred re-weighting at epoch 2"),
    (["--method", "ce", "--gammas", "0.8"], "--gammas is an option of lazy-two-component, not of --method ce"),
    (["--method", "two-component", "--inner-steps", "3"], "--inner-steps is an option of lazy-two-component, not of --method two-component"),
    (["--method", "ldam-drw", "--inner-lr", "0.1"], "--inner-lr is an option of lazy-two-component, not of --method ldam-drw"),
    (["--method", "ce", "--eps-rule", "step"], "--eps-rule is an option of two-component and lazy-two-component, not of --method ce"),
    (["--per-class-csv", "{tmp}/afile/pc.csv"], "--per-class-csv {tmp}/afile/pc.csv: cannot write there ({tmp}/afile is a file"),
    (["--out", "{tmp}/afile/run"], "--out {tmp}/afile/run: cannot write there ({tmp}/afile is a file, so nothing can be made under it)"),
    (["--json", "{tmp}/afile/r.json"], "--json {tmp}/afile/r.json: cannot write there"),
])
def test_bad_input_is_one_clear_line(env, args, message):
    (env / "afile").write_text("a file where a folder is needed")
    args, message = [a.replace("{tmp}", str(env)) for a in args], message.replace("{tmp}", str(env))
    result = CliRunner().invoke(cli, ["longtail", "train", "--dataset", "cifar10", "--preset", "smoke", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_cifar100_error_says_how_to_get_it(tmp_path, monkeypatch):
    import lazyapps.data as data_module

    monkeypatch.setattr(data_module, "_download", lambda name, root: (_ for _ in ()).throw(OSError("offline")))
    result = CliRunner().invoke(cli, ["longtail", "train", "--imbalance", "100", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "cifar-100-python" in result.output and "--dataset cifar10" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_headline_command_fits_the_quick_preset_to_the_full_cifar100(tmp_path, monkeypatch):
    """``lazyapps longtail train --imbalance 100``: CIFAR-100 has 500 training images per class, so the quick preset's
    n_max of 500 is capped at Jamal et al.'s 490 (10 go to validation), not refused; an explicit --n-max is not."""
    import lazyapps.data as data_module
    import longtail.trainer as trainer_module
    from lazyapps.errors import LazyAppsError

    from .test_data import _in_memory

    monkeypatch.setattr(data_module, "load_dataset", lambda name, root=None: _in_memory("cifar100", 100, 500, 200))

    def reached(self, config, data, **kwargs):  # the data are cut: stop before training ResNet-32 on them
        raise LazyAppsError(f"reached the trainer: n_max {config.n_max} {data.n_max}, counts {data.counts[0]}.."
                            f"{data.counts[-1]}, epochs {config.epochs}")

    monkeypatch.setattr(trainer_module.Trainer, "__init__", reached)
    result = CliRunner().invoke(cli, ["longtail", "train", "--imbalance", "100", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "reached the trainer: n_max 490 490, counts 490..4, epochs 20" in result.output
    explicit = CliRunner().invoke(cli, ["longtail", "train", "--imbalance", "100", "--n-max", "500"])
    assert explicit.exit_code == 2 and "needs 10 for validation + 500 for training" in explicit.output


def test_a_diverging_run_stops_in_one_line_and_saves_nothing(env):
    out = env / "div"
    result = CliRunner().invoke(cli, ["longtail", "train", *TINY, "--model", "lenet5", "--method", "ce", "--lr", "1e30",
                                      "--out", str(out), "--json", str(env / "d.json")])
    assert result.exit_code == 2, result.output
    assert "training diverged in epoch 1 (mean loss nan); lower --lr; nothing was saved" in result.output
    assert not (out / "checkpoint.pt").exists() and not (env / "d.json").exists()


def test_a_lazy_student_diverging_names_inner_lr_and_keeps_the_last_epoch(env):
    out = env / "div"
    result = CliRunner().invoke(cli, ["longtail", "train", *TINY, "--model", "lenet5", "--method", "lazy-two-component",
                                      "--inner-lr", "1e30", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"training diverged in epoch 2 (mean loss nan); lower --lr or --inner-lr; {out / 'checkpoint.pt'} still holds epoch 1" in result.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_resume_refuses_a_best_pt_and_another_runs_folder_and_carries_best_along(env):
    run_a, run_b = env / "a", env / "b"
    args = [*TINY, "--model", "lenet5", "--method", "ce"]
    assert _invoke("train", *args, "--out", str(run_a)).exit_code == 0
    assert _invoke("train", *args, "--seed", "1", "--out", str(run_b)).exit_code == 0
    before = (run_b / "checkpoint.pt").read_bytes()
    for out in ([], ["--out", str(env / "c")]):  # (without --out: its folder, which holds the run's checkpoint.pt)
        best = CliRunner().invoke(cli, ["longtail", "train", *args, "--resume", str(run_a / "best.pt"), *out])
        assert best.exit_code == 2 and "holds only the best epoch's weights; resume from the run's checkpoint.pt" in best.output
    into_b = CliRunner().invoke(cli, ["longtail", "train", *args, "--resume", str(run_a / "checkpoint.pt"), "--out", str(run_b)])
    assert into_b.exit_code == 2 and f"{run_b} already holds a run's checkpoint" in into_b.output
    assert (run_b / "checkpoint.pt").read_bytes() == before
    moved = _invoke("train", *args, "--resume", str(run_a / "checkpoint.pt"), "--out", str(env / "c"))
    assert moved.exit_code == 0, moved.output
    assert (env / "c" / "best.pt").read_bytes() == (run_a / "best.pt").read_bytes()
    assert (env / "c" / "best.pt.json").is_file()
    assert (env / "c" / "checkpoint.pt").read_bytes() == (run_a / "checkpoint.pt").read_bytes()  # the finished run's
    assert json.loads((env / "c" / "checkpoint.pt.json").read_text())["epochs_done"] == 2


def test_resume_takes_the_runs_settings_from_its_checkpoint_and_checks_the_ones_given(env):
    run = env / "r"
    args = [*TINY, "--model", "lenet5", "--method", "cb-ce", "--lr", "0.05", "--epochs", "3", "--seed", "2", "--batchnorm", "local"]
    first = _invoke("train", *args, "--out", str(run), "--json", str(env / "first.json"))
    assert first.exit_code == 0, first.output
    checkpoint = run / "checkpoint.pt"
    before = checkpoint.read_bytes()
    # only --resume, as the Ctrl-C message says: every setting (dataset, seed, lr, epochs, ...) is the run's own
    again = _invoke("train", "--resume", str(checkpoint), "--quiet", "--json", str(env / "again.json"))
    assert again.exit_code == 0, again.output
    config, resumed = (json.loads((env / name).read_text())["config"] for name in ("first.json", "again.json"))
    assert resumed == config and resumed["lr"] == 0.05 and resumed["seed"] == 2 and resumed["dataset"] == "cifar10"
    assert resumed["batchnorm"] == "local"  # torchrun's BatchNorm mode is the run's too
    other = CliRunner().invoke(cli, ["longtail", "train", "--resume", str(checkpoint), "--lr", "0.1"])
    assert other.exit_code == 2 and "made with lr=0.05, but lr=0.1 is needed here" in other.output
    preset = CliRunner().invoke(cli, ["longtail", "train", "--resume", str(checkpoint), "--preset", "paper"])
    assert preset.exit_code == 2 and "was trained with --preset smoke; leave --preset out to resume it" in preset.output
    # the .pt keeps its own identity: a .json edited (or swapped) to say otherwise is refused, not trusted
    meta_file = run / "checkpoint.pt.json"
    original = meta_file.read_text()
    meta_file.write_text(original.replace('"method": "cb-ce"', '"method": "ce"'))
    edited = CliRunner().invoke(cli, ["longtail", "train", "--resume", str(checkpoint)])
    assert edited.exit_code == 2 and "and its metadata disagree: method is 'cb-ce' in the .pt but 'ce' in the .json" in edited.output
    meta_file.unlink()
    missing = CliRunner().invoke(cli, ["longtail", "train", "--resume", str(checkpoint)])
    assert missing.exit_code == 2 and "has no metadata file beside it (checkpoint.pt.json)" in missing.output
    meta_file.write_text(original)
    assert checkpoint.read_bytes() == before


def test_eval_of_a_checkpoint_without_its_metadata_says_so(env):
    out = env / "m"
    assert _invoke("train", *TINY, "--model", "lenet5", "--method", "ce", "--out", str(out)).exit_code == 0
    (out / "best.pt.json").unlink()
    result = CliRunner().invoke(cli, ["longtail", "eval", "--checkpoint", str(out / "best.pt")])
    assert result.exit_code == 2 and "has no metadata file best.pt.json beside it" in result.output


def _captured_train(monkeypatch, *args: str) -> dict:
    """Runs ``longtail train ARGS`` up to its data loading: the TrainConfig and the data split's arguments it built."""
    from longtail import data as data_module
    from longtail import trainer as trainer_module

    seen = {}
    real_check = trainer_module.TrainConfig.check

    def check(self):
        seen["config"] = self
        return real_check(self)

    def load(dataset, **kwargs):
        seen["data"] = {"dataset": dataset, **kwargs}
        raise KeyboardInterrupt  # (stands in for the data loading and training that would follow)

    monkeypatch.setattr(trainer_module.TrainConfig, "check", check)
    monkeypatch.setattr(data_module.CIFARLongTail, "load", load)
    _invoke("train", *args)
    return seen


def test_explicit_flags_reach_the_training_config_and_the_data(env, monkeypatch):
    """Every flag lands in the TrainConfig and the data split (both captured; nothing is loaded or trained)."""
    seen = _captured_train(
        monkeypatch, "--dataset", "cifar10", "--preset", "smoke", "--method", "lazy-two-component", "--imbalance", "10",
        "--epochs", "3", "--batch-size", "32", "--lr", "0.05", "--inner-steps", "2", "--inner-lr", "0.01",
        "--eps-rule", "normalized", "--gammas", "0.8,0.9", "--split", "ldam", "--val-per-class", "4", "--n-max", "50",
        "--test-per-class", "7", "--model", "lenet5", "--seed", "4", "--quiet")
    config = seen["config"]
    assert (config.epochs, config.batch_size, config.lr, config.inner_steps, config.inner_lr) == (3, 32, 0.05, 2, 0.01)
    assert (config.eps_rule, config.gammas, config.rule, config.val_per_class) == ("normalized", (0.8, 0.9), "ldam", 4)
    assert (config.n_max, config.test_per_class, config.model, config.seed, config.method) == (50, 7, "lenet5", 4, "lazy-two-component")
    assert seen["data"] == {"dataset": "cifar10", "imbalance": 10.0, "root": None, "rule": "ldam", "val_per_class": 4,
                            "n_max": 50, "test_per_class": 7, "seed": 4}


def test_the_presets_are_the_documented_ones():
    from longtail.cli import PRESETS

    assert PRESETS == {  # docs/longtail.md, "Training schedule and presets"
        "smoke": {"epochs": 2, "n_max": 100, "test_per_class": 20, "batch_size": 64},
        "quick": {"epochs": 20, "n_max": 500, "test_per_class": 200, "batch_size": 128},
        "paper": {"epochs": 200, "n_max": None, "test_per_class": None, "batch_size": 128},
    }


def test_json_best_and_last_are_the_best_and_the_last_epoch(env):
    result = _invoke("train", *TINY, "--model", "lenet5", "--method", "ce", "--out", str(env / "run"), "--json", str(env / "r.json"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((env / "r.json").read_text())["metrics"]
    errors = [h["top1_error"] for h in metrics["history"]]
    assert metrics["last"]["epoch"] == 2 and metrics["last"]["top1_error"] == errors[-1]
    assert metrics["best"]["epoch"] == 1 + errors.index(min(errors)) and metrics["best"]["top1_error"] == min(errors)


def test_a_bundle_given_relative_to_the_working_directory_is_recorded_absolute(env, monkeypatch):
    import numpy as np

    work, elsewhere = env / "work", env / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    y = np.repeat(np.arange(3), 30)
    x = np.random.default_rng(0).integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    np.savez(work / "tiny.npz", x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
    monkeypatch.chdir(work)
    trained = _invoke("train", "--dataset", "npz:tiny.npz", "--preset", "smoke", "--imbalance", "2", "--n-max", "15", "--model", "lenet5",
                      "--method", "ce", "--out", "run", "--json", "r.json", "--quiet")
    assert trained.exit_code == 0, trained.output
    meta = json.loads((work / "run" / "checkpoint.pt.json").read_text())
    assert meta["dataset"] == f"npz:{work / 'tiny.npz'}"
    result = json.loads((work / "r.json").read_text())  # the files it wrote, by paths that hold from anywhere
    assert (result["config"]["out"], result["metrics"]["checkpoint"]) == (str((work / "run").resolve()), str((work / "run" / "checkpoint.pt").resolve()))
    monkeypatch.chdir(elsewhere)  # eval and --resume no longer depend on where the run started
    assert _invoke("eval", "--checkpoint", str(work / "run" / "checkpoint.pt"), "--quiet").exit_code == 0
    assert _invoke("train", "--resume", str(work / "run" / "checkpoint.pt"), "--quiet").exit_code == 0
    monkeypatch.chdir(work)  # the bundle named again, by another spelling, is the run's own
    again = _invoke("train", "--resume", str(work / "run" / "checkpoint.pt"), "--dataset", "npz:./tiny.npz", "--quiet")
    assert again.exit_code == 0, again.output


def test_eval_refuses_a_hand_edited_metadata_file_in_one_line(env):
    import shutil

    out = env / "run"
    assert _invoke("train", *TINY, "--model", "lenet5", "--method", "ce", "--epochs", "1", "--out", str(out)).exit_code == 0
    edits = {
        "imbalance": (lambda m: {**m, "imbalance": 100.0}, "imbalance is 10.0 in the .pt but 100.0 in the .json"),
        "dropped": (lambda m: {k: v for k, v in m.items() if k != "val_per_class"},
                    "val_per_class is 10 in the .pt but absent from the .json"),
        "classes dropped": (lambda m: {k: v for k, v in m.items() if k != "classes"},
                            "cannot be rebuilt from its metadata (it holds no 'classes' entry)"),
        "classes": (lambda m: {**m, "classes": m["classes"] + ["extra"]}, "is not the data checkpoint"),
        "list": (lambda m: [m], "holds a JSON list, not an object of settings"),
    }
    for name in ("checkpoint.pt", "best.pt"):
        meta = json.loads((out / f"{name}.json").read_text())
        for edit, (change, message) in edits.items():
            path = env / f"{edit}-{name}"
            shutil.copy(out / name, path)
            (env / f"{edit}-{name}.json").write_text(json.dumps(change(meta)))
            result = CliRunner().invoke(cli, ["longtail", "eval", "--checkpoint", str(path), "--quiet"])
            assert result.exit_code == 2 and message in result.output, (name, edit, result.output)
            assert len(result.output.strip().splitlines()) == 1


def test_resume_of_another_products_checkpoint_is_refused_before_its_settings_are_taken(env):
    (env / "checkpoint.pt").write_bytes(b"weights")
    (env / "checkpoint.pt.json").write_text(json.dumps({"kind": "fewshot", "algo": "maml", "dataset": "omniglot"}))
    result = CliRunner().invoke(cli, ["longtail", "train", "--resume", str(env / "checkpoint.pt")])
    assert result.exit_code == 2 and result.output.strip() == (
        f"Error: checkpoint {env / 'checkpoint.pt'} was made with kind='fewshot', but kind='longtail-train' is needed here")


def test_resume_refuses_a_hand_edited_metadata_file_before_taking_its_settings(env):
    import shutil

    out = env / "run"
    assert _invoke("train", *TINY, "--model", "lenet5", "--method", "ce", "--epochs", "1", "--out", str(out)).exit_code == 0
    meta = json.loads((out / "checkpoint.pt.json").read_text())
    for key, value, shown in (("imbalance", "abc", "'abc' in the .json"), ("n_max", "30", "'30' in the .json"),
                              ("momentum", None, "None in the .json"), ("dataset", ..., "absent from the .json")):
        shutil.copy(out / "checkpoint.pt", env / "checkpoint.pt")
        edited = {k: v for k, v in meta.items() if k != key} if value is ... else {**meta, key: value}
        (env / "checkpoint.pt.json").write_text(json.dumps(edited))
        result = CliRunner().invoke(cli, ["longtail", "train", "--resume", str(env / "checkpoint.pt"), "--epochs", "2",
                                          "--out", str(env / "more"), "--quiet"])
        assert result.exit_code == 2 and f"and its metadata disagree: {key} is {meta[key]!r} in the .pt but {shown}" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_folder_that_keeps_a_runs_best_pt_alone_is_not_overwritten(env):
    run = env / "kept"
    args = [*TINY, "--model", "lenet5", "--method", "ce", "--epochs", "1"]
    assert _invoke("train", *args, "--out", str(run)).exit_code == 0
    (run / "checkpoint.pt").unlink()  # (the run's best weights kept, its training state dropped)
    (run / "checkpoint.pt.json").unlink()
    before = (run / "best.pt").read_bytes()
    other = env / "other"
    assert _invoke("train", *args, "--seed", "1", "--out", str(other)).exit_code == 0
    for extra in ([], ["--resume", str(other / "checkpoint.pt")]):
        result = CliRunner().invoke(cli, ["longtail", "train", *args, "--seed", "1", "--out", str(run), *extra])
        assert result.exit_code == 2 and result.output.strip() == (
            f"Error: {run} already holds a run's best.pt; choose another --out (nothing was overwritten)"), result.output
    assert (run / "best.pt").read_bytes() == before and not (run / "checkpoint.pt").exists()


def test_eval_and_resume_refuse_a_bundle_rewritten_since_the_run(env):
    import numpy as np

    def bundle(classes, seed, test_seed=None):
        rng = np.random.RandomState(seed)
        labels = np.repeat(np.arange(classes), 40)
        x_train = rng.randint(0, 256, (len(labels), 8, 8, 3)).astype(np.uint8)
        x_test = rng.randint(0, 256, (len(labels), 8, 8, 3)).astype(np.uint8)
        if test_seed is not None:  # only the test images change: class sizes and training statistics stay
            x_test = np.random.RandomState(test_seed).randint(0, 256, x_test.shape).astype(np.uint8)
        np.savez(env / "data.npz", x_train=x_train, y_train=labels, x_test=x_test, y_test=labels)

    bundle(3, 0)
    out = env / "run"
    args = ["--dataset", f"npz:{env / 'data.npz'}", "--preset", "smoke", "--imbalance", "2", "--n-max", "20", "--method", "ce",
            "--model", "mlp", "--epochs", "2", "--quiet"]
    assert _invoke("train", *args, "--out", str(out)).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    digest = json.loads((out / "checkpoint.pt.json").read_text())["data_digest"]
    for classes, seed, test_seed, changed in ((4, 0, None, ": 4 entries of classes now, 3 in its metadata"),
                                              (3, 1, None, ": mean[0] "),
                                              (3, 0, 7, f" now (a hash of its images and labels), {digest!r} in its metadata")):
        bundle(classes, seed, test_seed)
        for command in (["eval", "--checkpoint", str(out / "best.pt")], ["train", "--resume", str(out / "checkpoint.pt")]):
            result = CliRunner().invoke(cli, ["longtail", *command, "--quiet"])
            assert result.exit_code == 2 and result.output.startswith(f"Error: npz:{env / 'data.npz'} is not the data "
                                                                      f"checkpoint {out}"), result.output
            assert changed in result.output and result.output.strip().endswith("; the data files changed since, or the .json was edited")
    assert (out / "checkpoint.pt").read_bytes() == before


def test_defaults_are_the_documented_ones(env, monkeypatch):
    """``lazyapps longtail train`` alone: CIFAR-100-LT x100, lazy-two-component, the quick preset, lr 0.1, k = 5 student
    steps and the γ grid 0.75..0.95 (help texts, docs/longtail.md); nothing is loaded or trained."""
    seen = _captured_train(monkeypatch, "--quiet")
    config = seen["config"]
    assert (config.dataset, config.imbalance, config.method, config.preset) == ("cifar100", 100.0, "lazy-two-component", "quick")
    assert (config.epochs, config.batch_size, config.lr, config.inner_steps, config.inner_lr) == (20, 128, 0.1, 5, None)
    assert (config.gammas, config.eps_rule, config.rule, config.val_per_class) == ((0.75, 0.80, 0.85, 0.90, 0.95), "step", "first", 10)
    assert (config.n_max, config.test_per_class, config.model, config.seed, config.batchnorm) == (490, 200, "resnet32", 0, "global")
    assert (config.lr_decay, config.momentum, config.weight_decay) == ((0.01, 0.0001), 0.9, 2e-4)  # Cao et al.'s
    assert seen["data"] == {"dataset": "cifar100", "imbalance": 100.0, "root": None, "rule": "first", "val_per_class": 10,
                            "n_max": 490, "test_per_class": 200, "seed": 0}


def test_device_reaches_the_trainer(env, monkeypatch):
    """--device is where the model trains: the trainer gets the run's device, not its own default."""
    import longtail.trainer as trainer_module
    from lazyapps.errors import LazyAppsError

    def reached(self, config, data, **kwargs):
        raise LazyAppsError(f"reached the trainer on {kwargs.get('device')!r}")

    monkeypatch.setattr(trainer_module.Trainer, "__init__", reached)
    result = CliRunner().invoke(cli, ["longtail", "train", *TINY, "--model", "lenet5", "--method", "ce", "--device", "cpu",
                                      "--out", str(env / "run")])
    assert result.exit_code == 2 and "reached the trainer on device(type='cpu')" in result.output, result.output


def test_eval_rebuilds_ldams_cosine_head(env, data_root):
    """An LDAM-DRW ResNet-32 has a normalised (cosine) last layer: eval rebuilds it and scores the weights as trained."""
    from longtail.data import CIFARLongTail
    from longtail.trainer import TrainConfig, Trainer

    data = CIFARLongTail.load("cifar10", imbalance=10, root=data_root, n_max=30, test_per_class=5)
    config = TrainConfig(dataset="cifar10", imbalance=10, method="ldam-drw", epochs=2, batch_size=64, n_max=30,
                         test_per_class=5, preset="smoke")
    trainer = Trainer(config, data, out_dir=env / "ldam")
    trainer.save()  # (the weights as initialised: what matters is the head they are loaded into)
    result = _invoke("eval", "--checkpoint", str(env / "ldam" / "checkpoint.pt"), "--json", str(env / "e.json"), "--quiet")
    assert result.exit_code == 0, result.output
    scored = json.loads((env / "e.json").read_text())["metrics"]
    expected = trainer.evaluate()
    assert scored["top1_error"] == pytest.approx(expected["top1_error"])
    assert [r["accuracy"] for r in scored["per_class"]] == [round(a, 4) for a in expected["per_class_accuracy"]]


def test_per_class_csv_and_table_report_the_best_and_the_last_epoch_each_its_own(env, monkeypatch):
    """Each epoch's scores scripted apart (epoch 2 best, epoch 3 last): the per-class CSV's best/last columns and the
    table's many/medium/few columns come from the epoch they name."""
    import longtail.trainer as trainer_module

    real = trainer_module.Trainer.evaluate
    errors = [60.0, 40.0, 50.0]

    def scripted(self):
        e = self.epoch  # (0-based: the epoch being scored)
        return {**real(self), "top1_error": errors[e], "many_accuracy": 10.0 + e, "medium_accuracy": 20.0 + e,
                "few_accuracy": 30.0 + e, "per_class_accuracy": [100.0 * e + c for c in range(10)]}

    monkeypatch.setattr(trainer_module.Trainer, "evaluate", scripted)
    result = _invoke("train", *TINY, "--model", "lenet5", "--method", "ce", "--epochs", "3", "--out", str(env / "run"),
                     "--per-class-csv", str(env / "pc.csv"), "--json", str(env / "r.json"))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(env / "pc.csv")))
    assert [float(r["best_accuracy"]) for r in rows] == [100.0 + c for c in range(10)]
    assert [float(r["last_accuracy"]) for r in rows] == [200.0 + c for c in range(10)]
    metrics = json.loads((env / "r.json").read_text())["metrics"]
    assert [r["best_accuracy"] for r in metrics["per_class"]] == [float(r["best_accuracy"]) for r in rows]
    table = {line.split(")")[0] + ")": [float(v) for v in line.split(")")[1].split()] for line in result.output.splitlines()
             if line.startswith(("best (", "last ("))}  # (top-1 error %, many %, medium %, few %)
    assert table == {"best (2)": [40.0, 11.0, 21.0, 31.0], "last (3)": [50.0, 12.0, 22.0, 32.0]}
    # eval of best.pt (real scores: eval does not go through the Trainer) names the best epoch, and its table's
    # columns are the metrics its JSON gives
    scored = _invoke("eval", "--checkpoint", str(env / "run" / "best.pt"), "--json", str(env / "e.json"))
    assert scored.exit_code == 0, scored.output
    metrics = json.loads((env / "e.json").read_text())["metrics"]
    lines = scored.output.splitlines()
    cells = lines[next(i for i, line in enumerate(lines) if line.startswith("epoch")) + 2].split()
    assert metrics["epoch"] == 2 and cells[0] == "2" and metrics["many_accuracy"] is None  # (no class of > 100 images)
    for cell, key in zip(cells[1:], ("top1_error", "many_accuracy", "medium_accuracy", "few_accuracy"), strict=True):
        assert cell == "-" if metrics[key] is None else float(cell) == pytest.approx(metrics[key], rel=1e-3), key


def test_resume_keeps_the_optimiser_settings_that_have_no_option(env, data_root):
    """A run the benchmark started with its own weight decay, momentum and lr decays (no option sets them) resumes
    with --resume alone, on those settings, not refused for the command's defaults."""
    from longtail.data import CIFARLongTail
    from longtail.trainer import TrainConfig, Trainer

    data = CIFARLongTail.load("cifar10", imbalance=10, root=data_root, n_max=30, test_per_class=5)
    config = TrainConfig(dataset="cifar10", imbalance=10, method="ce", epochs=2, batch_size=64, n_max=30, test_per_class=5,
                         model="lenet5", preset="smoke", weight_decay=5e-4, momentum=0.8, lr_decay=(0.1, 0.01))
    Trainer(config, data, out_dir=env / "run").save()
    result = _invoke("train", "--resume", str(env / "run" / "checkpoint.pt"), "--quiet", "--json", str(env / "r.json"))
    assert result.exit_code == 0, result.output
    saved = json.loads((env / "r.json").read_text())
    assert (saved["config"]["weight_decay"], saved["config"]["momentum"], saved["config"]["lr_decay"]) == (5e-4, 0.8, [0.1, 0.01])
    assert len(saved["metrics"]["history"]) == 2


@pytest.mark.parametrize("option, name, what", [("--json", "checkpoint.pt", "the run's checkpoint.pt"),
                                                ("--per-class-csv", "best.pt.json", "the .json of the run's best.pt")])
def test_an_output_naming_one_of_the_runs_own_files_is_refused_before_training(env, option, name, what):
    """Written when the run ends, such an output would overwrite the checkpoint (or best.pt's metadata) just trained."""
    out = env / "run"
    result = CliRunner().invoke(cli, ["longtail", "train", *TINY, "--model", "lenet5", "--method", "ce", "--out", str(out),
                                      option, str(out / name)])
    assert result.exit_code == 2 and result.output.strip() == (
        f"Error: {what} and {option} name the same file {out / name}; give each output its own path"), result.output
    assert not out.exists()


def test_the_default_run_folder_is_one_per_run_configuration(tmp_path):
    """Without --out, runs that differ in any setting (not only those its readable name shows) get folders of their own."""
    from longtail.cli import _default_out
    from longtail.trainer import TrainConfig

    base = TrainConfig(dataset="cifar10", imbalance=10, method="ce", preset="quick")
    folder = _default_out(tmp_path, base)
    assert folder.parent == tmp_path / "longtail" and folder.name.startswith("cifar10-imb10-ce-quick-seed0-")
    assert _default_out(tmp_path, TrainConfig(dataset="cifar10", imbalance=10, method="ce", preset="quick")) == folder
    for key, value in (("lr", 0.05), ("epochs", 30), ("batch_size", 64), ("n_max", 200), ("weight_decay", 5e-4)):
        assert _default_out(tmp_path, TrainConfig(**{**base.__dict__, key: value})) != folder, key
