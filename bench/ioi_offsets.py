"""Do the numbers off the converged value come closer with more train prompts, and as fast as a sampling bias?

    .venv/bin/python bench/ioi_offsets.py --reference runs/bench/ioi_settings_v12_full.json \\
        --at 24000x3000 runs/bench/ioi_settings_v12_full.json runs/bench/ioi_seeds12_s{1,2,3}.json \\
        --at 96000x3000x24000 runs/bench/ioi_bias96k_s{1,2}.json --json bench/results/ioi_offsets_v13.json

Each record is a bench/ioi_settings.py --out file (one seed each). For every number of summary.md
(`evals.report.headline_numbers`) it averages each setting's records and takes the offset from the
reference run (the value the --reference record's ``reference`` field names). The numbers whose mean offset
at the first setting exceeds --min-offset are followed to the later settings: the sum of their offsets
there over the sum at the first says how much of the offset more train prompts remove. A bias that falls
as n^-1/2 (or n^-1/4, as counts over a threshold do) while the reference itself sits at its own bias would
leave the ratio printed beside it; a ratio near 1 is an offset more train prompts do not touch (the
reference's own draw, or a difference other than the train prompts, e.g. the fit split's size).
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json
import statistics
from pathlib import Path


def n_train(setting: str) -> int:
    return int(setting.split("x")[0])


def expected_ratio(n0: int, n1: int, n_ref: int, power: float) -> float:
    """(b(n1) - b(ref)) / (b(n0) - b(ref)) for a bias b(n) proportional to n^-power."""
    b = lambda n: n ** -power  # noqa: E731
    return (b(n1) - b(n_ref)) / (b(n0) - b(n_ref))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="the record holding the converged values (its `reference` run)")
    p.add_argument("--at", nargs="+", action="append", required=True, metavar=("SETTING", "RECORD"),
                   help="a setting and the records (seeds) run at it; repeat for each setting, smallest first")
    p.add_argument("--min-offset", type=float, default=0.015)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    def run(path: str, setting: str | None = None) -> tuple[str, dict]:
        """(setting, its summary.md numbers) of a bench/ioi_settings.py record; the reference's run without a setting."""
        try:
            rec = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"{path}: cannot read it as a bench/ioi_settings.py record ({e})")
        setting = setting or rec.get("reference")
        if setting not in rec.get("runs", {}):
            p.error(f"{path} has no {setting} run (it has {', '.join(rec.get('runs', {})) or 'none'}); "
                    "pass records written by bench/ioi_settings.py --out")
        return setting, rec["runs"][setting]["headline"]

    ref_setting, ref = run(args.reference)
    means = []
    for setting, *paths in args.at:
        if not paths:
            p.error(f"--at {setting}: name at least one record")
        vals = [run(q, setting)[1] for q in paths]
        means.append((setting, len(paths), {k: statistics.mean(v[k] for v in vals) for k in ref
                                            if all(k in v and v[k] is not None for v in vals)}))
    first = means[0][2]
    followed = [k for k in first if abs(first[k] - ref[k]) > args.min_offset and all(k in m for _, _, m in means)]
    out = {"reference": ref_setting, "min_offset": args.min_offset, "n_followed": len(followed), "settings": []}
    base = sum(abs(first[k] - ref[k]) for k in followed) or float("nan")
    print(f"{len(followed)} numbers of summary.md more than {args.min_offset} from {ref_setting} at {means[0][0]} "
          f"(mean of {means[0][1]} seeds); above it: {sum(first[k] > ref[k] for k in followed)}")
    for setting, n_seeds, m in means:
        off = sum(abs(m[k] - ref[k]) for k in followed)
        row = {"setting": setting, "seeds": n_seeds, "sum_abs_offset": off, "ratio": off / base,
               "ratio_if_n^-1/2": expected_ratio(n_train(means[0][0]), n_train(setting), n_train(ref_setting), 0.5),
               "ratio_if_n^-1/4": expected_ratio(n_train(means[0][0]), n_train(setting), n_train(ref_setting), 0.25),
               "offsets": {k: m[k] - ref[k] for k in followed}}
        out["settings"].append(row)
        print(f"  {setting} ({n_seeds} seeds): sum |offset| {off:.3f}, {row['ratio']:.2f} of the first "
              f"(a bias as n^-1/2 would leave {row['ratio_if_n^-1/2']:.2f}, as n^-1/4 {row['ratio_if_n^-1/4']:.2f})")
    for k in sorted(followed, key=lambda k: -abs(first[k] - ref[k]))[:12]:
        print(f"    {k}: " + " -> ".join(f"{m[k] - ref[k]:+.3f}" for _, _, m in means))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
