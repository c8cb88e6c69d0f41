"""``lazyapps fewshot``: train -> checkpoint -> eval, resume, refusals and bad input, each one clear line."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from lazyapps.cli import cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root, session_cache):
    out = tmp_path_factory.mktemp("fewshot-run")
    args = ["fewshot", "train", "--algo", "fomaml", "--dataset", "omniglot", "--ways", "5", "--shots", "1", "--preset", "smoke",
            "--out", str(out / "run"), "--json", str(out / "train.json"), "--plot", str(out / "curve.png"),
            "--data-dir", str(data_root), "--cache-dir", str(session_cache), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out, result, [*args[:-9]], {"data": str(data_root), "cache": str(session_cache)}


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_train_writes_checkpoint_result_and_plot(trained) -> None:
    out, result, _, _ = trained
    assert (out / "run" / "checkpoint.pt").is_file() and (out / "curve.png").stat().st_size > 1000
    saved = json.loads((out / "train.json").read_text())
    meta = json.loads((out / "run" / "checkpoint.pt.json").read_text())
    assert meta["algo"] == "fomaml" and meta["arch"] == "conv4" and meta["iteration"] == 3
    assert saved["metrics"]["test"]["tasks"] == 4 and saved["metrics"]["test"]["transductive"] is True
    assert "fomaml" in result.output and "±" in result.output


def test_eval_prints_mean_and_interval_and_refuses_other_algorithms(trained, tmp_path) -> None:
    out, _, _, roots = trained
    ckpt = str(out / "run" / "checkpoint.pt")
    common = ["--data-dir", roots["data"], "--cache-dir", roots["cache"], "--quiet"]
    result = _run("fewshot", "eval", "--checkpoint", ckpt, "--tasks", "6", "--no-transductive", "--json", str(tmp_path / "e.json"), *common)
    assert result.exit_code == 0, result.output
    test = json.loads((tmp_path / "e.json").read_text())["metrics"]["test"]
    assert test["tasks"] == 6 and test["transductive"] is False and 0 <= test["mean"] <= 100 and test["ci95"] >= 0
    for flag, value, needle in (("--algo", "maml", "algo='fomaml', but algo='maml'"), ("--arch", "resnet18", "arch='conv4', but arch='resnet18'")):
        result = _run("fewshot", "eval", "--checkpoint", ckpt, flag, value, *common)
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_resume_continues_and_a_second_run_never_overwrites(trained, tmp_path) -> None:
    out, _, args, roots = trained
    ckpt = out / "run" / "checkpoint.pt"
    before = ckpt.read_bytes()
    result = _run(*args, "--out", str(out / "run"), "--data-dir", roots["data"], "--cache-dir", roots["cache"], "--quiet")
    assert result.exit_code == 2 and "already exists; pass --resume" in result.output
    assert ckpt.read_bytes() == before
    result = _run(*args, "--out", str(out / "run"), "--resume", str(ckpt), "--iterations", "5", "--data-dir", roots["data"],
                  "--cache-dir", roots["cache"], "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run" / "checkpoint.pt.json").read_text())["iteration"] == 5
    # Resuming 3 -> 5 gives exactly the weights of an uninterrupted 5-iteration run (same tasks, same Adam state).
    # Both runs here, at one thread count: summation order (hence the last bits) depends on it.
    here = ["--data-dir", roots["data"], "--cache-dir", roots["cache"], "--quiet"]
    assert _run(*args, "--out", str(tmp_path / "part"), *here).exit_code == 0
    part = tmp_path / "part" / "checkpoint.pt"
    assert _run(*args, "--out", str(tmp_path / "part"), "--resume", str(part), "--iterations", "5", *here).exit_code == 0
    straight = _run(*args, "--out", str(tmp_path / "straight"), "--iterations", "5", *here)
    assert straight.exit_code == 0, straight.output
    resumed = torch.load(part, weights_only=True)["learner"]
    direct = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["learner"]
    assert resumed.keys() == direct.keys() and all(torch.equal(resumed[k], direct[k]) for k in direct)
    first = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert len(first["history"]) == 5
    other = _run("fewshot", "train", "--algo", "maml", "--preset", "smoke", "--out", str(tmp_path / "x"), "--resume", str(ckpt),
                 "--data-dir", roots["data"], "--cache-dir", roots["cache"], "--quiet")
    assert other.exit_code == 2 and "algo='fomaml', but algo='maml'" in other.output
    sine = _run("fewshot", "train", "--dataset", "sine", "--out", str(tmp_path / "y"), "--resume", str(ckpt), "--iterations", "5",
                "--data-dir", roots["data"], "--cache-dir", roots["cache"], "--quiet")
    assert sine.exit_code == 2 and "dataset='omniglot', but dataset='sine' is needed" in sine.output  # (not its ways)


@pytest.mark.parametrize("extra,needle", [
    (["--algo", "mamll"], "unknown algorithm 'mamll'; valid: "),
    (["--algo", "maml", "--shots", "10", "--queries", "15"], "shots + queries = 10 + 15 = 25 examples per class are needed"),
    (["--algo", "maml", "--ways", "500"], "--ways 500 is larger than the 423 classes"),
    (["--algo", "maml", "--last", "3"], "--last does not apply to --algo maml"),
    # flags are named as flags, the rest as --hp names (there is no --cg-steps)
    (["--algo", "imaml", "--eval-inner-steps", "3"], "--eval-inner-steps does not apply to --algo imaml (it takes: --inner-lr, "
                                                      "--inner-steps, --meta-lr, --zero-head, and as --hp: cg_damping, cg_steps,"),
    (["--algo", "lazy-maml", "--gammas", "0.9,1.5"], "Invalid value for '--gammas': must be comma-separated numbers in [0, 1]"),
    (["--algo", "maml", "--hp", "lam=1"], "--hp lam is not a hyperparameter of --algo maml (it takes: eval_inner_steps, inner_lr"),
    (["--algo", "maml", "--hp", "inner_lr"], "'inner_lr' is not NAME=VALUE"),
    (["--algo", "maml", "--inner-lr", "0.1", "--hp", "inner_lr=0.2"], "inner_lr is given both as --inner-lr and as --hp inner_lr"),
    (["--algo", "imaml", "--hp", "lam=-1"], "--algo imaml: lam must be a positive finite number, got -1"),
    (["--algo", "lazy-maml", "--hp", "gammas=0.5,x"], "gammas must be a comma-separated list of values, got '0.5,x'"),
    (["--algo", "lazy-maml", "--hp", "gammas=0.5,1.5"], "gammas must be a non-empty sequence of values in [0, 1]"),
    # values a command line hands over are checked against the learner's declared types and ranges
    (["--algo", "turtle", "--hp", "first_order=maybe"], "--algo turtle: first_order must be true or false, got 'maybe'"),
    (["--algo", "maml", "--hp", "inner_lr=true"], "inner_lr must be a number, got True"),
    (["--algo", "maml", "--hp", "inner_steps=2.5"], "inner_steps must be a whole number, got 2.5"),
    (["--algo", "maml", "--inner-steps", "-1"], "inner_steps must be >= 1, got -1"),
    (["--algo", "maml", "--eval-inner-steps", "-1"], "eval_inner_steps must be >= 0, got -1"),
    (["--algo", "maml", "--inner-lr", "nan"], "inner_lr must be a positive finite number, got nan"),
    (["--algo", "maml", "--meta-lr", "-1"], "meta_lr must be a positive finite number, got -1.0"),
    (["--algo", "meta-sgd", "--hp", "lr_init=0.1"], "lr_init must be a comma-separated list of values, got 0.1"),
    (["--algo", "meta-lstm", "--hp", "hidden_size=0"], "hidden_size must be >= 1, got 0"),
    (["--algo", "turtle", "--hp", "beta=1.5"], "beta must be in [0, 1), got 1.5"),
    (["--algo", "lazy-maml", "--dataset", "sine", "--hp", "criterion=foo"], "unknown criterion 'foo'; valid: loss, accuracy"),
    (["--algo", "maml", "--dataset", "sine", "--arch", "conv4"], "--arch conv4 takes images, but sine's inputs are numbers"),
    (["--algo", "maml", "--arch", "sine_mlp"], "Error: --arch sine_mlp takes vectors, but omniglot's inputs are images; use an "
                                              "image network such as conv4"),
    (["--algo", "maml", "--shots", "0"], "--shots must be positive, got 0"),
    (["--algo", "maml", "--dataset", "sine", "--ways", "0"], "--ways must be positive, got 0"),
    (["--algo", "maml", "--dataset", "sine", "--no-transductive"], "--transductive / --no-transductive do not apply to sine regression"),
    (["--algo", "maml", "--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--algo", "scratch", "--iterations", "5"], "--algo scratch does not meta-train; drop --iterations"),
    (["--algo", "maml", "--dataset", "omniglot3"], "unknown few-shot dataset 'omniglot3'"),
    (["--algo", "reptile", "--train-shots", "0"], "--train-shots must be positive, got 0"),
    (["--algo", "reptile", "--train-shots", "19"], "Error: train-shots + queries = 19 + 2 = 21 examples per class are needed"),
    # reptile's default of 10 training shots shrinks to fit; what does not fit is the user's --shots
    (["--algo", "reptile", "--shots", "5", "--queries", "16"],
     "Error: shots + queries = 5 + 16 = 21 examples per class are needed, but the smallest class of omniglot-finn train "
     "split has 20; lower --shots or --queries"),
])
def test_bad_input_is_one_clear_line(extra, needle, data_root, session_cache, tmp_path) -> None:
    result = _run("fewshot", "train", "--preset", "smoke", "--out", str(tmp_path / "r"), *extra,
                  "--data-dir", str(data_root), "--cache-dir", str(session_cache), "--quiet")
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("extra,needle", [
    (["--algo", "lazy-maml", "--hp", "criterion=foo"], "Error: --algo lazy-maml: unknown criterion 'foo'; valid: loss, accuracy"),
    (["--algo", "reptile", "--hp", "inner_optimizer=rmsprop"], "Error: --algo reptile: inner_optimizer must be one of"),
    (["--algo", "turtle", "--hp", "network_init=xyz"], "Error: --algo turtle: unknown init 'xyz'; valid: gradient, random"),
    (["--algo", "finetune", "--zero-head"], "Error: --zero-head does not apply to --algo finetune (it takes: --eval-inner-steps"),
    (["--algo", "maml", "--dataset", "sine", "--zero-head"], "Error: --algo maml: zero_head is for classification"),
    # the teacher mixes the student's last 3 checkpoints: a 2-step student failed at its first meta-step
    (["--algo", "lazy-reptile", "--last", "3", "--inner-steps", "2"], "Error: --algo lazy-reptile: inner_steps (2) must be >= last (3)"),
])
def test_learner_settings_are_refused_before_any_data_loads(extra, needle, tmp_path, monkeypatch) -> None:
    from fewshot import datasets

    def no_data(name, **kwargs):
        raise AssertionError(f"{name} loaded before the learner's settings were checked")

    monkeypatch.setattr(datasets, "task_source", no_data)
    result = _run("fewshot", "train", "--preset", "smoke", "--out", str(tmp_path / "r"), *extra)
    assert result.exit_code == 2 and result.output.startswith(needle) and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "r").exists()


def test_sine_regression_reports_mse(tmp_path) -> None:
    result = _run("fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--preset", "smoke",
                  "--out", str(tmp_path / "s"), "--json", str(tmp_path / "s.json"), "--quiet")
    assert result.exit_code == 0, result.output
    test = json.loads((tmp_path / "s.json").read_text())["metrics"]["test"]
    assert test["metric"] == "mse" and test["transductive"] is None and test["mean"] > 0
    assert "5-shot" in result.output and "n/a" in result.output
    # eval of a regression checkpoint refuses the BatchNorm flag it would ignore, before scoring anything
    flag = _run("fewshot", "eval", "--checkpoint", str(tmp_path / "s" / "checkpoint.pt"), "--transductive", "--quiet")
    assert flag.exit_code == 2 and "do not apply to sine regression" in flag.output and len(flag.output.strip().splitlines()) == 1


def test_status_lines_say_what_the_run_does(tmp_path, data_root, session_cache) -> None:
    sine = _run("fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--preset", "smoke", "--out", str(tmp_path / "s"))
    assert sine.exit_code == 0 and "loading sine (5-shot regression, 2 query points per task)" in sine.stderr, sine.output
    scratch = _run("fewshot", "train", "--algo", "scratch", "--preset", "smoke", "--out", str(tmp_path / "c"),
                   "--data-dir", str(data_root), "--cache-dir", str(session_cache))
    assert scratch.exit_code == 0 and "scratch does not meta-train" in scratch.stderr and "meta-training" not in scratch.stderr


def test_hp_sets_any_learner_hyperparameter_and_no_shuffle_classes_is_recorded(tmp_path, data_root, session_cache) -> None:
    result = _run("fewshot", "train", "--algo", "imaml", "--dataset", "sine", "--shots", "5", "--preset", "smoke",
                  "--hp", "lam=0.5", "--hp", "cg-steps=2", "--out", str(tmp_path / "i"), "--json", str(tmp_path / "i.json"), "--quiet")
    assert result.exit_code == 0, result.output
    hp = json.loads((tmp_path / "i" / "checkpoint.pt.json").read_text())["hparams"]
    assert hp["lam"] == 0.5 and hp["cg_steps"] == 2 and hp["inner_steps"] == 10  # the rest: iMAML's sine settings
    result = _run("fewshot", "train", "--algo", "maml", "--preset", "smoke", "--no-shuffle-classes", "--hp", "eval_inner_steps=2",
                  "--out", str(tmp_path / "m"), "--data-dir", str(data_root), "--cache-dir", str(session_cache), "--quiet")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "m" / "checkpoint.pt.json").read_text())
    assert meta["shuffle_classes"] is False and meta["hparams"]["eval_inner_steps"] == 2


def test_zero_head_flag_is_recorded_and_the_saved_head_is_zero(tmp_path, data_root, session_cache) -> None:
    result = _run("fewshot", "train", "--algo", "fomaml", "--preset", "smoke", "--zero-head", "--out", str(tmp_path / "z"),
                  "--data-dir", str(data_root), "--cache-dir", str(session_cache), "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "z" / "checkpoint.pt.json").read_text())["hparams"]["zero_head"] is True
    state = torch.load(tmp_path / "z" / "checkpoint.pt", weights_only=True)["learner"]
    assert float(state["model.head.weight"].abs().max()) == 0 and float(state["model.features.0.weight"].abs().max()) > 0
    result = _run("fewshot", "train", "--algo", "maml", "--dataset", "sine", "--zero-head", "--preset", "smoke",
                  "--out", str(tmp_path / "s"), "--quiet")
    assert result.exit_code != 0 and result.output.strip().splitlines()[-1].startswith("Error: --algo maml: zero_head is for classification")
    assert not (tmp_path / "s").exists()


def test_reptile_family_meta_trains_on_ten_shots_and_resume_keeps_them(tmp_path, data_root, session_cache) -> None:
    here = ["--data-dir", str(data_root), "--cache-dir", str(session_cache), "--quiet"]
    result = _run("fewshot", "train", "--algo", "lazy-reptile", "--preset", "smoke", "--out", str(tmp_path / "r"),
                  "--json", str(tmp_path / "r.json"), *here)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "r" / "checkpoint.pt.json").read_text())
    assert meta["shots"] == 1 and meta["train_shots"] == 10 and meta["hparams"]["inner_batch"] == 10  # Nichol et al.'s data
    assert json.loads((tmp_path / "r.json").read_text())["config"]["train_shots"] == 10
    ckpt = str(tmp_path / "r" / "checkpoint.pt")
    other = _run("fewshot", "train", "--algo", "lazy-reptile", "--preset", "smoke", "--train-shots", "1", "--out", str(tmp_path / "r"),
                 "--resume", ckpt, "--iterations", "4", *here)
    assert other.exit_code == 2 and "was meta-trained with --train-shots 10; resume it with --train-shots 10" in other.output
    assert json.loads((tmp_path / "r" / "checkpoint.pt.json").read_text())["iteration"] == 3
    maml = _run("fewshot", "train", "--algo", "maml", "--preset", "smoke", "--out", str(tmp_path / "m"), *here)
    assert maml.exit_code == 0 and json.loads((tmp_path / "m" / "checkpoint.pt.json").read_text())["train_shots"] == 1
    # Omniglot's 20 drawings per character hold 10 shots + 15 queries only with fewer shots: the default shrinks to fit,
    # a --train-shots the user gave is refused.
    fit = _run("fewshot", "train", "--algo", "reptile", "--preset", "smoke", "--queries", "15", "--out", str(tmp_path / "f"), *here)
    assert fit.exit_code == 0, fit.output
    assert json.loads((tmp_path / "f" / "checkpoint.pt.json").read_text())["train_shots"] == 5
    given = _run("fewshot", "train", "--algo", "reptile", "--preset", "smoke", "--queries", "15", "--train-shots", "10",
                 "--out", str(tmp_path / "g"), *here)
    assert given.exit_code == 2 and "train-shots + queries = 10 + 15 = 25 examples per class are needed" in given.output
    assert "lower --train-shots or --queries" in given.output and len(given.output.strip().splitlines()) == 1
    assert not (tmp_path / "g" / "checkpoint.pt").exists()


def test_eval_of_a_missing_or_corrupt_checkpoint_is_one_line(tmp_path) -> None:
    missing = _run("fewshot", "eval", "--checkpoint", str(tmp_path / "none.pt"), "--quiet")
    assert missing.exit_code == 2 and "does not exist" in missing.output and len(missing.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    corrupt = _run("fewshot", "eval", "--checkpoint", str(bad), "--quiet")
    assert corrupt.exit_code == 2 and "Traceback" not in corrupt.output and len(corrupt.output.strip().splitlines()) == 1
    assert bad.read_bytes() == b"not a checkpoint"


def test_algos_lists_every_learner_with_its_hyperparameter_defaults() -> None:
    result = _run("fewshot", "algos", "--quiet")
    assert result.exit_code == 0, result.output
    assert "imaml: lam=2.0, cg_steps=5" in result.output and "meta-lstm: inner_steps=5" in result.output
    assert "turtle:" in result.output and "first_order=False" in result.output and "lazy-maml:" in result.output


@pytest.mark.parametrize(("item", "parsed"), [
    ("lam=0.5", ("lam", 0.5)),
    ("zero-head=true", ("zero_head", True)),
    ("gammas=[0.5, 0.7]", ("gammas", [0.5, 0.7])),
    ("gammas=0.5,0.7", ("gammas", [0.5, 0.7])),  # the form --gammas takes
    ("inner_optimizer=sgd", ("inner_optimizer", "sgd")),
    ("inner_optimizer=sgd,adam", ("inner_optimizer", "sgd,adam")),  # not numbers: text, for the learner to refuse
])
def test_hp_values_are_read_as_json_or_comma_separated_numbers(item, parsed) -> None:
    from fewshot.experiment import parse_hparam

    assert parse_hparam(item) == parsed


def test_hp_gammas_as_comma_separated_numbers_reach_the_teacher(tmp_path, data_root, session_cache) -> None:
    result = _run("fewshot", "train", "--algo", "lazy-maml", "--preset", "smoke", "--hp", "gammas=0.5,0.7",
                  "--out", str(tmp_path / "g"), "--json", str(tmp_path / "g.json"), "--data-dir", str(data_root),
                  "--cache-dir", str(session_cache), "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "g.json").read_text())
    assert saved["config"]["hparams"]["gammas"] == [0.5, 0.7]


def test_a_diverging_run_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path) -> None:
    from fewshot.experiment import load_learner

    out = tmp_path / "d"
    result = _run("fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--iterations", "20",
                  "--eval-every", "1", "--eval-tasks", "4", "--hp", "meta_lr=1e6", "--out", str(out), "--quiet")
    assert result.exit_code == 2, result.output
    assert "Error: maml meta-training diverged at iteration 2: the meta-loss is" in result.output
    assert "try smaller step sizes (--hp meta_lr=..., --hp inner_lr=...)" in result.output
    assert f"{out / 'checkpoint.pt'} still holds iteration 1" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    learner, _, meta = load_learner(out / "checkpoint.pt")  # written before the step that diverged
    assert meta["iteration"] == 1 and learner.iteration == 1


def test_test_tasks_that_diverge_are_named_in_a_warning(tmp_path) -> None:
    result = _run("fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--iterations", "3",
                  "--eval-tasks", "4", "--hp", "inner_lr=100", "--out", str(tmp_path / "w"))
    assert result.exit_code == 0, result.output
    assert "warning: 4 of 4 test tasks scored a non-finite mse: adaptation diverged on them" in result.stderr
    assert "nan" in result.stdout  # the table reports what was measured


def test_a_single_test_task_that_diverged_is_named_in_the_warning(capsys) -> None:
    """One non-finite task of three already makes the mean not a number worth comparing: the warning names it."""
    from fewshot.base import Evaluation
    from fewshot.cli import _warn_if_not_finite
    from lazyapps.progress import quiet_while

    with quiet_while(False):
        _warn_if_not_finite(Evaluation("mse", float("nan"), float("nan"), 3, None, [0.5, float("nan"), 0.25]))
        _warn_if_not_finite(Evaluation("mse", 0.375, 0.2, 2, None, [0.5, 0.25]))
    assert capsys.readouterr().err.splitlines() == [
        "warning: 1 of 3 test tasks scored a non-finite mse: adaptation diverged on them (a smaller inner learning rate "
        "or fewer steps may help)"]


def test_classification_tasks_that_diverge_are_named_in_a_warning_not_scored_at_chance(tmp_path, data_root, session_cache) -> None:
    # NaN logits have argmax 0: these tasks scored a plausible 20.00% ± 0.00% with no warning before
    here = ["--data-dir", str(data_root), "--cache-dir", str(session_cache)]
    result = _run("fewshot", "train", "--algo", "scratch", "--inner-lr", "1e30", "--preset", "smoke", "--out", str(tmp_path / "w"),
                  "--json", str(tmp_path / "w.json"), *here)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "w.json").read_text())  # scratch does not meta-train, whatever the preset's iterations
    assert saved["metrics"]["iterations"] == 0 and saved["config"]["iterations"] == 0
    warning = "warning: 4 of 4 test tasks scored a non-finite accuracy: adaptation diverged on them"
    assert warning in result.stderr and "nan% ± nan%" in result.stdout and "20.00%" not in result.stdout
    scored = _run("fewshot", "eval", "--checkpoint", str(tmp_path / "w" / "checkpoint.pt"), "--tasks", "3", *here)
    assert scored.exit_code == 0 and warning.replace("4 of 4", "3 of 3") in scored.stderr, scored.output


def test_a_resumed_run_that_diverges_names_the_checkpoint_it_resumed(tmp_path) -> None:
    out = tmp_path / "r"
    base = ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--eval-tasks", "4",
            "--eval-every", "100", "--out", str(out), "--quiet"]
    # meta_lr=1e6 is stored in the checkpoint: the first step's loss is still finite, the second's is not
    assert _run(*base, "--iterations", "1", "--hp", "meta_lr=1e6").exit_code == 0
    result = _run(*base, "--iterations", "20", "--resume", str(out / "checkpoint.pt"))
    assert result.exit_code == 2, result.output
    assert f"{out / 'checkpoint.pt'} still holds iteration 1" in result.output


def test_resume_refuses_a_hyperparameter_it_would_otherwise_ignore(tmp_path) -> None:
    out = tmp_path / "r"
    base = ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--eval-tasks", "2", "--out", str(out), "--quiet"]
    assert _run(*base, "--iterations", "1", "--hp", "meta_lr=0.002").exit_code == 0
    ckpt = out / "checkpoint.pt"
    before = ckpt.read_bytes()
    for flag in (("--inner-lr", "0.5"), ("--hp", "meta_lr=0.01")):
        result = _run(*base, "--iterations", "2", "--resume", str(ckpt), *flag)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert "was meta-trained with" in result.output and "--resume continues the checkpoint's hyperparameters" in result.output
        assert ckpt.read_bytes() == before
    # the same value again (in any spelling the parser reads), and the scoring-only eval_inner_steps, are accepted
    result = _run(*base, "--iterations", "2", "--resume", str(ckpt), "--hp", "meta_lr=2e-3", "--hp", "zero_head=False",
                  "--eval-inner-steps", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "checkpoint.pt.json").read_text())["hparams"]["eval_inner_steps"] == 3


def test_a_true_false_setting_given_as_text_is_read_as_meant(tmp_path) -> None:
    out = tmp_path / "t"
    result = _run("fewshot", "train", "--algo", "turtle", "--dataset", "sine", "--shots", "5", "--iterations", "1",
                  "--eval-tasks", "2", "--hp", "first_order=False", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "checkpoint.pt.json").read_text())["hparams"]["first_order"] is False


def test_resume_refuses_another_task_stream_and_no_new_iterations(tmp_path) -> None:
    out = tmp_path / "r"
    base = ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--eval-tasks", "2", "--out", str(out), "--quiet"]
    assert _run(*base, "--iterations", "2").exit_code == 0
    ckpt = out / "checkpoint.pt"
    before = ckpt.read_bytes()
    for extra, needle in ((["--queries", "3"], "was meta-trained with --queries 5; resume it with --queries 5"),
                          (["--meta-batch", "3"], "was meta-trained with --meta-batch 8; resume it with --meta-batch 8"),
                          (["--no-shuffle-classes"], "was meta-trained with --shuffle-classes; resume it with --shuffle-classes"),
                          (["--iterations", "2"], "is already at iteration 2; give --iterations above it")):
        args = [*base, "--resume", str(ckpt), *extra] + ([] if "--iterations" in extra else ["--iterations", "3"])
        result = _run(*args)
        assert result.exit_code == 2 and needle in result.output, (extra, result.output)
        assert ckpt.read_bytes() == before


def test_eval_refuses_what_it_would_ignore(trained, tmp_path) -> None:
    out, _, _, roots = trained
    common = ["--checkpoint", str(out / "run" / "checkpoint.pt"), "--data-dir", roots["data"], "--cache-dir", roots["cache"], "--quiet"]
    result = _run("fewshot", "eval", *common, "--queries", "0")
    assert result.exit_code == 2 and result.output.strip() == "Error: --queries must be positive, got 0"
    # eval has no --shots (the checkpoint fixes them): the hint names the one option it has
    result = _run("fewshot", "eval", *common, "--tasks", "5", "--queries", "30")
    assert result.exit_code == 2 and result.output.strip() == (
        "Error: shots + queries = 1 + 30 = 31 examples per class are needed, but the smallest class of omniglot-finn test "
        "split has 20; lower --queries to 19 or fewer")
    sine = tmp_path / "s"
    assert _run("fewshot", "train", "--algo", "maml", "--dataset", "sine", "--iterations", "1", "--eval-tasks", "2",
                "--out", str(sine), "--quiet").exit_code == 0
    result = _run("fewshot", "eval", "--checkpoint", str(sine / "checkpoint.pt"), "--split", "val", "--quiet")
    assert result.exit_code == 2 and "sine tasks are drawn afresh, not from class splits; leave out --split val" in result.output


def test_non_finite_scores_are_null_in_the_json(tmp_path) -> None:
    result = _run("fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--iterations", "1",
                  "--eval-tasks", "2", "--hp", "inner_lr=100", "--out", str(tmp_path / "n"), "--json", str(tmp_path / "n.json"))
    assert result.exit_code == 0, result.output
    text = (tmp_path / "n.json").read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["test"]["mean"] is None


def test_a_resumed_run_stays_in_its_checkpoints_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--eval-tasks", "2", "--quiet"]
    assert _run(*base, "--iterations", "1", "--out", "r", "--json", "r.json").exit_code == 0
    checkpoint = json.loads((tmp_path / "r.json").read_text())["metrics"]["checkpoint"]
    assert checkpoint == str(tmp_path.resolve() / "r" / "checkpoint.pt")  # the file it wrote, by a path that holds from anywhere
    result = _run(*base, "--iterations", "2", "--resume", "r/checkpoint.pt")  # no --out
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "checkpoint.pt.json").read_text())["iteration"] == 2
    assert not (tmp_path / "fewshot-runs").exists()
    # resumed into another run's folder: that run's checkpoint is not overwritten
    assert _run(*base, "--iterations", "1", "--out", "other").exit_code == 0
    before = (tmp_path / "other" / "checkpoint.pt").read_bytes()
    result = _run(*base, "--iterations", "3", "--resume", "r/checkpoint.pt", "--out", "other")
    assert result.exit_code == 2 and "other/checkpoint.pt already exists; pass --resume" in result.output, result.output
    assert (tmp_path / "other" / "checkpoint.pt").read_bytes() == before


def test_a_resume_takes_the_runs_preset_and_names_every_difference_of_another_one(tmp_path) -> None:
    out = tmp_path / "p"
    base = ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--out", str(out), "--quiet"]
    assert _run(*base, "--preset", "smoke").exit_code == 0
    result = _run(*base, "--resume", str(out / "checkpoint.pt"), "--iterations", "5", "--preset", "quick", "--eval-tasks", "2")
    assert result.exit_code == 2
    assert ("was meta-trained with --queries 2 --meta-batch 2; resume it with --queries 2 --meta-batch 2 "
            "(or the --preset smoke it was trained with)") in result.output
    assert _run(*base, "--resume", str(out / "checkpoint.pt"), "--iterations", "5", "--eval-tasks", "2").exit_code == 0
    # the run's own preset, given again, keeps the run's loop values (not the preset's 3 iterations)
    same = _run(*base, "--resume", str(out / "checkpoint.pt"), "--preset", "smoke", "--iterations", "6")
    assert same.exit_code == 0, same.output


def _record_task_sources(monkeypatch) -> list[dict]:
    """Every task_source call of a command (keyword arguments and the split), the real sampler still built."""
    from fewshot import datasets

    calls: list[dict] = []
    real = datasets.task_source

    def recording(name, **kwargs):
        calls.append({"name": name, **kwargs})
        return real(name, **kwargs)

    monkeypatch.setattr(datasets, "task_source", recording)
    return calls


def test_train_flags_reach_the_task_samplers_and_the_result(tmp_path, data_root, session_cache, monkeypatch) -> None:
    calls = _record_task_sources(monkeypatch)
    result = _run("fewshot", "train", "--algo", "reptile", "--ways", "3", "--shots", "2", "--preset", "smoke", "--seed", "5",
                  "--no-shuffle-classes", "--no-transductive", "--out", str(tmp_path / "r"), "--json", str(tmp_path / "r.json"),
                  "--data-dir", str(data_root), "--cache-dir", str(session_cache), "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    by_split = {c["split"]: c for c in calls}
    assert set(by_split) == {"train", "test"}
    common = {"name": "omniglot", "ways": 3, "queries": 2, "shuffle_classes": False}
    # meta-training: Nichol et al.'s 10 shots, the run's seed; scoring: the asked --shots on the fixed evaluation tasks
    assert by_split["train"].items() >= {**common, "shots": 10, "seed": 5}.items()
    assert by_split["test"].items() >= {**common, "shots": 2, "seed": 2017}.items()
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["metrics"]["test"]["transductive"] is False and saved["config"]["hparams"]["transductive"] is False
    assert saved["config"]["seed"] == 5 and saved["config"]["shuffle_classes"] is False
    row = next(line.split() for line in result.output.splitlines() if line.startswith("reptile"))
    assert row[-1] == "no"  # the "transductive BN" column


def test_eval_defaults_to_the_trained_queries_and_takes_split_tasks_and_transductive(trained, tmp_path, monkeypatch) -> None:
    out, _, _, roots = trained
    calls = _record_task_sources(monkeypatch)
    result = _run("fewshot", "eval", "--checkpoint", str(out / "run" / "checkpoint.pt"), "--split", "train", "--tasks", "3",
                  "--no-transductive", "--json", str(tmp_path / "e.json"), "--data-dir", roots["data"], "--cache-dir", roots["cache"], "--quiet")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0].items() >= {"split": "train", "ways": 5, "shots": 1, "queries": 2}.items()  # smoke: 2 queries
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["config"]["queries"] == 2 and saved["config"]["split"] == "train" and saved["metrics"]["test"]["tasks"] == 3
    row = next(line.split() for line in result.output.splitlines() if line.startswith("fomaml"))
    assert row[3] == "train" and row[-1] == "no"  # the split and "transductive BN" columns


def test_named_hyperparameter_flags_reach_the_learner(monkeypatch) -> None:
    from fewshot import experiment

    built = {}

    def stop(algo, **kwargs):
        built.update(kwargs)
        raise KeyboardInterrupt  # (stands in for the training that would follow)

    monkeypatch.setattr(experiment, "build_learner", stop)
    _run("fewshot", "train", "--algo", "lazy-maml", "--dataset", "sine", "--shots", "5", "--preset", "smoke",
         "--gammas", "0.5,0.7", "--inner-steps", "3", "--eval-inner-steps", "4", "--inner-lr", "0.02", "--meta-lr", "0.003",
         "--last", "2", "--quiet")
    assert built["gammas"] == (0.5, 0.7) and built["last"] == 2
    assert (built["inner_steps"], built["eval_inner_steps"], built["inner_lr"], built["meta_lr"]) == (3, 4, 0.02, 0.003)


def test_the_presets_are_the_documented_ones() -> None:
    from fewshot.cli import PRESETS

    assert PRESETS == {  # docs/fewshot.md, "Presets set the loop"
        "smoke": {"iterations": 3, "meta_batch": 2, "queries": 2, "eval_tasks": 4, "eval_every": 0},
        "quick": {"iterations": 300, "meta_batch": 8, "queries": 5, "eval_tasks": 200, "eval_every": 50},
        "paper": {"iterations": None, "meta_batch": None, "queries": 15, "eval_tasks": 1000, "eval_every": 1000},
    }


def _sine(out, *extra: str, algo: str = "maml"):
    return _run("fewshot", "train", "--algo", algo, "--dataset", "sine", "--shots", "5", "--eval-tasks", "2",
                "--out", str(out), "--quiet", *extra)


def test_train_scores_the_seeded_test_tasks_of_eval_whatever_seed_trained_it(tmp_path) -> None:
    """--seed draws the meta-training tasks only: train's final score is eval's on the same checkpoint (the fixed
    test tasks of EVAL_SEED), so runs of different seeds and algorithms are compared on the same tasks."""
    assert _sine(tmp_path / "r", "--iterations", "1", "--seed", "5", "--json", str(tmp_path / "t.json")).exit_code == 0
    result = _run("fewshot", "eval", "--checkpoint", str(tmp_path / "r" / "checkpoint.pt"), "--tasks", "2",
                  "--json", str(tmp_path / "e.json"), "--quiet")
    assert result.exit_code == 0, result.output
    trained, scored = (json.loads((tmp_path / name).read_text())["metrics"]["test"] for name in ("t.json", "e.json"))
    assert trained["tasks"] == scored["tasks"] == 2 and trained["mean"] == pytest.approx(scored["mean"], rel=1e-9)


def test_learning_curve_has_a_point_every_eval_every_iterations_and_one_at_the_end(tmp_path) -> None:
    result = _sine(tmp_path / "c", "--iterations", "4", "--eval-every", "2", "--json", str(tmp_path / "c.json"))
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "c.json").read_text())["metrics"]["curve"]
    assert [p["iteration"] for p in curve] == [2, 4]  # (the last iteration's point once, as the final evaluation)
    saved = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert [p["iteration"] for p in saved["curve"]] == [2, 4] and len(saved["history"]) == 4
    # the result's training metric: the mean over the (up to 20) last iterations, here all 4
    last20 = json.loads((tmp_path / "c.json").read_text())["metrics"]["train_last20"]
    assert last20["mse"] == pytest.approx(sum(h["mse"] for h in saved["history"]) / 4)
    # resumed 4 -> 7: history and curve carry on from the checkpoint's
    result = _sine(tmp_path / "c", "--iterations", "7", "--eval-every", "2", "--resume", str(tmp_path / "c" / "checkpoint.pt"))
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert [p["iteration"] for p in saved["curve"]] == [2, 4, 6, 7] and len(saved["history"]) == 7
    straight = _sine(tmp_path / "s", "--iterations", "7", "--eval-every", "2")
    assert straight.exit_code == 0, straight.output
    direct = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)
    assert saved["history"] == direct["history"]
    assert [p["iteration"] for p in direct["curve"]] == [2, 4, 6, 7]



def _interrupt_maml_at(monkeypatch, iteration: int, exc: type[BaseException]):
    """Make MAML's next step raise ``exc`` once ``iteration`` steps are done (Ctrl-C, or a crash, mid-run)."""
    from fewshot.base import get_learner

    cls = get_learner("maml")
    original = cls.train_step

    def interrupted(self, tasks):
        if self.iteration == iteration:
            raise exc
        return original(self, tasks)

    monkeypatch.setattr(cls, "train_step", interrupted)
    return lambda: monkeypatch.setattr(cls, "train_step", original)


