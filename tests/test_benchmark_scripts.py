"""Every benchmark script runs through ``benchmarks/_script.run_script``: bad input is one line and exit code 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_runs_through_run_script(script):
    text = (REPO / "benchmarks" / script).read_text()
    assert "run_script(" in text.split('if __name__ == "__main__":', 1)[-1], f"{script} bypasses run_script"


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path):
    missing = tmp_path / "missing.npz"  # a local path: nothing is downloaded
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "longtail_cifar10.py"), "--smoke",
                           "--dataset", f"npz:{missing}", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Error: ") and str(missing) in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_smoke_run_writes_json_only_where_asked():
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _script import add_json_option, json_path
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    add_json_option(parser, "benchmarks/results/x.json")
    assert json_path(parser.parse_args([])) == "benchmarks/results/x.json"  # a full run updates the committed results
    assert json_path(parser.parse_args(["--smoke"])) is None  # a smoke run never overwrites them
    assert json_path(parser.parse_args(["--smoke", "--json", "/tmp/s.json"])) == "/tmp/s.json"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "longtail_cifar10.py"])
def test_every_script_with_committed_results_uses_the_shared_json_option(script):
    text = (REPO / "benchmarks" / script).read_text()
    common = (REPO / "benchmarks" / "_attack_common.py").read_text() if script.startswith("attack_") else ""
    assert "add_json_option(" in text + common and 'add_argument("--json"' not in text


def test_run_script_keeps_freed_memory_unless_told_not_to(monkeypatch):
    import lazyapps.allocator

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _script import run_script
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    calls = []
    monkeypatch.setattr(lazyapps.allocator, "keep_freed_memory", lambda: calls.append("kept"))
    run_script(lambda: calls.append("main"))
    run_script(lambda: calls.append("main"), allocator=False)
    assert calls == ["kept", "main", "main"]  # the allocator set before main, as `lazyapps ...` does
