import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from lazyapps import __version__
from lazyapps.cli import COMMANDS, LazyGroup, apply_preset, cli, common_options
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
    def demo(run, fail):
        if fail:
            raise UnknownNameError("model", "nosuchnet", ["net4", "lenet5"])
        run.finish({"x": 1}, {"seed": run.seed}, table="table here")

    return group


def test_user_errors_are_one_line_without_traceback():
    result = CliRunner().invoke(_demo_group(), ["demo", "--fail"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: unknown model 'nosuchnet'; valid: lenet5, net4"


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