def _same_weights(a, b) -> bool:
    a, b = torch.load(a, weights_only=True)["learner"], torch.load(b, weights_only=True)["learner"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def test_ctrl_c_saves_the_last_completed_iteration_and_says_how_to_resume(tmp_path, monkeypatch) -> None:
    restore = _interrupt_maml_at(monkeypatch, 2, KeyboardInterrupt)
    result = _sine(tmp_path / "i", "--iterations", "4")
    ckpt = tmp_path / "i" / "checkpoint.pt"
    assert result.exit_code == 130 and f"interrupted at iteration 2; saved {ckpt} (continue with --resume {ckpt})" in result.output
    assert json.loads((tmp_path / "i" / "checkpoint.pt.json").read_text())["iteration"] == 2
    assert len(torch.load(ckpt, weights_only=True)["history"]) == 2
    restore()
    assert _sine(tmp_path / "two", "--iterations", "2").exit_code == 0
    assert _same_weights(ckpt, tmp_path / "two" / "checkpoint.pt")  # the weights of the 2 completed iterations


def test_a_run_resumed_after_ctrl_c_equals_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    # The Ctrl-C lands inside iteration 3's step, after its meta-batch was drawn: the checkpoint must hold the
    # random states from before that draw, or --resume skips the batch.
    restore = _interrupt_maml_at(monkeypatch, 2, KeyboardInterrupt)
    ckpt = tmp_path / "i" / "checkpoint.pt"
    assert _sine(tmp_path / "i", "--iterations", "4", "--seed", "3").exit_code == 130
    restore()
    # --resume alone, as the Ctrl-C message says: algo, dataset, shots, seed and the 4 iterations are the run's
    resumed = _run("fewshot", "train", "--resume", str(ckpt), "--quiet", "--json", str(tmp_path / "i.json"))
    assert resumed.exit_code == 0, resumed.output
    assert _sine(tmp_path / "s", "--iterations", "4", "--seed", "3", "--json", str(tmp_path / "s.json")).exit_code == 0
    assert _same_weights(ckpt, tmp_path / "s" / "checkpoint.pt")
    config, straight = (json.loads((tmp_path / name).read_text())["config"] for name in ("i.json", "s.json"))
    assert config == straight
    assert config["iterations"] == 4 and config["seed"] == 3
    finished = _run("fewshot", "train", "--resume", str(ckpt))
    assert finished.exit_code == 2 and "is already at iteration 4; give --iterations above it" in finished.output
    seed = _run("fewshot", "train", "--resume", str(ckpt), "--iterations", "5", "--seed", "4")
    assert seed.exit_code == 2 and "was meta-trained with --seed 3; leave --seed out to resume it" in seed.output
    (tmp_path / "i" / "checkpoint.pt.json").rename(tmp_path / "i.meta")
    missing = _run("fewshot", "train", "--resume", str(ckpt))
    assert missing.exit_code == 2 and "has no metadata file beside it (checkpoint.pt.json)" in missing.output
    alone = _run("fewshot", "train", "--dataset", "sine")
    assert alone.exit_code == 2 and alone.output.strip() == "Error: --algo is required (or --resume CHECKPOINT, which takes the run's)"


def test_a_ctrl_c_during_a_learning_curve_point_is_made_up_on_resume(tmp_path, monkeypatch) -> None:
    # The checkpoint saved on that Ctrl-C holds iteration 2 without its curve point: --resume computes it first,
    # or the curve lacks it for good ([2, 4, 6, 10] where an uninterrupted run gives [2, 4, 6, 8, 10]).
    from fewshot.base import get_learner

    cls = get_learner("maml")
    original = cls.evaluate

    def interrupted(self, *args, **kwargs):
        if self.iteration == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    args = ["--iterations", "5", "--eval-every", "2", "--seed", "3"]
    monkeypatch.setattr(cls, "evaluate", interrupted)
    ckpt = tmp_path / "i" / "checkpoint.pt"
    result = _sine(tmp_path / "i", *args)
    assert result.exit_code == 130 and "interrupted at iteration 2" in result.output, result.output
    assert torch.load(ckpt, weights_only=True)["curve"] == []
    monkeypatch.setattr(cls, "evaluate", original)
    assert _run("fewshot", "train", "--resume", str(ckpt), "--quiet").exit_code == 0
    assert _sine(tmp_path / "s", *args).exit_code == 0
    resumed, straight = (torch.load(path, weights_only=True) for path in (ckpt, tmp_path / "s" / "checkpoint.pt"))
    assert [p["iteration"] for p in resumed["curve"]] == [2, 4, 5]
    assert resumed["curve"] == straight["curve"] and resumed["history"] == straight["history"]
    assert _same_weights(ckpt, tmp_path / "s" / "checkpoint.pt")


def test_resume_restores_the_global_random_stream_reptile_shuffles_with(tmp_path, monkeypatch) -> None:
    # Reptile shuffles each task's examples with torch's global generator: the checkpoint carries its state.
    # A run that crashes after its iteration-2 checkpoint, resumed, must equal the run that never stopped.
    from fewshot.base import get_learner

    cls = get_learner("reptile")
    original = cls.train_step

    def crashing(self, tasks):
        if self.iteration == 2:
            raise RuntimeError("the machine went away")
        return original(self, tasks)

    args = ["--iterations", "4", "--eval-every", "2"]
    monkeypatch.setattr(cls, "train_step", crashing)
    assert _sine(tmp_path / "p", *args, algo="reptile").exit_code == 1
    monkeypatch.setattr(cls, "train_step", original)
    ckpt = tmp_path / "p" / "checkpoint.pt"
    assert json.loads((tmp_path / "p" / "checkpoint.pt.json").read_text())["iteration"] == 2
    torch.manual_seed(123)  # whatever the process drew meanwhile
    assert _sine(tmp_path / "p", *args, "--resume", str(ckpt), algo="reptile").exit_code == 0
    assert _sine(tmp_path / "s", *args, algo="reptile").exit_code == 0
    assert _same_weights(ckpt, tmp_path / "s" / "checkpoint.pt")


def test_a_folder_dataset_is_recorded_absolute_so_eval_and_resume_work_from_any_folder(tmp_path, monkeypatch) -> None:
    import shutil

    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for c in range(2):
            (tmp_path / "myfs" / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * c + i, dtype=np.uint8)).save(tmp_path / "myfs" / split / f"c{c}" / f"{i}.png")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    base = ["fewshot", "train", "--algo", "fomaml", "--ways", "2", "--preset", "smoke", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert _run(*base, "--dataset", "folder:myfs").exit_code == 0
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert json.loads((tmp_path / "run" / "checkpoint.pt.json").read_text())["dataset"] == f"folder:{(tmp_path / 'myfs').resolve()}"
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = _run("fewshot", "eval", "--checkpoint", str(ckpt), "--tasks", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert result.exit_code == 0, result.output
    # --resume compares folders, not spellings: relative from here, or absolute, is the folder it was trained on
    for iterations, spelling in (("4", "folder:../myfs"), ("5", f"folder:{tmp_path / 'myfs'}")):
        result = _run(*base, "--dataset", spelling, "--resume", str(ckpt), "--iterations", iterations)
        assert result.exit_code == 0, (spelling, result.output)
    shutil.copytree(tmp_path / "myfs", tmp_path / "elsewhere" / "myfs")  # the same relative path here: another folder
    other = _run(*base, "--dataset", "folder:myfs", "--resume", str(ckpt), "--iterations", "6")
    assert other.exit_code == 2 and "was made with dataset='folder:" in other.output
    assert json.loads((tmp_path / "run" / "checkpoint.pt.json").read_text())["iteration"] == 5
    (tmp_path / "myfs" / "val" / "c0").mkdir(parents=True)  # a split of one class: eval has no --ways to lower
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(tmp_path / "myfs" / "val" / "c0" / f"{i}.png")
    result = _run("fewshot", "eval", "--checkpoint", str(ckpt), "--split", "val", "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2 and "the checkpoint's 2-way tasks need 2 classes, but" in result.output
    assert result.output.strip().endswith("has 1; score another --split") and "--ways" not in result.output


def _mixed_checkpoint(trained, tmp_path, *, keep_identity: bool = True, **edits):
    """A copy of the trained checkpoint whose .json has ``edits``; without ``keep_identity`` its .pt is one written
    before checkpoints recorded what they hold (only the iteration to compare)."""
    import shutil

    out = trained[0]
    ckpt = tmp_path / "checkpoint.pt"
    shutil.copy(out / "run" / "checkpoint.pt", ckpt)
    meta = json.loads((out / "run" / "checkpoint.pt.json").read_text())
    (tmp_path / "checkpoint.pt.json").write_text(json.dumps({**meta, **edits}))
    if not keep_identity:
        state = torch.load(ckpt, weights_only=True)
        del state["identity"]
        torch.save(state, ckpt)
    return ckpt


@pytest.mark.parametrize("keep_identity,edits,eval_flags,message", [
    # the .pt records what it holds: a .json that says otherwise is refused, also when --algo names the .pt's algo
    (True, {"algo": "maml"}, [], "and its metadata disagree: algo is 'fomaml' in the .pt but 'maml' in the .json; "
                                 "the .json was edited or belongs to another run; keep the .json written with the .pt"),
    (True, {"algo": "meta-sgd"}, ["--algo", "fomaml"], "and its metadata disagree: algo is 'fomaml' in the .pt but 'meta-sgd'"),
    (True, {"ways": 20}, [], "and its metadata disagree: ways is 5 in the .pt but 20 in the .json"),
    (True, {"arch": "resnet18"}, [], "and its metadata disagree: arch is 'conv4' in the .pt but 'resnet18' in the .json"),
    (False, {"iteration": 99}, [], "in the .pt but 99 in the .json"),  # (the iteration: 3, or 5 once another test resumed it)
    # an older .pt: what the metadata rebuilds does not take the hyperparameters, or the weights, in one line
    (False, {"algo": "meta-sgd"}, [], "'s metadata gives algo 'meta-sgd' hyperparameters it does not take (eval_inner_steps, "),
    (False, {"ways": 20}, [], " does not fit the fomaml learner on conv4 (20-way) its metadata describes: size mismatch for "
                              "model.head.weight: copying a param with shape torch.Size([5, 64]) from checkpoint, the shape in "
                              "current model is torch.Size([20, 64]) (and 1 more)"),
    (False, {"arch": "resnet18"}, [], " does not fit the fomaml learner on resnet18 (5-way) its metadata describes: missing key "),
    (False, {"algo": "foo"}, [], "'s metadata names an unknown algorithm 'foo'; valid: "),
])
def test_a_checkpoint_whose_metadata_does_not_match_is_refused_in_one_line(trained, tmp_path, keep_identity, edits, eval_flags,
                                                                         message) -> None:
    ckpt = _mixed_checkpoint(trained, tmp_path, keep_identity=keep_identity, **edits)
    before = ckpt.read_bytes()
    result = _run("fewshot", "eval", "--checkpoint", str(ckpt), *eval_flags, "--quiet")
    assert result.exit_code == 2 and result.output.startswith(f"Error: checkpoint {ckpt}"), result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("command", ["eval", "resume"])
@pytest.mark.parametrize("drop,edits,message", [
    ("dataset", {}, "'s metadata lacks the setting 'dataset'; the .json was edited or belongs to another run"),
    ("algo", {}, "'s metadata lacks the setting 'algo'"),
    ("iteration", {}, "'s metadata lacks the setting 'iteration'"),
    (None, {"shots": "x"}, "'s metadata gives shots='x', not of type int; the .json was edited"),
    (None, {"queries": "abc"}, "'s metadata gives queries='abc', not of type int"),
    (None, {"hparams": [1]}, "'s metadata gives hparams=[1], not of type dict"),
    (None, {"seed": "abc"}, "'s metadata gives seed='abc', not of type int"),
    (None, {"shuffle_classes": "no"}, "'s metadata gives shuffle_classes='no', not of type bool"),
])
def test_a_checkpoint_whose_metadata_lacks_or_garbles_a_setting_is_refused_in_one_line(trained, tmp_path, command, drop,
                                                                                      edits, message) -> None:
    ckpt = _mixed_checkpoint(trained, tmp_path, **edits)
    if drop:
        meta = json.loads((tmp_path / "checkpoint.pt.json").read_text())
        del meta[drop]
        (tmp_path / "checkpoint.pt.json").write_text(json.dumps(meta))
    args = (["eval", "--checkpoint", str(ckpt)] if command == "eval" else
            ["train", "--resume", str(ckpt), "--iterations", "9", "--out", str(tmp_path / "more")])
    result = _run("fewshot", *args, "--quiet")
    assert result.exit_code == 2 and result.output.startswith(f"Error: checkpoint {ckpt}"), result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_another_products_checkpoint_is_named_as_such(tmp_path, command) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"weights")
    (tmp_path / "checkpoint.pt.json").write_text(json.dumps({"kind": "longtail-train", "dataset": "cifar10", "model": "resnet32"}))
    args = ["eval", "--checkpoint", str(ckpt)] if command == "eval" else ["train", "--resume", str(ckpt)]
    result = _run("fewshot", *args, "--quiet")
    assert result.exit_code == 2 and result.output.strip() == (
        f"Error: checkpoint {ckpt} is a 'longtail-train' checkpoint, not a few-shot learner")


@pytest.mark.parametrize("algo", ["lazy-maml", "lazy-reptile"])
def test_a_lazy_learner_whose_student_diverges_stops_in_one_line(tmp_path, algo) -> None:
    result = _sine(tmp_path / "d", "--iterations", "3", "--inner-lr", "1e30", algo=algo)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip() == ("Error: every leap candidate of the lazy teacher scored NaN: the student diverged; "
                                     "lower its learning rate (--inner-lr); no checkpoint was written")


def test_ways_given_for_sine_regression_is_named_as_ignored(tmp_path) -> None:
    base = ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--shots", "5", "--preset", "smoke", "--quiet"]
    with pytest.warns(UserWarning, match=r"^--ways does not apply to sine regression \(one function per task\); ignored$"):
        result = _run(*base, "--ways", "3", "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "checkpoint.pt.json").read_text())["ways"] == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _run(*base, "--out", str(tmp_path / "b")).exit_code == 0
    assert not [w for w in caught if "--ways" in str(w.message)]  # the default --ways is not the user's: nothing to say


@pytest.mark.parametrize("call", [1, 2])  # the last learning-curve point, then the test tasks' scoring
def test_ctrl_c_while_the_trained_learner_is_scored_keeps_its_training(tmp_path, monkeypatch, call) -> None:
    from fewshot.base import get_learner

    cls = get_learner("maml")
    original, calls = cls.evaluate, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "evaluate", interrupted)
    result = _sine(tmp_path / "i", "--iterations", "3", "--eval-every", "0")
    ckpt = tmp_path / "i" / "checkpoint.pt"
    assert result.exit_code == 130, result.output
    assert (f"interrupted while scoring after iteration 3; saved {ckpt} (score it with lazyapps fewshot eval "
            f"--checkpoint {ckpt})") in result.output
    assert json.loads((tmp_path / "i" / "checkpoint.pt.json").read_text())["iteration"] == 3
    monkeypatch.setattr(cls, "evaluate", original)
    assert _sine(tmp_path / "s", "--iterations", "3", "--eval-every", "0").exit_code == 0
    assert _same_weights(ckpt, tmp_path / "s" / "checkpoint.pt")


@pytest.mark.parametrize("algo", ["reptile", "lazy-reptile"])
def test_zero_test_time_steps_with_an_adam_inner_loop_train_save_and_eval(tmp_path, algo) -> None:
    """--eval-inner-steps 0 (allowed: >= 0) scores θ unadapted; Reptile's Adam path crashed after training, saving nothing."""
    result = _sine(tmp_path / "z", "--iterations", "2", "--eval-inner-steps", "0", "--hp", "inner_optimizer=adam", algo=algo)
    assert result.exit_code == 0, result.output
    ckpt = tmp_path / "z" / "checkpoint.pt"
    assert json.loads((tmp_path / "z" / "checkpoint.pt.json").read_text())["hparams"]["eval_inner_steps"] == 0
    again = _run("fewshot", "eval", "--checkpoint", str(ckpt), "--tasks", "2", "--eval-inner-steps", "0", "--quiet",
                 "--json", str(tmp_path / "e.json"))
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "e.json").read_text())["config"]["hparams"]["eval_inner_steps"] == 0


