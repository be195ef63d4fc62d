"""`workbench runs [--runs-dir runs]`: list run directories, their kind and status (broken ones too).

SAE runs also show their headline from eval.json: the saved SAE in its inference mode (threshold for
Feature/Mutual Choice, batch for TopK) on held-out tokens, FVU next to CE loss recovered.
"""

from __future__ import annotations

import argparse

from cli.common import add_runs_dir, dead_fraction


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench runs", description=__doc__.split("\n\n")[0])
    add_runs_dir(p)
    return p


def sae_headline(run) -> str:
    """'threshold mode: FVU 0.0123  CE recovered 0.995  L0 8.0  dead 3.1%', or why there is none."""
    from workbench.errors import RunError

    try:
        ev = run.read_json("eval.json")
    except RunError as e:
        return f"(no evaluation: {e})"
    modes = ev.get("modes") or {}
    mode = ev.get("mode") or ("threshold" if "threshold" in modes else "batch")  # eval.json before the headline moved
    r = modes.get(mode) or {}
    ce = r.get("ce_recovered")
    ce = f"{ce:.4f}" if isinstance(ce, (int, float)) else "-"
    try:
        return (f"{mode} mode: FVU {r['fvu']:.4f}  CE recovered {ce}  L0 {r['l0_mean']:.2f}  "
                f"dead {100 * dead_fraction(r):.1f}%")
    except (KeyError, TypeError) as e:
        return f"(eval.json lacks {e})"


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from workbench.runlock import RunLock
    from workbench.runs import list_runs

    rows = list(list_runs(args.runs_dir))
    if not rows:
        print(f"no runs under {args.runs_dir}/")
    for r in rows:
        if r.error:
            print(f"{r.path.name:<40} unreadable: {r.error}")
            continue
        kind, status = r.meta.get("kind", "?"), r.run.status()
        if status == "running" and not RunLock(r.path).live():
            status = "running? (no process holds it: killed?)"
        extra = f"  {sae_headline(r.run)}" if kind == "sae" and status == "done" else ""
        print(f"{r.path.name:<40} {kind:<8} {status}{extra}")
    return 0
