"""Every benchmark script runs through ``benchmarks/_script.run_script``: bad input is one line and exit code 2."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
sys.path.insert(0, str(REPO / "benchmarks"))

import _script  # noqa: E402


def _load(script: str):
    """A benchmark script as a module of its own name here (tests/fewshot imports some as plain modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", REPO / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _refused(script: str, argv: list[str], capsys, monkeypatch) -> str:
    """Run ``script`` as ``python benchmarks/SCRIPT ...`` runs it, failing the test if its work starts;
    returns its one stderr line after checking exit code 2 and nothing on stdout."""
    import lazyapps.runtime

    def no_work(*args, **kwargs):
        raise AssertionError(f"{script}: the work started")

    # Every script's work starts by resolving its device (scaling's and longtail's: right after parsing).
    monkeypatch.setattr(lazyapps.runtime, "resolve_device", no_work)
    module = _load(script)
    with pytest.raises(SystemExit) as exited:
        _script.run_script(lambda: module.main(argv), allocator=False)
    captured = capsys.readouterr()
    assert exited.value.code == 2 and not captured.out, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


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

    from _script import add_json_option, json_path

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

    from _script import run_script

    calls = []
    monkeypatch.setattr(lazyapps.allocator, "keep_freed_memory", lambda: calls.append("kept"))
    run_script(lambda: calls.append("main"))
    run_script(lambda: calls.append("main"), allocator=False)
    assert calls == ["kept", "main", "main"]  # the allocator set before main, as `lazyapps ...` does


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_reports_a_bad_flag_on_one_line_without_the_usage_block(script, capsys, monkeypatch):
    assert _refused(script, ["--no-such-flag"], capsys, monkeypatch) == "Error: unrecognized arguments: --no-such-flag"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_refuses_an_unwritable_json_before_any_work(script, tmp_path, capsys, monkeypatch):
    """Once a FileNotFoundError / IsADirectoryError traceback after the whole run."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    line = _refused(script, ["--smoke", "--json", str(folder)], capsys, monkeypatch)
    assert line == f"Error: --json {folder}: cannot write there ({folder} is a folder, not a file)"
    (tmp_path / "a-file").write_text("")
    under_file = tmp_path / "a-file" / "r.json"
    line = _refused(script, ["--smoke", "--json", str(under_file)], capsys, monkeypatch)
    assert line.startswith(f"Error: --json {under_file}: cannot write there (") and "is a file" in line


@pytest.mark.parametrize("script, argv, message", [
    ("scaling.py", ["--smoke", "--products", "fewshot,nosuch"],
     "--products: unknown product 'nosuch'; valid: attack, fewshot, longtail, longtail-local-bn"),  # once run as "attack"
    ("scaling.py", ["--procs", "1,0"], "--procs: must be at least 1, got 0"),
    ("scaling.py", ["--procs", "abc"], "--procs: expected a whole number, got 'abc'"),
    ("longtail_cifar10.py", ["--timing-steps", "0"], "--timing-steps: must be at least 1, got 0"),  # once a StatisticsError
    ("longtail_cifar10.py", ["--lr-decay", "0.1"], "--lr-decay: expected two comma-separated multipliers, got '0.1'"),
    ("longtail_cifar10.py", ["--gammas", "0.9,,0.8"],
     "--gammas: must be comma-separated numbers in [0, 1] such as 0.75,0.8,0.85, got '0.9,,0.8'"),
    ("longtail_cifar10.py", ["--model", "nosuchnet"], "--model: unknown model 'nosuchnet'; valid: conv4,"),
    ("attack_cifar.py", ["--n-images", "x"], "--n-images: expected a whole number, got 'x'"),
    # once refused only after the data was loaded, in the first meta worker
    ("longtail_cifar10.py", ["--ce-phase", "/nonexistent/ce_phase.pt"], "--ce-phase: checkpoint /nonexistent/ce_phase.pt does not exist"),
])
def test_bad_names_and_counts_are_refused_when_parsed(script, argv, message, capsys, monkeypatch):
    line = _refused(script, argv, capsys, monkeypatch)
    # (a message ending in "," is the start of a list of valid names, compared as a prefix)
    assert line.startswith(f"Error: {message}") if message.endswith(",") else line == f"Error: {message}"


@pytest.mark.parametrize("helper, text, message", [
    (_script.positive_int, "0", "must be at least 1, got 0"),
    (_script.positive_int, "1.5", "expected a whole number, got '1.5'"),
    (_script.non_negative_int, "-1", "must be at least 0, got -1"),
    (_script.positive_float, "0", "must be above 0, got 0"),
    (_script.positive_float, "inf", "expected a finite number, got 'inf'"),
    (_script.positive_float, "nan", "expected a finite number, got 'nan'"),  # no comparison refuses nan: --minutes nan never ends
    (_script.seed, str(2**32), f"must be in 0..{2**32 - 1}, got {2**32}"),
    (_script.positive_ints, "", "expected at least one number"),
    (_script.positive_ints, "1,,2", "expected a whole number, got ''"),
    (_script.names("thing", ["a", "b"]), "a,c", "unknown thing 'c'; valid: a, b"),
    (_script.names("thing", ["a", "b"]), " , ", "expected at least one thing"),
])
def test_the_type_helpers_refuse_with_a_message(helper, text, message):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
        helper(text)


def test_the_type_helpers_accept_what_they_should():
    assert _script.positive_ints(" 1, 5 ") == [1, 5] and _script.non_negative_int("0") == 0 and _script.seed("0") == 0
    assert _script.names("thing", lambda: ["a", "b"], allow_empty=True)("") == []  # a registry read when parsed
    assert _script.positive_float("0.5") == 0.5
    assert _script.seed(str(_script.SEED_MAX)) == 2**32 - 1  # the CLI's range includes its top
    assert _script.names("thing", ["a", "b"])(" a, b ") == ["a", "b"]  # "--methods 'lazy-meta, meta'" as typed


def test_flags_given_with_smoke_win_over_its_sizes():
    parser = _script.ScriptParser()
    parser.add_argument("--steps", type=_script.positive_ints, default="1,5")
    parser.add_argument("--threads", type=_script.positive_int, default=2)
    parser.add_smoke_option("seconds", steps="1,2", threads=1)
    assert "sets --steps 1,2, --threads 1 (a flag given explicitly wins)" in " ".join(parser.format_help().split())
    assert vars(parser.parse_args([])) == {"steps": [1, 5], "threads": 2, "smoke": False}
    assert vars(parser.parse_args(["--smoke"])) == {"steps": [1, 2], "threads": 1, "smoke": True}
    assert vars(parser.parse_args(["--smoke", "--threads", "2"])) == {"steps": [1, 2], "threads": 2, "smoke": True}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the machine has a GPU")
def test_scaling_refuses_cuda_without_a_gpu_before_torchrun():
    """Once torchrun's error dump from every worker."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--smoke", "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.strip().splitlines() == ["Error: --device cuda was asked for but no CUDA device is available; use --device cpu"]


def test_the_default_results_file_is_checked_when_parsed_unless_smoke_writes_none(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    default = str(tmp_path / "a-file" / "r.json")  # a committed results file that cannot be written
    parser = _script.ScriptParser()
    _script.add_json_option(parser, default)
    parser.add_smoke_option("seconds")
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"Error: --json {default}: cannot write there (")
    assert _script.json_path(parser.parse_args(["--smoke"])) is None  # a smoke run writes no JSON: nothing to check
    assert _script.json_path(parser.parse_args(["--json", str(tmp_path / "r.json")])) == str(tmp_path / "r.json")


def test_a_default_output_folder_is_checked_when_parsed(tmp_path, capsys):
    """argparse runs an action only for a flag given: an unwritable default --out is refused before any work too."""
    (tmp_path / "a-file").write_text("")
    default = str(tmp_path / "a-file" / "runs")
    parser = _script.ScriptParser()
    parser.add_argument("--out", default=default, action=_script.WritableFolder)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([])
    assert exited.value.code == 2 and capsys.readouterr().err.startswith(f"Error: --out {default}: cannot write there (")
    assert parser.parse_args(["--out", str(tmp_path / "runs")]).out == str(tmp_path / "runs")


def test_longtail_refuses_an_unreadable_ce_phase_before_any_work(tmp_path, capsys, monkeypatch):
    """Once after the data was loaded, in the first meta worker."""
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    line = _refused("longtail_cifar10.py", ["--smoke", "--ce-phase", str(tmp_path / "junk.pt")], capsys, monkeypatch)
    assert line.startswith(f"Error: --ce-phase: checkpoint {tmp_path / 'junk.pt'} cannot be read (")
    line = _refused("longtail_cifar10.py", ["--smoke", "--ce-phase", str(tmp_path)], capsys, monkeypatch)
    assert line == f"Error: --ce-phase: checkpoint {tmp_path} is a folder, not a file"


def test_scaling_passes_a_workers_refusal_on_as_one_line(tmp_path):
    """Once torchrun's 36-line report of the failed worker and exit code 1."""
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "data"  # no data, and no download: nothing can be made under a file
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--smoke", "--products", "longtail",
                           "--procs", "1", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: dataset 'cifar10' not found") and str(data_dir) in lines[0], done.stderr


_TORCHRUN_REPORT = """E1125 16:15:16.437000 5258 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: {code}) local_rank: 0
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
/work/main/benchmarks/scaling.py FAILED
------------------------------------------------------------
Failures:
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 5913)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : {code} (pid: 5912)
============================================================
"""


@pytest.mark.parametrize("returncode, stderr, refused", [
    (2, "Error: no data here\n", "no data here"),  # the script run again (fewshot_memory's child)
    (1, "Error: no data here\n" + _TORCHRUN_REPORT.format(code=2), "no data here"),  # torchrun's workers (scaling's)
    (1, "Error: no data here\n" + _TORCHRUN_REPORT.format(code=1), None),  # the first worker crashed: the whole report
    (1, "Error: no data here\n" + _TORCHRUN_REPORT.format(code=-9), None),  # the first worker was killed (out of memory)
    (1, "Traceback (most recent call last):\nValueError: Error: x\n", None),  # a crash, not a refusal
    (2, "Error: early\nTraceback (most recent call last):\nRuntimeError\n", None),  # refused line not last: a crash after it
    (0, "Error: only a warning\n", None),
])
def test_a_childs_refusal_is_told_from_its_crash(returncode, stderr, refused):
    from lazyapps.errors import LazyAppsError

    proc = subprocess.CompletedProcess(["child"], returncode, stdout="", stderr=stderr)
    assert _script.child_refusal(proc) == refused
    if refused is None:
        _script.pass_on_child_refusal(proc)  # returns: the caller reports the failure in full
    else:
        with pytest.raises(LazyAppsError, match=f"^{refused}$"):
            _script.pass_on_child_refusal(proc)


def test_clock_waits_for_cuda_work_and_nothing_else(monkeypatch):
    import torch

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(torch.device(device)))
    before = _script.clock("cpu")
    assert waited == []
    after = _script.clock("cuda:0")
    assert waited == [torch.device("cuda:0")] and after >= before


