"""How every benchmark script runs: as ``lazyapps`` runs a command.

Bad input is refused the way the CLI refuses it: one line ``Error: ...`` on stderr, exit code 2, before any
work. :class:`ScriptParser` does that for what argparse checks (unknown flags, the ``type=`` helpers below,
an unwritable ``--json``); :func:`run_script` for the errors the work itself finds.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

SEED_MAX = 2**32 - 1  # the CLI's --seed range (numpy seeds are 32-bit)


def run_script(main: Callable[[], object], *, allocator: bool = True) -> None:
    """Run a benchmark's ``main`` with the CLI's allocator setting and its handling of bad input.

    ``allocator``: keep freed memory for reuse (:mod:`lazyapps.allocator`), so the numbers are what
    ``lazyapps ...`` gets; off where the script sets it itself. A user error (:class:`lazyapps.errors.LazyAppsError`:
    missing data, a bad option) ends as one line on stderr and exit code 2, never a traceback.
    """
    from lazyapps.allocator import keep_freed_memory
    from lazyapps.errors import LazyAppsError

    if allocator:
        keep_freed_memory()
    try:
        main()
    except LazyAppsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def clock(device: Any) -> float:
    """``time.perf_counter()`` once ``device`` has finished the work queued on it.

    CUDA kernels run after the call that launched them returns, so a timing read without this would measure the
    launches of one step and whatever waits on the GPU in the next.
    """
    import time

    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# torchrun's report of failed workers ends with the first one's exit code: "Root Cause ... exitcode  : 2 (pid: ...)"
_TORCHRUN_ROOT_CAUSE = re.compile(r"^Root Cause.*?^\s*exitcode\s*:\s*(-?\d+)", re.DOTALL | re.MULTILINE)


def child_refusal(proc: subprocess.CompletedProcess[str]) -> str | None:
    """What a benchmark's child process refused, as :func:`run_script` refuses (its ``Error: ...`` line, exit code 2),
    or None when it succeeded or failed otherwise (a crash: the caller reports that in full).

    The child is the script run again (exit code 2, the line last on its stderr) or its workers under torchrun,
    which exits 1 with a report of its own; that report's root cause then names the worker's exit code 2.
    """
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    refusals = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    if not refusals:
        return None
    if proc.returncode == 2 and lines[-1].startswith("Error: "):
        return refusals[-1]
    root = _TORCHRUN_ROOT_CAUSE.search(proc.stderr)
    return refusals[0] if root and root.group(1) == "2" else None


def pass_on_child_refusal(proc: subprocess.CompletedProcess[str]) -> None:
    """Refuse with the child's one line where it refused its input (:func:`child_refusal`): the answer is that
    line and exit code 2, not a nested report. Otherwise return; the caller handles a failed child."""
    from lazyapps.errors import LazyAppsError

    message = child_refusal(proc)
    if message is not None:
        raise LazyAppsError(message)


class ScriptParser(argparse.ArgumentParser):
    """The parser of every benchmark script: its errors are one ``Error:`` line and exit code 2, as the CLI's.

    argparse's own would print the usage block and ``prog: error: ...``. With :meth:`add_smoke_option`,
    ``--smoke`` sets tiny sizes that flags given explicitly still override.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._smoke_sizes: dict[str, Any] | None = None

    def error(self, message: str) -> NoReturn:
        # argparse words a bad value "argument --steps: ..."; the option name alone reads as the CLI's messages do
        print(f"Error: {message.removeprefix('argument ')}", file=sys.stderr)
        raise SystemExit(2)

    def add_smoke_option(self, what: str, **sizes: Any) -> None:
        """``--smoke``: a code-path check (``what``, e.g. "seconds") with ``sizes`` (dest -> value as typed on the
        command line) as the defaults; the help lists them, so the user sees which flags it sets."""
        flags = {action.dest: action.option_strings[0] for action in self._actions if action.option_strings}
        listed = ", ".join(f"{flags[dest]} {value}" for dest, value in sizes.items())
        self.add_argument("--smoke", action="store_true",
                          help=f"{what}; sets {listed} (a flag given explicitly wins)".replace("%", "%%"))
        self._smoke_sizes = sizes

    def parse_args(self, args: list[str] | None = None, namespace: None = None) -> argparse.Namespace:  # type: ignore[override]
        parsed = super().parse_args(args)
        if self._smoke_sizes is not None and parsed.smoke:
            # Parsed again with the smoke sizes as defaults: a default applies only to a flag not given.
            self.set_defaults(**self._smoke_sizes)
            parsed = super().parse_args(args)
        for action in self._actions:  # argparse runs an action only for a flag given: a default output path is checked here
            if isinstance(action, _WritableAction) and action.default and getattr(parsed, action.dest) == action.default:
                action(self, parsed, action.default, action.option_strings[0])
            if isinstance(action, WritableFile) and action.dest == "json" and "json_default" in parsed:
                chosen = json_path(parsed)  # (add_json_option's committed results file, where no --json was given)
                if chosen and chosen != getattr(parsed, "json"):
                    action(self, argparse.Namespace(), chosen, "--json")
        return parsed