def test_a_failure_while_the_trained_learner_is_scored_keeps_its_training(tmp_path, monkeypatch) -> None:
    from fewshot.base import get_learner

    def broken(self, *args, **kwargs):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(get_learner("maml"), "evaluate", broken)
    result = _sine(tmp_path / "f", "--iterations", "3", "--eval-every", "0")
    assert result.exit_code != 0 and isinstance(result.exception, RuntimeError)
    assert json.loads((tmp_path / "f" / "checkpoint.pt.json").read_text())["iteration"] == 3  # saved before the scoring
    monkeypatch.undo()
    assert _sine(tmp_path / "s", "--iterations", "3", "--eval-every", "0").exit_code == 0
    assert _same_weights(tmp_path / "f" / "checkpoint.pt", tmp_path / "s" / "checkpoint.pt")


@pytest.mark.parametrize("algo", ["imaml", "meta-sgd", "meta-lstm", "turtle"])
def test_eval_inner_steps_is_refused_for_learners_that_adapt_with_their_meta_trained_steps(tmp_path, algo) -> None:
    """They have no test-time step count (their update rule or rates are meta-trained for inner_steps): eval refuses the
    flag as train does, in one line, instead of blaming the checkpoint's metadata."""
    from fewshot.experiment import build_learner, checkpoint_metadata, load_learner, save_learner
    from lazyapps.errors import LazyAppsError

    learner = build_learner(algo, dataset="sine", ways=1)
    path = tmp_path / "checkpoint.pt"
    save_learner(path, learner, checkpoint_metadata(learner, arch="sine_mlp", dataset="sine", ways=1, shots=5))
    message = f"--eval-inner-steps does not apply to --algo {algo} (it takes: "
    with pytest.raises(LazyAppsError) as caught:
        load_learner(path, eval_inner_steps=3)
    assert str(caught.value).startswith(message) and "metadata" not in str(caught.value)
    assert load_learner(path, eval_inner_steps=None)[0].name == algo
    result = _run("fewshot", "eval", "--checkpoint", str(path), "--eval-inner-steps", "3", "--quiet")
    assert result.exit_code == 2 and result.output.startswith("Error: " + message), result.output
    assert len(result.output.strip().splitlines()) == 1
    train = _sine(tmp_path / "t", "--eval-inner-steps", "3", algo=algo)  # train's rule, which eval now shares
    assert train.exit_code == 2 and train.output.startswith("Error: " + message), train.output


