"""`workbench runs [--root runs]`: list run directories, their kind and status (broken ones too)."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workbench runs", description=__doc__)
    p.add_argument("--root", default="runs", help="directory holding run dirs (default: runs)")
    args = p.parse_args(argv)
    from workbench.runs import list_runs

    rows = list(list_runs(args.root))
    if not rows:
        print(f"no runs under {args.root}/")
    for r in rows:
        if r.error:
            print(f"{r.path.name:<40} unreadable: {r.error}")
        else:
            print(f"{r.path.name:<40} {r.meta.get('kind', '?'):<8} {r.run.status()}")
    return 0
