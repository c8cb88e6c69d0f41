import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from lazyapps import __version__
from lazyapps.cli import COMMANDS, Int64, LazyGroup, apply_preset, cli, common_options, gammas_option
from lazyapps.errors import LazyAppsError, UnknownNameError


def test_help_does_not_import_torch():
    code = "import sys; from lazyapps.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    for name in COMMANDS:
        assert name in out


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def _demo_group():
    @click.group(cls=LazyGroup)
    def group():
        pass

    @group.command()
    @common_options
    @click.option("--fail", is_flag=True)
    @click.option("--disk-full", is_flag=True)
    @click.option("--raise", "raised", default=None)
    def demo(run, fail, disk_full, raised):
        if fail:
            raise UnknownNameError("model", "nosuchnet", ["net4", "lenet5"])
        if raised:
            raise {"memory": MemoryError(), "bug": RuntimeError("a bug, not the machine"),
                   "cpu": RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                                       "memory: you tried to allocate 16000000000032 bytes. Error code 12 (Cannot allocate memory)"),
                   "cuda": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                                  "capacity of 79.19 GiB of which 1.2 GiB is free."),
                   "interrupt": KeyboardInterrupt()}[raised]
        if disk_full:
            import errno
            import os

            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/checkpoint.pt")
        run.finish({"x": 1}, {"seed": run.seed}, table="table here")

    return group


def test_user_errors_are_one_line_without_traceback():
    result = CliRunner().invoke(_demo_group(), ["demo", "--fail"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: unknown model 'nosuchnet'; valid: lenet5, net4"


def test_ctrl_c_before_a_command_handles_it_is_one_line_and_the_shells_exit_code():
    # (click's own handling would print "Aborted!" and exit 1, unlike a command's Ctrl-C during its work)
    result = CliRunner().invoke(_demo_group(), ["demo", "--raise", "interrupt"])
    assert result.exit_code == 130 and result.output.strip() == "Error: interrupted (Ctrl-C) before any result was written"


def test_the_machines_refusals_are_one_line_too(tmp_path):
    result = CliRunner().invoke(_demo_group(), ["demo", "--disk-full"])
    assert result.exit_code == 2 and result.output.strip() == "Error: No space left on device: /runs/checkpoint.pt"


@pytest.mark.parametrize("raised, asked", [
    ("memory", "MemoryError"),
    ("cpu", "16,000,000,000,032 bytes asked for"),
    ("cuda", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
             "of which 1.2 GiB is free."),
])
def test_running_out_of_memory_is_one_line_and_other_runtime_errors_are_not_hidden(raised, asked):
    result = CliRunner().invoke(_demo_group(), ["demo", "--raise", raised])
    assert result.exit_code == 2 and result.output.strip() == (
        f"Error: out of memory ({asked}); ask for less at once: a smaller batch, meta-batch, number of shots, queries, "
        f"tasks or images")
    bug = CliRunner().invoke(_demo_group(), ["demo", "--raise", "bug"])
    assert bug.exit_code == 1 and isinstance(bug.exception, RuntimeError)


def test_a_command_that_asks_for_more_memory_than_the_machine_has_says_so_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--preset", "smoke",
                                      "--meta-batch", str(10**13), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2 and result.output.startswith("Error: out of memory ("), result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["demo", "--seed", "x"], "Error: Invalid value for '--seed': 'x' is not a valid integer range. (see 'group demo --help')"),
    (["demo", "--nosuch"], "Error: No such option '--nosuch'. (see 'group demo --help')"),
    (["nosuch"], "Error: No such command 'nosuch'. (see 'group --help')"),
    (["--nosuch"], "Error: No such option '--nosuch'. (see 'group --help')"),
])
def test_usage_mistakes_are_one_error_line_too(args, message):
    result = CliRunner().invoke(_demo_group(), args, prog_name="group")
    assert result.exit_code == 2 and result.output.strip() == message


