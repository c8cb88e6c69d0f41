"""Errors a user can cause, and how they reach the command line.

Every error a user can fix (unknown name, missing data, bad flag combination,
corrupt checkpoint) is a :class:`LazyAppsError`. The CLI prints its message as
one line and exits with a non-zero code, never a traceback.
"""
from __future__ import annotations

from collections.abc import Iterable


def describe(exc: BaseException, limit: int = 200) -> str:
    """``exc`` on one line for an error message: its type and its (whitespace-collapsed) text, cut at ``limit``.

    A cut text ends at its last whole sentence within ``limit`` where there is one, else with "…", so a message
    never stops mid-phrase as if it were complete.
    """
    text = " ".join(str(exc).split())
    if len(text) > limit:
        cut = text[:limit]
        end = max(cut.rfind(". "), cut.rfind("; "))
        text = cut[:end + 1] if end >= limit // 3 else cut.rstrip() + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LazyAppsError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 2


class Interrupted(LazyAppsError):
    """Training stopped by Ctrl-C; the message names the checkpoint to resume from. Exit code 130, the shell's
    for a process ended by SIGINT."""

    exit_code = 130


class UnknownNameError(LazyAppsError, KeyError):
    """A name (model, dataset, method, ...) that is not one of the valid ones."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DataNotFoundError(LazyAppsError, FileNotFoundError):
    """A dataset whose files are not where we looked (and could not be downloaded)."""


class CheckpointError(LazyAppsError):
    """A checkpoint that is missing, corrupt, or made by other settings.

    ``fix`` (what the user can do) is kept apart from ``problem``: a cache that rebuilds the file by itself
    (:func:`lazyapps.cache.cached`) reports the problem only, since there is nothing left for the user to do.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        super().__init__(f"{problem}; {fix}" if fix else problem)


class DivergedError(LazyAppsError):
    """Training produced a non-finite loss: the parameters are no longer usable; the message says what to change."""
