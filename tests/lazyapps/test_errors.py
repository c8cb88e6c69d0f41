"""One-line descriptions of other libraries' exceptions for error messages."""
from __future__ import annotations

from lazyapps.errors import describe


def test_describe_keeps_a_short_message_whole_on_one_line() -> None:
    assert describe(RuntimeError("bad\n   shape  (2, 3)")) == "RuntimeError: bad shape (2, 3)"
    assert describe(KeyError()) == "KeyError"


def test_describe_cuts_a_long_message_at_its_last_whole_sentence_or_marks_the_cut() -> None:
    long = "a first sentence, long enough to be worth keeping. " + "word " * 80
    assert describe(RuntimeError(long), limit=100) == "RuntimeError: a first sentence, long enough to be worth keeping."
    assert describe(RuntimeError("x" * 300), limit=100) == "RuntimeError: " + "x" * 100 + "…"
    # a sentence end too early in the text would drop most of it: mark the cut instead
    assert describe(RuntimeError("Ok. " + "y" * 300), limit=100).endswith("y…")