def test_a_group_without_its_command_still_shows_its_help():
    result = CliRunner().invoke(cli, ["longtail"])
    assert result.exit_code == 2 and "Usage: cli longtail" in result.output and "train" in result.output


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "-1 is not in the range 0<=x<=4294967295"),
    (["--seed", "99999999999999999999"], "is not in the range 0<=x<=4294967295"),
    (["--json", "{tmp}/afile/r.json"], "Error: --json {tmp}/afile/r.json: cannot write there ({tmp}/afile is a file, so nothing can be made under it)"),
    (["--cache-dir", "{tmp}/afile/cache"], "Error: --cache-dir {tmp}/afile/cache: cannot create it ({tmp}/afile is a file, so "
                                           "nothing can be made under it); pass a --cache-dir you can write to"),
])
def test_global_options_refuse_what_cannot_work_before_the_command_runs(tmp_path, args, message):
    (tmp_path / "afile").write_text("")
    args, message = [a.replace("{tmp}", str(tmp_path)) for a in args], message.replace("{tmp}", str(tmp_path))
    result = CliRunner().invoke(_demo_group(), ["demo", *args])
    assert result.exit_code == 2 and message in result.output and "table here" not in result.output


def test_check_writable_names_why(tmp_path):
    from lazyapps.paths import check_writable

    (tmp_path / "f").write_text("")
    assert check_writable(tmp_path / "new" / "deeper" / "r.json") is None  # folders are made when written
    assert check_writable(tmp_path / "f") is None and check_writable(tmp_path, folder=True) is None
    assert check_writable(tmp_path, folder=False) == f"{tmp_path} is a folder, not a file"
    assert check_writable(tmp_path / "f", folder=True) == f"{tmp_path / 'f'} is a file, not a folder"
    assert check_writable(tmp_path / "f" / "x") == f"{tmp_path / 'f'} is a file, so nothing can be made under it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # the probes left nothing behind
    # "~" is not expanded here, as the writers do not expand it: checked and written are the same place
    (tmp_path / "~").write_text("")
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert check_writable("~/r.json") == f"{tmp_path / '~'} is a file, so nothing can be made under it"
    finally:
        os.chdir(cwd)


def test_check_writable_refuses_to_overwrite_a_checkpoint_or_its_metadata(tmp_path):
    import torch

    from lazyapps.checkpoint import save_checkpoint
    from lazyapps.paths import check_writable

    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint.pt", {"w": torch.zeros(2)}, {"epoch": 3})
    meta = tmp_path / "run" / "checkpoint.pt.json"
    assert check_writable(ckpt) == f"{ckpt} is a lazyapps checkpoint, which this would overwrite; give the output another path"
    assert check_writable(meta) == (f"{meta} is the metadata of checkpoint checkpoint.pt, which this would overwrite; "
                                    "give the output another path")
    assert check_writable(ckpt.parent, folder=True) is None  # a run folder is resumed into, not refused
    # results files, a .pt without lazyapps metadata and a .json that is not a checkpoint's stay writable
    (tmp_path / "r.json").write_text('{"command": "x", "format": "other"}')
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "list").write_text("")
    assert all(check_writable(tmp_path / name) is None for name in ("r.json", "w.pt", "list.json", "list"))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where nothing can be created")
def test_check_writable_probes_rather_than_trusting_permission_bits():
    from lazyapps.paths import check_writable

    # root passes every permission check, but /proc takes no new files: only a real probe tells
    assert check_writable("/proc/lazyapps-results/r.json").startswith("cannot write in /proc:")  # (root: "it takes no new files")


def test_distinct_outputs_refuses_two_options_naming_one_file(tmp_path, monkeypatch):
    from lazyapps.cli import distinct_outputs

    monkeypatch.chdir(tmp_path)
    distinct_outputs({"--json": "r.json", "--csv": "r.csv", "--plot": None})
    with pytest.raises(LazyAppsError, match=r"^--json and --csv name the same file sub/../r.json; give each output its own path$"):
        distinct_outputs({"--json": "./r.json", "--csv": "sub/../r.json"})
    (tmp_path / "link.json").symlink_to(tmp_path / "r.json")
    with pytest.raises(LazyAppsError, match="--json and --plot name the same file"):
        distinct_outputs({"--json": str(tmp_path / "r.json"), "--plot": "link.json"})


