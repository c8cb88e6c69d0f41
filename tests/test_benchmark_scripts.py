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