def test_the_hyperparameters_with_flags_of_their_own_are_the_ones_train_has_flags_for() -> None:
    """Refusals name FLAG_HPARAMS as flags and every other hyperparameter as an --hp name: both must be real."""
    import fewshot.learners  # noqa: F401  (registers every learner)
    from fewshot.base import available, get_learner
    from fewshot.experiment import FLAG_HPARAMS

    import click

    group = cli.get_command(click.Context(cli), "fewshot")
    train = group.get_command(click.Context(group), "train")
    flags = {opt[2:] for p in train.params for opt in p.opts if opt.startswith("--")}
    names = set().union(*(get_learner(a).hparam_names() for a in available())) - {"vectorize", "transductive"}  # (every learner)
    assert {n.replace("_", "-") for n in FLAG_HPARAMS} == {n.replace("_", "-") for n in names} & flags


def test_train_defaults_are_the_documented_ones(tmp_path, monkeypatch) -> None:
    """``fewshot train --algo maml`` alone: Omniglot 5-way 1-shot (the help's defaults) on the quick preset's 5 queries,
    classes shuffled per task, seed 0; the samplers are recorded and nothing loads."""
    from fewshot import datasets

    calls: list[dict] = []

    def stop(name, **kwargs):
        calls.append({"name": name, **kwargs})
        raise KeyboardInterrupt  # (stands in for the data loading and training that would follow)

    monkeypatch.setattr(datasets, "task_source", stop)
    monkeypatch.chdir(tmp_path)
    _run("fewshot", "train", "--algo", "maml", "--quiet")
    assert len(calls) == 1 and calls[0].items() >= {"name": "omniglot", "split": "train", "ways": 5, "shots": 1, "queries": 5,
                                                    "shuffle_classes": True, "seed": 0}.items()


