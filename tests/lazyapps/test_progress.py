"""Progress bars: shown on a terminal, off with ``--quiet`` or when stderr is not a terminal."""
from __future__ import annotations

import io
import sys

import pytest

from lazyapps import progress


class _Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def stderr(monkeypatch):
    before = progress._quiet

    def use(tty: bool, quiet: bool) -> _Stderr:
        stream = _Stderr(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        progress.set_quiet(quiet)
        return stream

    yield use
    progress.set_quiet(before)


@pytest.mark.parametrize("tty, quiet, shown", [(True, False, True), (True, True, False), (False, False, False)])
def test_a_bar_is_drawn_only_on_a_terminal_without_quiet(stderr, tty, quiet, shown):
    stream = stderr(tty, quiet)
    assert progress.enabled() is shown
    assert list(progress.progress(range(3), desc="steps")) == [0, 1, 2]  # the items pass through either way
    assert ("steps" in stream.getvalue()) is shown


def test_status_lines_are_silenced_by_quiet_only(stderr):
    stream = stderr(False, False)
    progress.status("loading")
    assert stream.getvalue() == "loading\n"  # (a log file gets them too)
    stream = stderr(True, True)
    progress.status("loading")
    assert stream.getvalue() == ""


def test_quiet_while_restores_the_setting_from_before_also_on_error():
    before = progress._quiet
    try:
        for outer in (False, True):
            progress.set_quiet(outer)
            with progress.quiet_while(not outer):
                assert progress._quiet is (not outer)
            assert progress._quiet is outer
            with pytest.raises(RuntimeError), progress.quiet_while(True):
                raise RuntimeError("a failing command")
            assert progress._quiet is outer
    finally:
        progress.set_quiet(before)


def test_a_finished_bar_is_erased_from_the_terminal(stderr):
    stream = stderr(True, False)
    list(progress.progress(range(3), desc="steps"))
    assert "steps" in stream.getvalue() and stream.getvalue().endswith("\r") and "\n" not in stream.getvalue()


def test_a_bar_over_an_iterator_counts_against_the_total_given(stderr):
    stream = stderr(True, False)
    assert list(progress.progress(iter("abc"), desc="steps", total=3)) == ["a", "b", "c"]
    assert "0/3" in stream.getvalue()  # (an iterator has no len: without the total the bar could show no count)