@pytest.mark.parametrize("args", [
    ["compare", "{tmp}/a.json", "--csv", "{tmp}/out.json", "--json", "{tmp}/out.json"],
    ["longtail", "eval", "--checkpoint", "{tmp}/a.json", "--per-class-csv", "{tmp}/o.png", "--plot", "{tmp}/o.png"],
    ["fewshot", "eval", "--checkpoint", "{tmp}/a.json", "--json", "{tmp}/o.png", "--plot", "{tmp}/o.png"],
])
def test_every_command_refuses_two_outputs_naming_one_file_before_any_work(tmp_path, args):
    (tmp_path / "a.json").write_text("{}")
    result = CliRunner().invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2 and "name the same file" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not list(tmp_path.glob("o*"))


def test_common_options_write_json(tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(_demo_group(), ["demo", "--seed", "7", "--json", str(out), "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "table here" in result.output
    import json

    data = json.loads(out.read_text())
    assert data["command"] == "demo" and data["metrics"] == {"seed": 7}


def test_presets_and_overrides():
    presets = {"smoke": {"epochs": 1, "lr": 0.1}, "quick": {"epochs": 5, "lr": 0.1}}
    assert apply_preset(presets, "quick", {"epochs": None, "lr": 0.01}) == {"epochs": 5, "lr": 0.01}
    with pytest.raises(LazyAppsError, match="unknown preset 'paper'; valid: quick, smoke"):
        apply_preset(presets, "paper", {})


def test_an_explicit_zero_or_false_overrides_the_preset():
    # e.g. fewshot --eval-every 0 ("only at the end") under the quick preset's 50; only None means "not given"
    presets = {"quick": {"eval_every": 50, "augment": True, "lr": 0.1}}
    assert apply_preset(presets, "quick", {"eval_every": 0, "augment": False, "lr": None}) == {"eval_every": 0, "augment": False, "lr": 0.1}


def test_seed_seeds_torch_numpy_and_random_before_the_command_runs(tmp_path):
    import json
    import random

    import numpy as np
    import torch

    @click.command()
    @common_options
    def draw(run):
        run.finish({}, {"draws": [torch.rand(1).item(), float(np.random.rand()), random.random()]})

    def draws(seed, name):
        out = tmp_path / f"{name}.json"
        assert CliRunner().invoke(draw, ["--seed", str(seed), "--json", str(out), "--quiet", "--device", "cpu"]).exit_code == 0
        return json.loads(out.read_text())["metrics"]["draws"]

    first, again, other = draws(1, "first"), draws(1, "again"), draws(2, "other")
    assert first == again and all(a != b for a, b in zip(first, other))


def test_distinct_outputs_refuses_an_output_naming_a_file_to_keep(tmp_path, monkeypatch):
    from lazyapps.cli import distinct_outputs

    monkeypatch.chdir(tmp_path)
    keep = {"--resume": "run/checkpoint.pt", "the run's checkpoint.pt": "./run/checkpoint.pt"}  # (kept files may coincide)
    distinct_outputs({"--json": "r.json"}, keep=keep)
    with pytest.raises(LazyAppsError, match=r"^the run's checkpoint.pt and --json name the same file run/../run/checkpoint.pt; give"):
        distinct_outputs({"--json": "run/../run/checkpoint.pt"}, keep=keep)


@pytest.mark.parametrize("args", [
    ["compare", "{tmp}/a.json", "{tmp}/b.json", "--csv", "{tmp}/b.json"],
    ["longtail", "train", "--dataset", "cifar10", "--preset", "smoke", "--model", "lenet5", "--out", "{tmp}/run",
     "--per-class-csv", "{tmp}/run/best.pt"],
    ["longtail", "train", "--resume", "{tmp}/l.pt", "--out", "{tmp}/run", "--json", "{tmp}/l.pt.json"],
    ["longtail", "eval", "--checkpoint", "{tmp}/c.pt", "--json", "{tmp}/c.pt.json"],
    ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--preset", "smoke", "--out", "{tmp}/run", "--json",
     "{tmp}/run/checkpoint.pt.json"],
    ["fewshot", "train", "--resume", "{tmp}/c.pt", "--json", "{tmp}/c.pt"],
    ["fewshot", "eval", "--checkpoint", "{tmp}/c.pt", "--json", "{tmp}/c.pt.json"],
    ["zoo", "eval", "--checkpoint", "{tmp}/c.pt", "--json", "{tmp}/c.pt.json"],
])
def test_no_output_may_overwrite_a_checkpoint_or_a_compared_result_the_command_reads_or_writes(tmp_path, args):
    # (--resume reads its checkpoint's settings first)
    meta = '{"kind": "fewshot", "algo": "maml", "arch": "sine_mlp", "dataset": "sine", "ways": 1, "shots": 5, "iteration": 1}'
    kept = {"a.json": "{}", "b.json": "{}", "c.pt": "weights", "c.pt.json": meta, "run/checkpoint.pt.json": "{}", "run/best.pt": "w",
            "l.pt.json": '{"kind": "longtail-train", "dataset": "cifar10", "method": "ce"}'}
    for name, text in kept.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    torch.save({"optimizer": {}}, tmp_path / "l.pt")
    kept["l.pt"] = (tmp_path / "l.pt").read_bytes()
    result = CliRunner().invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2 and "name the same file" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert all(getattr(tmp_path / name, "read_bytes" if isinstance(v, bytes) else "read_text")() == v for name, v in kept.items())


@pytest.mark.parametrize("text, parsed", [
    (None, None), ("0.8", (0.8,)), ("0.75,0.8, 0.95", (0.75, 0.8, 0.95)), ("0,1", (0.0, 1.0)),
    ("", "refused"), ("0.5,,0.7", "refused"), ("0.5,", "refused"), ("0.9,1.5", "refused"), ("-0.1", "refused"),
    ("nan", "refused"), ("0.5;0.7", "refused"),
])
def test_one_gamma_grid_parser_for_every_lazy_command(text, parsed):
    # (longtail and fewshot both take --gammas through it: an empty entry is a typo, refused by both alike)
    if parsed == "refused":
        with pytest.raises(click.BadParameter, match=r"comma-separated numbers in \[0, 1\].*got"):
            gammas_option(None, None, text)
    else:
        assert gammas_option(None, None, text) == parsed


def _every_command():
    """(path, click command) of every leaf command, product groups loaded."""
    ctx = click.Context(cli)
    out = []
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        if isinstance(command, click.Group):
            sub = click.Context(command, parent=ctx)
            out += [((name, s), command.get_command(sub, s)) for s in command.list_commands(sub)]
        else:
            out.append(((name,), command))
    return out


def test_every_integer_option_is_bounded_to_int64():
    """A bare ``type=int`` takes any Python int, which overflows (with a traceback) where torch needs int64."""
    unbounded = [(path, p.opts[0]) for path, command in _every_command() for p in command.params
                 if isinstance(p.type, click.types.IntParamType) and not isinstance(p.type, (Int64, click.IntRange))]
    # --max-queries checks its own upper bound, with a message that names the budget (tests/attacks/test_cli.py)
    assert unbounded == [(("attack",), "--max-queries")]


@pytest.mark.parametrize("args", [
    ["fewshot", "train", "--iterations"], ["fewshot", "train", "--meta-batch"], ["fewshot", "eval", "--queries"],
    ["longtail", "train", "--epochs"], ["zoo", "train", "--arch", "lenet5", "--batch-size"], ["attack", "--n-images"],
])
def test_an_integer_past_int64_is_one_line_before_any_work(args, tmp_path):
    result = CliRunner().invoke(cli, [*args, str(2**63), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert f"Invalid value for '{args[-1]}': {2**63} is past the largest integer this option can hold" in result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_int64_takes_exactly_the_int64_range():
    int64 = Int64()
    assert [int64.convert(str(v), None, None) for v in (2**63 - 1, -(2**63), 0)] == [2**63 - 1, -(2**63), 0]
    for past in (2**63, -(2**63) - 1):
        with pytest.raises(click.BadParameter, match="past the largest integer"):
            int64.convert(str(past), None, None)


def _where_group():
    """A command group whose one command, ``where``, reports the device it would compute on."""
    @click.group(cls=LazyGroup)
    def group():
        pass

    @group.command()
    @common_options
    def where(run):
        run.finish({}, {"device": str(run.device)})

    return group


@pytest.mark.parametrize("cuda, args, device", [
    (True, [], "cuda"), (True, ["--device", "cpu"], "cpu"), (True, ["--device", "cuda"], "cuda"),
    (False, [], "cpu"), (False, ["--device", "cpu"], "cpu"),
    (False, ["--device", "cuda"], "Error: --device cuda was asked for but no CUDA device is available; use --device cpu"),
])
def test_device_is_auto_by_default_and_an_explicit_device_is_the_one_used(monkeypatch, tmp_path, cuda, args, device):
    """--device cpu on a GPU machine computes on the CPU; asked for cuda without a GPU, one line before any work.
    (Whether a GPU is there is faked: the command only records where it would compute.)"""
    import json

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(_where_group(), ["where", *args, "--json", str(out), "--quiet"])
    if device.startswith("Error:"):
        assert result.exit_code == 2 and result.output.strip() == device and not out.exists()
    else:
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["metrics"]["device"] == device


def test_quiet_holds_for_the_command_only_also_when_it_fails():
    """A Python caller who runs a command with --quiet (CliRunner, a notebook) gets its status lines back afterwards."""
    from lazyapps import progress
    from lazyapps.errors import LazyAppsError

    @click.group(cls=LazyGroup)
    def group():
        pass

    @group.command()
    @click.option("--fail", is_flag=True)
    @common_options
    def step(run, fail):
        assert progress._quiet
        if fail:
            raise LazyAppsError("refused")
        run.finish({}, {})

    assert not progress._quiet
    for args, code in ((["--quiet"], 0), (["--quiet", "--fail"], 2), (["--quiet", "--device", "cuda"], None)):
        result = CliRunner().invoke(group, ["step", *args])
        assert code is None or result.exit_code == code, result.output
        assert not progress._quiet, args


def test_a_rank_other_than_0_prints_and_writes_nothing(monkeypatch, tmp_path, capsys):
    """Under torchrun every process runs the command; only rank 0's result lines and --json reach the user."""
    from lazyapps.cli import RunContext

    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)  # launched, no group yet: the rank comes from the environment
    run = RunContext("demo", json_path=str(tmp_path / "r.json"))
    run.echo("a result line")
    result = run.finish({"x": 1}, {"y": 2}, table="table here")
    assert capsys.readouterr().out == "" and not (tmp_path / "r.json").exists() and result["metrics"] == {"y": 2}
    monkeypatch.setenv("RANK", "0")  # (rank 0 of the same run: both appear)
    run.finish({"x": 1}, {"y": 2}, table="table here")
    assert capsys.readouterr().out == "table here\n" and (tmp_path / "r.json").exists()


def test_the_process_group_is_joined_for_the_device_the_command_computes_on(monkeypatch):
    """Under torchrun a CUDA run must join with NCCL on its own GPU, so init_from_env gets the run's device, not the CPU."""
    import lazyapps.distributed as distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    joined = []
    monkeypatch.setattr(distributed, "init_from_env", lambda device, **kw: joined.append(torch.device(device)) or False)
    group = _where_group()
    for args, device in (([], "cuda"), (["--device", "cpu"], "cpu")):
        assert CliRunner().invoke(group, ["where", *args, "--quiet"]).exit_code == 0
        assert joined.pop().type == device


def test_a_command_without_seed_runs_as_with_seed_0(tmp_path):
    """--seed defaults to 0 (as its help says): a run without it repeats a run with --seed 0."""
    import json

    @click.command()
    @common_options
    def draw(run):
        run.finish({}, {"draw": torch.rand(1).item(), "seed": run.seed})

    def metrics(*args):
        out = tmp_path / "r.json"
        assert CliRunner().invoke(draw, [*args, "--json", str(out), "--quiet", "--device", "cpu"]).exit_code == 0
        return json.loads(out.read_text())["metrics"]

    assert metrics() == metrics("--seed", "0") == {"draw": metrics("--seed", "0")["draw"], "seed": 0}