@pytest.mark.parametrize("algo, loop", [("maml", (70000, 25)), ("finetune", (1000, 4))])
def test_the_paper_preset_meta_trains_for_the_papers_iterations_and_meta_batch(tmp_path, monkeypatch, algo, loop) -> None:
    """--preset paper: the loop of the learner's paper (Finn et al.'s sine: 70,000 iterations of 25 tasks), 15 queries;
    where the paper gives none (the finetune baseline), docs/fewshot.md's 1,000 iterations of 4 tasks."""
    from fewshot.base import get_learner

    seen = {}

    def stop(self, source, *, iterations, meta_batch, **kwargs):
        seen.update(iterations=iterations, meta_batch=meta_batch, queries=source.queries)
        raise KeyboardInterrupt  # (stands in for the 70,000 iterations)

    monkeypatch.setattr(get_learner(algo), "meta_train", stop)
    result = _run("fewshot", "train", "--algo", algo, "--dataset", "sine", "--shots", "5", "--preset", "paper",
                  "--out", str(tmp_path / "p"), "--quiet")
    assert result.exit_code == 130, result.output
    assert seen == {"iterations": loop[0], "meta_batch": loop[1], "queries": 15}


def test_eval_draws_the_tasks_with_the_checkpoints_class_shuffling(trained, tmp_path, monkeypatch) -> None:
    """A --no-shuffle-classes run (Yin et al.'s memorization setting) is scored on tasks of one global class order."""
    from fewshot import datasets

    ckpt = _mixed_checkpoint(trained, tmp_path, shuffle_classes=False)
    calls: list[dict] = []

    def stop(name, **kwargs):
        calls.append(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "task_source", stop)
    _run("fewshot", "eval", "--checkpoint", str(ckpt), "--quiet")
    assert len(calls) == 1 and calls[0]["shuffle_classes"] is False and calls[0]["seed"] == 2017


