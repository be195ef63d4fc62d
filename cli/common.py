"""Flags every command group spells the same way, and the checks that run before anything heavy loads.

One flag per concept: ``--runs-dir DIR`` (the directory holding run directories), ``--name`` (a run's
name), ``--quiet`` (no progress bars or progress messages; results and errors still print). Older
spellings (``--root``, ``--runs``, ``--out`` for the runs directory, ``--no-progress``, ``--progress
false``) still work for now as hidden aliases that print a deprecation note.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from workbench.config import parse_bool

RUNS_DIR_HELP = "directory holding run directories (default: runs)"
QUIET_HELP = "hide progress bars and progress messages (results and errors still print)"


class _Deprecated(argparse.Action):
    """A hidden old spelling: sets `dest` (through `convert`) and prints a one-line note naming the new flag."""

    def __init__(self, option_strings, dest, new: str, convert: Callable[[Any], Any] = lambda v: v, **kw):
        self.new, self.convert = new, convert
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated and will be removed; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.convert(values))


def deprecated(parser: argparse.ArgumentParser, old: str, new: str, dest: str, *,
               nargs: Any = None, const: Any = None, convert: Callable[[Any], Any] = lambda v: v) -> None:
    """Accept `old` as a hidden alias of `new` (same dest), with a deprecation note on use."""
    kw: dict[str, Any] = {"nargs": nargs} if nargs is not None else {}
    if const is not None:
        kw["const"] = const
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, convert=convert, default=argparse.SUPPRESS, **kw)


def add_runs_dir(parser: argparse.ArgumentParser, *, flag: bool = True, old: tuple[str, ...] = ("--root",)) -> None:
    """`--runs-dir DIR` (dest runs_dir; skip the flag itself when a config field already adds it) + old spellings."""
    if flag:
        parser.add_argument("--runs-dir", dest="runs_dir", default="runs", metavar="DIR", help=RUNS_DIR_HELP)
    for o in old:
        deprecated(parser, o, "--runs-dir", "runs_dir")


def add_quiet(parser: argparse.ArgumentParser, *, old_no_progress: bool = True) -> None:
    """`--quiet` (dest quiet) and, hidden, the older `--no-progress`."""
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    if old_no_progress:
        deprecated(parser, "--no-progress", "--quiet", "quiet", nargs=0, convert=lambda _: True)


def deprecated_progress(parser: argparse.ArgumentParser) -> None:
    """Hidden `--progress [true|false]` (the MoE commands' old spelling) -> quiet = not value."""
    deprecated(parser, "--progress", "--quiet", "quiet", nargs="?", const="true", convert=lambda v: not parse_bool(v))


def say(quiet: bool) -> Callable[[str], None]:
    """A progress-message printer that `--quiet` silences."""
    return (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))


def check_name(name: str | None, runs_dir: str | None = None) -> None:
    """A run name is checked with the arguments, before any model loads: its spelling
    (workbench.runs.check_run_name) and, given the runs dir, that no run of that name exists yet."""
    from pathlib import Path

    from workbench.errors import RunError
    from workbench.runs import check_run_name

    if name is None:
        return
    check_run_name(name)
    path = Path(runs_dir) / name if runs_dir is not None else None
    if path is not None and (path / "config.json").exists():
        raise RunError(f"run dir {path} already exists; pass --resume {path} to continue it or choose another --name")


def parse_int(s: str) -> int:
    """An int that may be written with underscores (400_000)."""
    return int(s.replace("_", ""))


def subcommand(sub, name: str, prog: str, help: str, description: str | None = None,
               epilog: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser in the CLI's layout: `help` in the parent's list, `description` on top of its own
    --help, `epilog` (worked examples, see `examples`) below the options, kept verbatim."""
    return sub.add_parser(name, help=help, prog=f"{prog} {name}", description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def examples(*lines: str) -> str:
    """An --help epilog: 'examples:' and one command per line."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def dead_fraction(metrics: dict) -> float:
    """A mode's dead fraction from eval.json (workbench.runs.dead_fraction); KeyError if it has none."""
    from workbench.runs import dead_fraction as stored

    v = stored(metrics)
    if v is None:
        raise KeyError("dead_fraction")
    return v