# --------------------------------------------------------------------------- argparse type= helpers
# Each turns the text into a value or raises ArgumentTypeError, which ScriptParser reports as
# "Error: --option: <message>" before any work.
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):  # nan/inf parse as floats but are no budget or size
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count or size of at least 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A count where 0 has a meaning the help names (e.g. "0: the whole test set")."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A time budget, rate or ratio above 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def seed(text: str) -> int:
    """A seed in the CLI's range, 0..2**32-1."""
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..{SEED_MAX}, got {text}")
    return value


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of counts, each at least 1, at least one of them ("1,5,10")."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError("expected at least one number")
    return [positive_int(item) for item in items]


def names(kind: str, valid: Iterable[str] | Callable[[], Iterable[str]], *, allow_empty: bool = False) -> Callable[[str], list[str]]:
    """A ``type=`` for a comma-separated list of ``kind`` names, each one of ``valid`` (or of what it returns when
    called: a registry read only when the option is parsed); empty only with ``allow_empty`` (e.g. "'' skips")."""

    def parse(text: str) -> list[str]:
        from lazyapps.errors import UnknownNameError

        chosen = [item.strip() for item in text.split(",") if item.strip()]
        if not chosen and not allow_empty:
            raise argparse.ArgumentTypeError(f"expected at least one {kind}")
        known = list(valid() if callable(valid) else valid)
        for name in chosen:
            if name not in known:
                raise argparse.ArgumentTypeError(str(UnknownNameError(kind, name, known)))
        return chosen

    parse.__name__ = f"{kind} list"  # (argparse names the type in some messages)
    return parse


class _WritableAction(argparse.Action):
    """Store an output path after :func:`lazyapps.paths.require_writable` (the CLI's check) accepted it."""

    folder = False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from lazyapps.errors import LazyAppsError
        from lazyapps.paths import require_writable

        if values:  # "" is "not given" (json_path), as the memory benchmark's child is told
            try:
                require_writable(values, option=option_string or self.dest, folder=self.folder)
            except LazyAppsError as exc:
                parser.error(str(exc))
        setattr(namespace, self.dest, values)


class WritableFile(_WritableAction):
    """``action=`` of an output file option: a path that cannot be written is refused at parse time."""


class WritableFolder(_WritableAction):
    """``action=`` of an output folder option: as :class:`WritableFile`, for a folder."""

    folder = True


# --------------------------------------------------------------------------- the JSON result
def add_json_option(parser: argparse.ArgumentParser, default: str) -> None:
    """``--json PATH``: where the result goes; ``default`` (the committed results file) unless the run is ``--smoke``.

    A smoke run checks the code path in seconds; its numbers must not overwrite the results the docs quote,
    so it writes JSON only where ``--json`` names. :func:`json_path` reads the choice back. A path that
    cannot be written is refused when parsed, not when the result is ready.
    """
    parser.add_argument("--json", default=None, action=WritableFile,
                        help=f"where to write the JSON result (default: {default}; a --smoke run writes none unless given)")
    parser.set_defaults(json_default=default)


def json_path(args: argparse.Namespace) -> str | None:
    """The file :func:`add_json_option` chose for these parsed ``args`` (None: write no JSON)."""
    return args.json or (None if getattr(args, "smoke", False) else args.json_default)