def test_algos_lists_the_defaults_each_learner_is_built_with(tmp_path) -> None:
    """The listed defaults are what a learner built without hyperparameters holds (a subclass's own, e.g. finetune's
    100 test-time steps, not those of the class it extends)."""
    import re

    from fewshot.experiment import build_learner

    result = _run("fewshot", "algos", "--quiet", "--json", str(tmp_path / "a.json"))
    assert result.exit_code == 0, result.output
    listed = json.loads((tmp_path / "a.json").read_text())["metrics"]["defaults"]
    for algo, text in listed.items():
        built = build_learner(algo, dataset="sine", ways=1).hparams()
        names = re.findall(r"(?:^|, )(\w+)=", text)
        expected = ", ".join(f"{name}={tuple(built[name]) if isinstance(built[name], list) else built[name]}" for name in names)
        if "eval_inner_steps=None" in text:  # (None: as many steps as in meta-training)
            assert built["eval_inner_steps"] == built["inner_steps"], algo
            expected = expected.replace(f"eval_inner_steps={built['eval_inner_steps']}", "eval_inner_steps=None")
        if "freeze_body=None" in text:  # (None: frozen for classification, the whole network for regression)
            assert built["freeze_body"] is False
            assert build_learner(algo, dataset="omniglot", ways=5).hparams()["freeze_body"] is True
            expected = expected.replace("freeze_body=False", "freeze_body=None")
        assert text == expected, algo
    assert "zero_head" not in listed["finetune"]  # (finetune refuses it: its test heads start at zero anyway)