@pytest.mark.parametrize("threads_flag, threads", [([], {1: 4, 2: 2, 3: 1}), (["--threads", "1"], {1: 1, 2: 1, 3: 1})])
def test_scaling_speedups_are_throughputs_over_one_processs(threads_flag, threads, tmp_path, monkeypatch, capsys):
    """scaling.py's table and JSON from its torchrun runs (replaced: each writes the rows its workers would)."""
    import json
    import os

    scaling = _load("scaling.py")
    seconds = {("fewshot", 1): 4.0, ("fewshot", 2): 2.5, ("fewshot", 3): 2.0, ("attack", 1): 2.0, ("attack", 2): 4.0, ("attack", 3): 2.0}
    launched = []

    def run(cmd, env, **kwargs):
        flag = {name: cmd[cmd.index(name) + 1] for name in ("--nproc_per_node", "--worker-out", "--products", "--threads")}
        n = int(flag["--nproc_per_node"])
        launched.append((n, int(flag["--threads"]), int(env["OMP_NUM_THREADS"]), "--smoke" in cmd))
        rows = [{"product": p, "processes": n, "work": 12, "unit": "u/s", "seconds": seconds[p, n], "setting": "s",
                 "throughput": 12 / seconds[p, n]} for p in flag["--products"].split(",")]
        Path(flag["--worker-out"]).write_text(json.dumps(rows))
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(scaling, "subprocess", type("FakeSubprocess", (), {"run": staticmethod(run)}))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    out = tmp_path / "scaling.json"
    scaling.main(["--smoke", "--procs", "1,2,3", "--products", "fewshot,attack", "--json", str(out), *threads_flag])
    assert launched == [(n, threads[n], threads[n], True) for n in (1, 2, 3)]  # cores / processes unless --threads
    rows = json.loads(out.read_text())["metrics"]["rows"]
    assert [(r["product"], r["processes"], r["threads_per_process"]) for r in rows] == [
        (p, n, threads[n]) for n in (1, 2, 3) for p in ("fewshot", "attack")]
    assert [r["speedup"] for r in rows] == pytest.approx([1, 1, 1.6, 0.5, 2, 1])  # seconds at 1 process / at n
    table = [line.split() for line in capsys.readouterr().out.splitlines()[3:]]
    assert [(line[0], line[1], line[6]) for line in table] == [
        (r["product"], str(r["processes"]), f"{r['speedup']:.2f}x") for r in rows]


