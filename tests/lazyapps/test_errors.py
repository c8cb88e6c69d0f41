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


def test_describe_keeps_a_message_of_exactly_the_limit_whole() -> None:
    assert describe(RuntimeError("x" * 100), limit=100) == "RuntimeError: " + "x" * 100  # not marked as cut


def test_describe_cuts_a_long_message_at_a_clause_too() -> None:
    """The project's messages join problem and fix with "; ": a cut keeps the whole first clause."""
    long = "checkpoint made with other settings, which cannot be loaded; " + "word " * 80
    assert describe(ValueError(long), limit=100) == "ValueError: checkpoint made with other settings, which cannot be loaded;"


def test_unknown_name_lists_the_valid_names_sorted_and_unquoted() -> None:
    from lazyapps.errors import UnknownNameError

    error = UnknownNameError("model", "nosuch", ["vgg", "mlp", "net4"])
    assert str(error) == "unknown model 'nosuch'; valid: mlp, net4, vgg"  # (a KeyError's str would quote it)