@pytest.mark.parametrize("name, what", [("checkpoint.pt", "the run's checkpoint.pt"),
                                        ("checkpoint.pt.json", "the .json of the run's checkpoint.pt")])
def test_a_json_output_naming_the_runs_own_checkpoint_is_refused_before_training(tmp_path, name, what) -> None:
    """--json written at the end over the checkpoint (or its metadata) the run just trained would lose the run."""
    out = tmp_path / "run"
    result = _sine(out, "--preset", "smoke", "--json", str(out / name))
    assert result.exit_code == 2 and result.output.strip() == (
        f"Error: {what} and --json name the same file {out / name}; give each output its own path"), result.output
    assert not out.exists()


@pytest.mark.parametrize("item", ["=0.5", " =0.5", "lam"])
def test_hp_items_without_a_name_or_a_value_are_refused(item) -> None:
    import re

    from fewshot.experiment import parse_hparam

    with pytest.raises(ValueError, match=re.escape(f"{item!r} is not NAME=VALUE, e.g. lam=0.5")):
        parse_hparam(item)


def test_metadata_giving_true_for_a_number_is_refused() -> None:
    """JSON true reads as a Python bool, which isinstance counts as an int: a hand-edited "ways": true is no 1-way run."""
    from fewshot.experiment import check_metadata
    from lazyapps.errors import CheckpointError

    meta = {"kind": "fewshot", "algo": "maml", "arch": "sine_mlp", "dataset": "sine", "ways": 1, "shots": 5, "iteration": 0}
    check_metadata("c.pt", {**meta, "shuffle_classes": False})
    for key in ("ways", "seed"):
        with pytest.raises(CheckpointError, match=f"c.pt's metadata gives {key}=True, not of type int"):
            check_metadata("c.pt", {**meta, key: True})


