"""`workbench runs [--runs-dir runs]`: list run directories, their kind and status (broken ones too)."""

from __future__ import annotations

import argparse

from cli.common import add_runs_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench runs", description=__doc__)
    add_runs_dir(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from workbench.runs import list_runs

    rows = list(list_runs(args.runs_dir))
    if not rows:
        print(f"no runs under {args.runs_dir}/")
    for r in rows:
        if r.error:
            print(f"{r.path.name:<40} unreadable: {r.error}")
        else:
            print(f"{r.path.name:<40} {r.meta.get('kind', '?'):<8} {r.run.status()}")
    return 0
