"""The `workbench` front door: dispatches to each package's subcommands, imported lazily.

Each entry maps a command group to a module of this package with ``main(argv: list[str]) -> int | None``;
the module builds its argparse parser from config dataclasses that import no torch, so ``--help`` of
every group and subcommand is fast, and it checks its arguments before it loads a model.
"""

from __future__ import annotations

import importlib
import signal
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "model": ("cli.model", "train / evaluate the embedded toy model (toy-ioi)"),
    "acts": ("cli.acts", "stream or cache activations at a hook to disk"),
    "runs": ("cli.runs", "list run directories and their status"),
    "sae": ("cli.sae", "train / evaluate / analyse sparse autoencoders"),
    "ioi": ("cli.ioi", "IOI supervised-dictionary evaluation: locate the circuit, evaluate dictionaries"),
    "moe": ("cli.moe", "mixture-of-experts gates: train, benchmark, OT solver benchmarks"),
    "app": ("cli.app", "open the Streamlit app on a runs directory"),
}

USAGE = """usage: workbench <command> [options]   (workbench <command> --help for its options)

The Sparse Allocation Workbench: SAEs, IOI evaluation and MoE routing as sparse allocation.

commands:
{cmds}

flags every command spells the same way: --runs-dir DIR (where run directories live; default runs),
--name NAME (a run's name), --quiet (no progress bars or progress messages), --device (torch device)
"""




def usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(cmds="\n".join(f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"workbench: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as e:
        print(f"workbench {name}: not available in this install ({e})", file=sys.stderr)
        return 2
    from workbench.errors import USER_ERRORS

    old = _terminate_as_interrupt()
    try:
        return int(module.main(rest) or 0)
    except USER_ERRORS as e:
        print(f"workbench {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an environment failure the layers below did not name (their WriteErrors are USER_ERRORS)
        print(f"workbench {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        sub = rest[0] if rest else ""
        advice = ""
        if sub in getattr(module, "RESUMABLE", ()):  # only commands that have --resume are told to use it
            advice = f"; the last checkpoint is kept, continue with `workbench {name} {sub} --resume RUN`"
        print(f"workbench {name}: {str(e) or 'interrupted'}{advice}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that trainers record an interrupted (resumable) status, not `running`."""


def _terminate_as_interrupt():
    """Turn SIGTERM into a Terminated exception while a command runs (unless someone else installed a
    handler); returns the handler to restore afterwards, or None."""
    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    try:
        old = signal.getsignal(signal.SIGTERM)
        if old not in (signal.SIG_DFL, None):
            return None
        signal.signal(signal.SIGTERM, handler)
        return old
    except ValueError:  # not the main thread
        return None


if __name__ == "__main__":
    sys.exit(main())