def test_a_regression_network_has_one_output_whatever_ways_says() -> None:
    from fewshot.experiment import build_model

    assert build_model("sine_mlp", dataset="sine", ways=5)(torch.zeros(3, 1)).shape == (3, 1)


def test_learners_are_built_and_loaded_on_the_device_asked_for_and_a_bad_override_is_the_callers(tmp_path) -> None:
    from fewshot.experiment import build_learner, checkpoint_metadata, load_learner, save_learner
    from lazyapps.errors import LazyAppsError

    assert {p.device.type for p in build_learner("maml", dataset="sine", ways=1, device="meta").parameters()} == {"meta"}
    learner = build_learner("maml", dataset="sine", ways=1)
    path = tmp_path / "checkpoint.pt"
    save_learner(path, learner, checkpoint_metadata(learner, arch="sine_mlp", dataset="sine", ways=1, shots=5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (loading weights into meta tensors is a no-op torch warns about)
        loaded, _, _ = load_learner(path, device="meta")
    assert {p.device.type for p in loaded.parameters()} == {"meta"}
    with pytest.raises(LazyAppsError) as caught:  # the caller's value, not the checkpoint's metadata, is wrong
        load_learner(path, eval_inner_steps=-1)
    assert str(caught.value) == "eval_inner_steps must be >= 0, got -1"
