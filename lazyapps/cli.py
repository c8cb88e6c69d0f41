"""The ``lazyapps`` command line.

Product commands are imported only when they run (``COMMANDS`` maps a name to
``module:attribute``), so ``lazyapps --help`` never imports torch. Every
command takes the options of :func:`common_options`; errors a user can cause
(:class:`~lazyapps.errors.LazyAppsError`) end with one line and exit code 2.
"""
from __future__ import annotations

import functools
import importlib
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import click

from . import __version__, torch_warnings

#: name -> ("module:attribute" of a click command, one-line help); imported on first use.
COMMANDS: dict[str, tuple[str, str]] = {
    "zoo": ("models_zoo.cli:zoo", "Model zoo: list, train and evaluate architectures."),
    "longtail": ("longtail.cli:longtail", "Long-tailed recognition: CIFAR-LT with lazy two-component weighting and baselines."),
    "attack": ("attacks.cli:attack", "Blackbox adversarial attacks: lazy meta-attack and baselines."),
    "fewshot": ("fewshot.cli:fewshot", "Few-shot learning: MAML family, lazy learners, iMAML, Meta-SGD, meta-LSTM, TURTLE."),
}


class OneLineUsageError(click.UsageError):
    """A usage mistake shown as the project's one ``Error:`` line (click's own adds the usage and a hint line)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):  # (the latter shows the help)
        return exc
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return OneLineUsageError(f"{exc.format_message()}{where}", ctx=exc.ctx)


class LazyGroup(click.Group):
    """A click group that imports subcommands lazily and turns user errors into one line."""

    def __init__(self, *args, lazy: Mapping[str, tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name][0].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists the lazy commands from their table entry: importing them would import torch.
        rows = [(name, self.lazy[name][1]) for name in self.lazy]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in self.commands.items() if name not in self.lazy]
        rows.sort()
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # the top level's own options
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        from .errors import LazyAppsError

        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's options and arguments, parsed inside this call
            raise _one_line(exc) from None
        except LazyAppsError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        except KeyboardInterrupt:  # before a command's own handling starts (loading data, building): as its Ctrl-C
            error = click.ClickException("interrupted (Ctrl-C) before any result was written")
            error.exit_code = 130
            raise error from None
        except OSError as exc:  # the machine's refusal (disk full, permissions, a path that cannot exist): one line
            where = f": {exc.filename}" if exc.filename else ""
            error = click.ClickException(f"{exc.strerror or exc}{where}")
            error.exit_code = 2
            raise error from None
        except (MemoryError, RuntimeError) as exc:  # the machine's refusal of an allocation: one line too
            asked = _out_of_memory(exc)
            if asked is None:
                peer = _peer_gone(exc)
                if peer is None:
                    raise
                error = click.ClickException(peer)
                error.exit_code = 1
                raise error from None
            error = click.ClickException(f"out of memory ({asked}); ask for less at once: a smaller batch, meta-batch, "
                                         f"number of shots, queries, tasks or images")
            error.exit_code = 2
            raise error from None


# How gloo and NCCL report a collective whose other side went away.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited",
              "communicator was aborted")


def _peer_gone(exc: BaseException) -> str | None:
    """Under torchrun: the line for a collective that failed because another process of the run stopped, else None.

    That process has printed its own error; this one says only that it stopped with it, not a page of traceback.
    """
    from . import distributed

    if not distributed.is_distributed():
        return None
    import torch.distributed as dist

    network_error = getattr(dist, "DistNetworkError", ())
    # Only a lost peer: this process's own backend failure (a CUDA error inside NCCL, say) keeps its traceback.
    if not (isinstance(exc, network_error) or any(sign in str(exc) for sign in _PEER_LOST)):
        return None
    return (f"rank {distributed.rank()}: another process of this run stopped (its error is above), so this one stops "
            f"too ({str(exc).splitlines()[0][:160]})")


def _out_of_memory(exc: BaseException) -> str | None:
    """What a failed allocation asked for, when ``exc`` is one (Python's, torch's on the CPU or on a GPU), else None."""
    import re

    from .errors import describe

    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # (torch.OutOfMemoryError: CUDA's)
        return describe(exc)
    cpu = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", str(exc))
    return f"{int(cpu.group(1)):,} bytes asked for" if cpu else None


@dataclass
class RunContext:
    """The global options of one command run, and the helpers that use them."""

    command: str
    data_dir: str | None = None
    cache_dir: str | None = None
    device_name: str = "auto"
    seed: int = 0
    json_path: str | None = None
    quiet: bool = False
    started: float = field(default_factory=time.perf_counter)

    @property
    def device(self):
        from .distributed import device_for
        from .runtime import resolve_device

        return device_for(resolve_device(self.device_name))  # under torchrun: cuda -> cuda:LOCAL_RANK

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def echo(self, text: str = "") -> None:
        """Print a result line on stdout (results are printed even with ``--quiet``; under torchrun by rank 0 only)."""
        from .distributed import is_main

        if is_main():
            click.echo(text)

    def finish(self, config: Mapping[str, Any], metrics: Mapping[str, Any], *, table: str | None = None, **extra: Any) -> dict[str, Any]:
        """Print ``table``, write the ``--json`` result and return the result object."""
        from .results import make_result, write_result

        result = make_result(self.command, config, metrics, self.elapsed_s, **extra)
        if table:
            self.echo(table)
        if self.json_path:
            write_result(self.json_path, result)
        return result


class Int64(click.types.IntParamType):
    """The type of the commands' integer options: a value past int64, which torch (and the C under it) cannot hold,
    is refused by click in one line rather than overflowing later; lower bounds stay each command's own check.
    (``click.IntRange`` would do it too, but prints its 19-digit range in every option's help.)"""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not -(2**63) <= number < 2**63:
            self.fail(f"{number} is past the largest integer this option can hold ({2**63 - 1:,})", param, ctx)
        return number


INT64 = Int64()


def _writable(value: str | None, param: click.Parameter, *, folder: bool) -> str | None:
    from .paths import require_writable

    if value is not None:
        require_writable(value, option=param.opts[0], folder=folder)
    return value


def writable_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback of an output file option: refuse, before any work, a path that cannot be written."""
    return _writable(value, param, folder=False)


writable_file.writes_file = True  # (common_options refuses two such options naming one file)


def writable_folder(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback of an output folder option (``--out``): as :func:`writable_file`, for a folder."""
    return _writable(value, param, folder=True)


def distinct_outputs(paths: Mapping[str, Any], keep: Mapping[str, Any] | None = None) -> None:
    """Refuse, before any work, two output options (``{"--json": path, ...}``) that name the same file:
    the later write would silently replace the earlier one. Nor may one name a file of ``keep`` (``{"--checkpoint":
    path, ...}``: a command's checkpoints, which the output would overwrite)."""
    from pathlib import Path

    from .errors import LazyAppsError

    seen: dict[Path, str] = {Path(path).expanduser().resolve(): what for what, path in (keep or {}).items() if path is not None}
    for option, path in paths.items():
        if path is None:
            continue
        resolved = Path(path).expanduser().resolve()  # (r.json, ./r.json and a symlink to it are one file)
        if resolved in seen:
            raise LazyAppsError(f"{seen[resolved]} and {option} name the same file {path}; give each output its own path")
        seen[resolved] = option


def parse_gammas(text: str) -> tuple[float, ...]:
    """The lazy teacher's γ grid from comma-separated numbers in [0, 1] ("0.75,0.8"), in the order given (the
    teacher breaks ties by it); :class:`ValueError` otherwise. An empty entry, as in 0.5,,0.7, is a typo: refused
    rather than skipped."""
    try:
        gammas = tuple(float(v) for v in text.split(","))
    except ValueError:
        gammas = ()
    if not gammas or not all(0 <= g <= 1 for g in gammas):
        raise ValueError(f"must be comma-separated numbers in [0, 1] such as 0.75,0.8,0.85, got {text!r}")
    return gammas


def gammas_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """Click callback for ``--gammas``: :func:`parse_gammas` of the value (None if not given)."""
    if value is None:
        return None
    try:
        return parse_gammas(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def common_options(func: Callable) -> Callable:
    """Add ``--data-dir --cache-dir --device --seed --json --quiet`` and pass a :class:`RunContext` as ``run``."""

    @click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Data root (default: $LAZYAPPS_DATA or ~/.cache/lazyapps/data).")
    @click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Cache root (default: $LAZYAPPS_CACHE or ~/.cache/lazyapps/cache).")
    @click.option("--device", "device_name", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to compute.")
    @click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed for torch, numpy and random.")
    @click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, callback=writable_file,
                  help="Write the result object to this JSON file.")
    @click.option("--quiet", is_flag=True, help="No progress bars or status lines.")
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, data_dir, cache_dir, device_name, seed, json_path, quiet, **kwargs):
        from .progress import quiet_while
        from .runtime import seed_everything

        # Every output file option of the command (callbacks marked writes_file): two naming one file are refused.
        distinct_outputs({param.opts[0]: ctx.params.get(param.name) for param in ctx.command.params
                          if getattr(param.callback, "writes_file", False)})
        _check_cache_root(cache_dir)
        with quiet_while(quiet):  # this command's only: a Python caller's later library calls keep their setting
            seed_everything(seed)
            # "lazyapps zoo train" -> "zoo train": the command without the program name.
            run = RunContext(" ".join(ctx.command_path.split()[1:]), data_dir, cache_dir, device_name, seed, json_path, quiet)
            run.device  # fail early on --device cuda without a GPU
            from .distributed import init_from_env, shutdown

            init_from_env(run.device)  # under torchrun: join the process group (gloo on CPU, NCCL on CUDA)
            try:
                return func(run=run, **kwargs)
            finally:
                shutdown()

    return wrapper


def _check_cache_root(cache_dir: str | None) -> None:
    """Refuse, before any work, a cache root that does not exist and cannot be made (an existing one may be
    read-only: a full cache is only read)."""
    import os

    from .errors import LazyAppsError
    from .paths import CACHE_ENV, cache_root, check_writable

    root = cache_root(cache_dir)
    reason = None if root.is_dir() else check_writable(root, folder=True)
    if reason is not None:
        named = "--cache-dir" if cache_dir else f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "the cache root"
        raise LazyAppsError(f"{named} {root}: cannot create it ({reason}); pass a --cache-dir you can write to")


def apply_preset(presets: Mapping[str, Mapping[str, Any]], preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``preset`` with every explicit (non-``None``) override applied."""
    from .errors import UnknownNameError

    if preset not in presets:
        raise UnknownNameError("preset", preset, presets)
    settings = dict(presets[preset])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def recorded_settings(meta: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that the user left at their defaults, as checkpoint metadata ``meta`` recorded them.

    For ``--resume``: a run continues with its own settings without the user typing them again; an option given
    on the command line is kept, so the checkpoint's identity check can refuse it if it differs.
    """
    from click.core import ParameterSource

    ctx = click.get_current_context()
    left = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    return {name: meta[name] for name in names if name in meta and ctx.get_parameter_source(name) in left}


def preset_option(default: str = "quick") -> Callable:
    """``--preset smoke|quick|paper``: smoke checks the code path, quick runs in minutes on a CPU, paper as the papers."""
    return click.option("--preset", type=click.Choice(["smoke", "quick", "paper"]), default=default, show_default=True,
                        help="Settings bundle: smoke (a code-path check: seconds, or minutes while its first models train), quick (minutes on a CPU), "
                             "paper (the papers' settings; most need a GPU). Explicit flags override it.")


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lazyapps")
def cli() -> None:
    """lazyapps: the lazy teacher of long-horizon meta-learning as three products:
    a query-efficient blackbox attack, a long-tail trainer and few-shot learners."""


@cli.command("compare", short_help="Compare saved --json results side by side.")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--all", "all_settings", is_flag=True, help="Show every setting, not only those that differ.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, callback=writable_file,
              help="Also write the comparison as CSV (one row per key, one column per file).")
@common_options
def compare_command(run: RunContext, results: tuple[str, ...], all_settings: bool, csv_path: str | None) -> None:
    """Compare saved --json results side by side: the settings that differ, then every metric."""
    from .compare import KEY_COLUMN, SECTION_COLUMN, compare, format_comparison, labels, load_result
    from .results import write_csv

    distinct_outputs({"--json": run.json_path, "--csv": csv_path}, keep={f"the compared {path}": path for path in results})
    columns = labels(results)
    table = compare([load_result(path) for path in results], columns, all_settings=all_settings)
    if csv_path:
        rows = ([{SECTION_COLUMN: "setting", **row} for row in table["settings"]]
                + [{SECTION_COLUMN: "result", **row} for row in table["results"]])
        write_csv(csv_path, rows, [SECTION_COLUMN, KEY_COLUMN, *columns])
    run.finish({"results": list(results), "all_settings": all_settings}, table, table=format_comparison(table))


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """A warning as one ``warning:`` line: a command's user reads what happens, not where in the source."""
    return f"warning: {message}\n"


def main() -> None:
    from .allocator import keep_freed_memory

    keep_freed_memory()  # before any tensor exists: large blocks are then reused, not re-faulted (see the module)
    torch_warnings.hide_internal_warnings()
    warnings.formatwarning = _warning_line
    cli(prog_name="lazyapps")


if __name__ == "__main__":
    main()
