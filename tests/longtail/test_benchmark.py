"""The CIFAR-LT benchmark script keeps working: its --smoke size runs, prints the table and writes JSON."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # main() sets this process's torch threads (1 with --jobs > 1) as a script should; tests after these must not
    # inherit it (a float32 comparison elsewhere rounds differently on one thread).
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load_benchmark():
    if str(REPO / "benchmarks") not in sys.path:  # its _script helpers sit beside it, as when run as a script
        sys.path.insert(0, str(REPO / "benchmarks"))
    # Under its own name, so --jobs's spawned workers can import it by that name to run its functions.
    spec = importlib.util.spec_from_file_location("longtail_cifar10", REPO / "benchmarks" / "longtail_cifar10.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["longtail_cifar10"] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke(data_root, tmp_path, capsys):
    bench = _load_benchmark()
    out = bench.main(["--smoke", "--data-dir", str(data_root), "--out", str(tmp_path), "--n-max", "30", "--imbalance", "10",
                      "--methods", "ce,cb-ce,ldam-drw,logit-adjust,two-component,lazy-two-component"])
    printed = capsys.readouterr().out
    assert "REDUCED BUDGET" in printed and "58.67/53.46/48.24/43.68" in printed and "budget 4x" in printed
    assert set(out["results"]) == {"ce", "cb-ce", "ldam-drw", "logit-adjust", "two-component", "lazy-two-component"}
    # the meta methods continue the CE run: their first epoch is the CE run's first epoch
    assert out["results"]["lazy-two-component"]["history"][0] == out["results"]["ce"]["history"][0]
    assert out["results"]["lazy-two-component"]["history"][-1]["meta"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["cost"]["lazy_over_ce"] > 0 and saved["paper_cifar100_lt"]["ce"][1] == 61.68


def test_benchmark_meta_runs_from_a_saved_ce_phase_in_parallel_jobs(data_root, tmp_path):
    # --ce-phase without "ce" among the methods: the worker pool must start the meta runs at once
    bench = _load_benchmark()
    common = ["--smoke", "--data-dir", str(data_root), "--n-max", "30", "--imbalance", "10"]
    first = bench.main(common + ["--out", str(tmp_path / "ce"), "--methods", "ce"])
    again = bench.main(common + ["--out", str(tmp_path / "meta"), "--methods", "two-component,l2rw", "--jobs", "2",
                                 "--ce-phase", str(tmp_path / "ce" / "ce_phase.pt")])
    assert set(again["results"]) == {"two-component", "l2rw"}
    for run in again["results"].values():
        assert run["history"][0] == first["results"]["ce"]["history"][0] and run["history"][-1]["meta"]
