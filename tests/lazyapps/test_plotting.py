"""``--plot``: refused before any work when it cannot be written; figures written whole, in the format asked."""
from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from lazyapps.cli import cli
from lazyapps.errors import LazyAppsError
from lazyapps.plotting import check_plot_path, pyplot, save_figure

#: every command with --plot, given arguments that would otherwise start real work
COMMANDS = [
    ["attack", "--target", "net4", "--n-images", "1"],
    ["longtail", "train", "--dataset", "cifar10", "--preset", "smoke"],
    ["longtail", "eval", "--checkpoint", "missing.pt"],
    ["fewshot", "train", "--algo", "maml", "--dataset", "sine", "--iterations", "1"],
    ["fewshot", "eval", "--checkpoint", "missing.pt"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_plot_option_refuses_a_format_matplotlib_cannot_write_before_any_work(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [*command, "--plot", "curve.xyz", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    assert "--plot curve.xyz: give the file one of the image extensions matplotlib writes (" in result.output
    assert "png" in result.output and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing trained, cached or written


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_plot_option_without_matplotlib_says_how_to_install_it(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    result = CliRunner().invoke(cli, [*command, "--plot", "c.png", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    assert "--plot needs matplotlib: pip install 'lazyapps[plot]'" in result.output
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("command", [c for c in COMMANDS if c[1] == "eval"], ids=lambda c: " ".join(c[:2]))
def test_a_command_without_plot_neither_needs_matplotlib_nor_draws(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(cli, [*command, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "missing.pt" in result.output and "matplotlib" not in result.output


def test_check_plot_path_accepts_any_case_of_a_known_extension_and_none():
    assert check_plot_path(None) is None
    assert check_plot_path("a/b/Curve.PNG") == "a/b/Curve.PNG"
    with pytest.raises(LazyAppsError, match="curve: give the file one of"):
        check_plot_path("curve")



def test_check_plot_path_refuses_a_place_it_cannot_write_to(tmp_path):
    (tmp_path / "afile").write_text("a file where a folder is needed")
    with pytest.raises(LazyAppsError, match="--plot .*afile/c.png: cannot write there"):
        check_plot_path(str(tmp_path / "afile" / "c.png"))


@pytest.mark.parametrize("name, magic", [("c.png", b"\x89PNG"), ("c.pdf", b"%PDF"), ("c.svg", b"<?xml")])
def test_save_figure_writes_the_format_of_the_extension_into_new_folders(tmp_path, name, magic):
    fig, ax = pyplot().subplots()
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "new" / name
    save_figure(fig, str(path))
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left beside it
    assert not pyplot().fignum_exists(fig.number)  # closed: a long run's figures do not pile up


def test_pyplot_draws_off_screen_whatever_backend_was_chosen_before():
    """A run on a desktop or over ssh with a display must not open windows: pyplot() is always Agg."""
    import matplotlib

    matplotlib.use("svg")
    try:
        assert pyplot().get_backend().lower() == "agg"
    finally:
        matplotlib.use("Agg")
