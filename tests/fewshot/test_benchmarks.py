"""The few-shot benchmarks' --smoke sizes run end to end and write their JSON beside the papers' rows."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import fewshot_accuracy  # noqa: E402
import fewshot_memory  # noqa: E402
import fewshot_speed  # noqa: E402


def _common(data_root, session_cache, out):
    return ["--smoke", "--data-dir", str(data_root), "--cache-dir", str(session_cache), "--json", str(out)]


def test_memory_smoke_measures_both_learners_at_every_horizon(data_root, session_cache, tmp_path, capsys) -> None:
    out = tmp_path / "memory.json"
    fewshot_memory.main(_common(data_root, session_cache, out))
    metrics = json.loads(out.read_text())["metrics"]
    assert [row["k"] for row in metrics["rows"]] == [1, 2, 4]
    assert all(row["maml MiB"] > 0 for row in metrics["rows"])
    assert metrics["maml_grows"] is True  # second-order MAML keeps every step's graph
    assert "VmHWM" in capsys.readouterr().out


def test_speed_smoke_times_vmap_and_loop(data_root, session_cache, tmp_path) -> None:
    out = tmp_path / "speed.json"
    fewshot_speed.main(_common(data_root, session_cache, out))
    rows = {row["learner"]: row for row in json.loads(out.read_text())["metrics"]["rows"]}
    assert rows["maml"]["vmap tasks/s"] > 0 and rows["maml"]["loop tasks/s"] > 0
    assert "vmap tasks/s" not in rows["reptile (Adam inner, paper)"]


def test_accuracy_smoke_reports_every_learner_beside_the_papers(data_root, session_cache, tmp_path) -> None:
    out = tmp_path / "accuracy.json"
    fewshot_accuracy.main(_common(data_root, session_cache, out) + ["--hp", "lazy-reptile.inner-steps=3"])
    metrics = json.loads(out.read_text())["metrics"]
    rows = {row["learner"]: row for row in metrics["omniglot_5way_1shot"]}
    assert set(rows) == {"maml", "lazy-maml", "lazy-reptile", "finetune", "scratch"}
    assert all("note" not in row for row in rows.values()), rows
    assert rows["lazy-reptile"]["settings"] == "inner_steps=3" and rows["maml"]["settings"] == "paper"
    assert rows["maml"]["paper"] == 98.7 and rows["scratch"]["iterations"] == 0 and rows["finetune"]["iterations"] == 1
    sine = {row["learner"]: row for row in metrics["sine"]}
    assert sine["maml"]["paper"] == 1.13 and sine["maml"]["mean"] > 0


@pytest.mark.parametrize("item, message", [
    ("reptile.inner_optimizer=sgd.x", None),  # a value that is not JSON is kept as text: checked by the learner
    ("reptil.inner_lr=0.1", "expected LEARNER.NAME=VALUE with LEARNER one of"),
    ("reptile.inner_lr", "is not NAME=VALUE"),
    ("reptile.lam=1", "--hp lam does not apply to --algo reptile"),
])
def test_accuracy_overrides_are_checked_before_any_training(item, message, capsys) -> None:
    if message is None:
        assert fewshot_accuracy._overrides(argparse.ArgumentParser(), [item]) == {"reptile": {"inner_optimizer": "sgd.x"}}
        return
    with pytest.raises(SystemExit) as exc:
        fewshot_accuracy.main(["--hp", item, "--learners", "reptile", "--json", ""])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_budget_settings_are_valid_learner_settings_and_hp_still_wins() -> None:
    parser = argparse.ArgumentParser()
    merged = fewshot_accuracy._overrides(parser, ["lazy-maml.gammas=0.1,0.2", "maml.inner_lr=0.2"], budget=True)
    assert merged["lazy-maml"] == {"zero_head": True, "gammas": [0.1, 0.2]}  # --hp replaces the budget grid
    assert merged["reptile"] == {"inner_optimizer": "sgd", "inner_lr": 0.1}
    assert merged["lazy-reptile"] == {"zero_head": True, "meta_step_size": 4}
    assert merged["maml"] == {"inner_lr": 0.2}
    assert fewshot_accuracy._overrides(parser, []) == {}  # the papers' settings unless asked


@pytest.mark.parametrize("script, argv, message", [
    (fewshot_accuracy, ["--learners", "maml,nosuch"], "--learners: unknown learner 'nosuch'; valid: finetune, fomaml,"),
    (fewshot_accuracy, ["--sine-learners", "nosuch"], "--sine-learners: unknown learner 'nosuch'; valid: "),
    (fewshot_accuracy, ["--smoke", "--learners", "nosuch"], "--learners: unknown learner 'nosuch'"),  # --smoke once dropped it
    (fewshot_accuracy, ["--eval-tasks", "0"], "--eval-tasks: must be at least 1, got 0"),
    (fewshot_accuracy, ["--meta-batch", "0"], "--meta-batch: must be at least 1, got 0"),  # once the paper's 32, silently
    (fewshot_accuracy, ["--max-iterations", "-1"], "--max-iterations: must be at least 1, got -1"),
    (fewshot_accuracy, ["--minutes", "-1"], "--minutes: must be above 0, got -1"),
    (fewshot_memory, ["--steps", "1,0"], "--steps: must be at least 1, got 0"),
    (fewshot_memory, ["--steps", "abc"], "--steps: expected a whole number, got 'abc'"),
    (fewshot_memory, ["--smoke", "--ways", "0"], "--ways: must be at least 1, got 0"),
    (fewshot_speed, ["--threads", "0"], "--threads: must be at least 1, got 0"),
    (fewshot_speed, ["--smoke", "--meta-batch", "-2"], "--meta-batch: must be at least 1, got -2"),
])
def test_bad_names_and_counts_are_one_line_before_any_work(script, argv, message, tmp_path, capsys, monkeypatch) -> None:
    """Once a table row "not registered" with exit code 0, a traceback, or a nested report from the measuring child."""
    import lazyapps.runtime

    def no_work(*args, **kwargs):
        raise AssertionError("the benchmark's work started")

    monkeypatch.setattr(lazyapps.runtime, "resolve_device", no_work)  # the first step of every few-shot benchmark's work
    with pytest.raises(SystemExit) as exited:
        script.main([*argv, "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert exited.value.code == 2 and not captured.out
    assert captured.err.startswith(f"Error: {message}") and len(captured.err.strip().splitlines()) == 1, captured.err
    assert not (tmp_path / "r.json").exists()

