"""TopK vs Feature Choice vs Mutual Choice (x aux loss) at equal average L0 on one model and hook.

    .venv/bin/python bench/sae_variants.py --model toy-ioi --hook blocks.1.hook_resid_post --k 8 --expansion 8 \
        --tokens 2_000_000

Caches the activations once (``workbench acts cache``) so every variant trains on the same tokens,
trains each (arch, aux) pair with ``workbench sae train --cache ...`` (a pair whose run already has
an eval.json is not retrained), and prints a markdown table from the runs' eval.json: FVU, CE loss
recovered, per-token L0 spread, dead % (silent on all of --dead-window held-out tokens), in the saved
SAE's inference mode first (threshold for FC/MC) and then batch mode.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--tokens", type=lambda s: int(s.replace("_", "")), default=2_000_000)
    p.add_argument("--archs", nargs="+", default=["topk", "feature-choice", "mutual-choice"])
    p.add_argument("--aux", nargs="+", default=["aux_k", "aux_zipf"])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--prefix", default="variants")
    p.add_argument("--names", nargs="+", default=None, help="only print the table of these run names (no training)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `workbench sae train` flags")
    a = p.parse_args(argv)
    from cli.acts import ensure_cache
    from cli.main import main as wb

    root = Path(a.runs_dir)
    if a.names:
        print(table(root, a.names))
        return 0
    cache = root / f"{a.prefix}-cache"
    rc = ensure_cache(cache, a.model, a.hook, a.tokens)
    if rc:
        return rc
    names = []
    for arch in a.archs:
        for aux in a.aux:
            name = f"{a.prefix}-{arch}-{aux}"
            names.append(name)
            if (root / name / "eval.json").is_file():
                continue
            flags = ["sae", "train", "--model", a.model, "--hook", a.hook, "--arch", arch, "--aux", aux, "--k", str(a.k),
                     "--expansion", str(a.expansion), "--tokens", str(a.tokens), "--cache", str(cache),
                     "--runs-dir", str(root), "--quiet", *a.extra]
            run = root / name
            rc = wb(flags + (["--resume", str(run)] if (run / "config.json").is_file() else ["--name", name]))
            if rc:
                return rc
    print(table(root, names))
    return 0


def table(root: Path, names: list[str]) -> str:
    """Markdown table of the runs' eval.json (one row per run and allocation mode, the inference mode first)."""
    from workbench.runs import Run

    head = "| arch | aux | normalize | mode | FVU | CE recovered | L0 mean | L0 std | L0 p05–p95 (max) | dead % |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name in names:
        ev = Run.open(root / name).read_json("eval.json")
        for mode, r in ev["modes"].items():
            arch = ev["arch"] + (" (zipf capacities)" if ev.get("capacity") == "zipf" else "")
            lines.append(f"| {arch} | {ev['aux']} | {ev.get('normalize', '?')} | {mode} | {r['fvu']:.4f} | "
                         f"{r.get('ce_recovered', float('nan')):.4f} | {r['l0_mean']:.2f} | {r['l0_std']:.2f} | "
                         f"{r['l0_p05']:.0f}–{r['l0_p95']:.0f} ({r['l0_max']}) | {100 * r['dead_fraction']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