def test_scaling_fewshot_work_is_the_tasks_of_the_timed_iterations(monkeypatch):
    """The tasks/s numerator: the meta-batches the timed meta_train ran, the warm-up not among them."""
    import fewshot

    scaling = _load("scaling.py")
    learners = []
    real = fewshot.create_learner
    monkeypatch.setattr(fewshot, "create_learner", lambda *a, **k: learners.append(real(*a, **k)) or learners[-1])
    done = []

    def timed(fn):  # the meta-iterations done before and after the timed call
        done.append(learners[0].iteration)
        fn()
        done.append(learners[0].iteration)
        return 1.0

    monkeypatch.setattr(scaling, "_timed", timed)
    row = scaling._fewshot({"dataset": "sine", "meta_batch": 3, "iterations": 2}, "cpu", None, None)
    assert done == [1, 3] and row["work"] == (done[1] - done[0]) * 3 and row["unit"] == "tasks/s"


def test_scaling_worker_rows_are_work_per_second_with_each_products_batchnorm(tmp_path, monkeypatch):
    """A worker outside torchrun (one process): the products' timings (replaced) become rows of work / seconds."""
    import argparse
    import json

    scaling = _load("scaling.py")
    batchnorms = []
    monkeypatch.setattr(scaling, "_fewshot", lambda size, *a: {"work": 12, "unit": "tasks/s", "seconds": 4.0, "setting": "f"})

    def longtail(size, *args, batchnorm):
        batchnorms.append(batchnorm)
        return {"work": 30, "unit": "images/s", "seconds": 2.0, "setting": "l"}

    monkeypatch.setattr(scaling, "_longtail", longtail)
    out = tmp_path / "rows.json"
    scaling.worker(argparse.Namespace(threads=1, device="cpu", smoke=True, products=["fewshot", "longtail", "longtail-local-bn"],
                                      data_dir=None, cache_dir=None, scratch=str(tmp_path), worker_out=str(out)))
    rows = json.loads(out.read_text())
    assert [(r["product"], r["processes"], r["throughput"]) for r in rows] == [
        ("fewshot", 1, 3.0), ("longtail", 1, 15.0), ("longtail-local-bn", 1, 15.0)]
    assert batchnorms == ["global", "local"]  # the whole batch's statistics unless -local-bn
