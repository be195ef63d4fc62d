"""Is the bootstrap ± of `workbench ioi eval` the spread of a number over fresh prompts? Seeds vs ±.

    for s in 1 2 3; do .venv/bin/python bench/ioi_settings.py ... --seed $s --reference 3000x300 \\
        --settings 24000x1500 --n-boot 50 --out runs/bench/ioi_seeds_s$s.json --summary /tmp/s$s.json; done
    .venv/bin/python bench/ioi_seed_spread.py --setting 24000x1500 --reference runs/bench/ioi_settings_v4_full.json \\
        runs/bench/ioi_settings_v4_full.json runs/bench/ioi_seeds_s1.json runs/bench/ioi_seeds_s2.json \\
        runs/bench/ioi_seeds_s3.json --json bench/results/ioi_seed_spread.json

Each record (written by bench/ioi_settings.py, one seed each) holds every number of summary.md
(`evals.report.headline_numbers`) at ``--setting`` with its bootstrap standard error. A seed draws
other train and eval prompts (the same held-out frames), so the standard deviation of a number over
seeds is its sampling error, fit of the supervised dictionaries included, which the bootstrap (it
resamples prompts, the fitted dictionaries held fixed) may leave out. Printed per group of numbers:
the median and 90th percentile of sd over seeds / mean bootstrap ±, the share with sd > 2 ± (and with
the ± less its refits' part, ``se_fit``, where the records have one); and per
seed, how many numbers are within --tol of the reference setting of ``--reference`` (the value its
``reference`` field names), to tell a lucky draw from the setting.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json
import statistics
import sys
from pathlib import Path

from evals.refit import without_fit


def group(key: str) -> str:
    table, rest = key.split(":", 1)
    if table != "interpretability":
        return table
    dictionary = rest.split("/")[1]
    return "interpretability, supervised" if dictionary in ("mean", "mse") else "interpretability, SAE"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", help="bench/ioi_settings.py --out files, one per seed")
    p.add_argument("--setting", default="24000x1500")
    p.add_argument("--reference", required=True, help="the record holding the converged values (its `reference` run)")
    p.add_argument("--tol", type=float, default=0.02)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    runs = []
    for path in args.records:
        rec = json.loads(Path(path).read_text())
        if args.setting not in rec["runs"]:
            p.error(f"{path} has no {args.setting} run (it has {', '.join(rec['runs'])})")
        runs.append((rec["seed"], rec["runs"][args.setting]))
    seeds = [s for s, _ in runs]
    if len(set(seeds)) != len(seeds) or len(seeds) < 3:
        p.error(f"need at least 3 records of different seeds (got seeds {seeds})")
    ref_rec = json.loads(Path(args.reference).read_text())
    ref = ref_rec["runs"][ref_rec["reference"]]["headline"]

    keys = sorted(set.intersection(*(set(r["headline"]) for _, r in runs)) & set(ref))
    rows = {}  # the numbers with a bootstrap ± of their own (the best-over-k edit accuracies and clean have none)
    for k in keys:
        vals = [r["headline"][k] for _, r in runs]
        ses = [r["se"].get(k) for _, r in runs]
        if any(s is None for s in ses):
            continue
        fits = [r.get("se_fit", {}).get(k, 0.0) for _, r in runs]  # the refits' part of each ± (--n-refit; records since v11)
        boot = statistics.fmean(without_fit(se, f) for se, f in zip(ses, fits))
        rows[k] = {"sd": statistics.stdev(vals), "se": statistics.fmean(ses), "se_without_fit": boot, "mean": statistics.fmean(vals),
                   "ref": ref[k], "values": vals}
    out = {"setting": args.setting, "seeds": seeds, "reference": f"{args.reference}:{ref_rec['reference']}", "groups": {},
           "within_tol_per_seed": {}}
    print(f"{len(keys)} numbers of summary.md at {args.setting}, seeds {seeds}; sd over seeds vs mean bootstrap ± "
          f"for the {len(rows)} with a ± of their own")
    for g in sorted({group(k) for k in rows}):
        ks = [k for k in rows if group(k) == g]
        ratio = sorted(rows[k]["sd"] / rows[k]["se"] for k in ks if rows[k]["se"] > 1e-9)
        zero_se = sum(1 for k in ks if rows[k]["se"] <= 1e-9 and rows[k]["sd"] > 1e-9)
        over = sum(1 for k in ks if rows[k]["sd"] > 2 * max(rows[k]["se"], 1e-9))
        over_boot = sum(1 for k in ks if rows[k]["sd"] > 2 * max(rows[k]["se_without_fit"], 1e-9))
        q = (lambda f: ratio[min(len(ratio) - 1, int(f * len(ratio)))]) if ratio else (lambda f: float("nan"))
        worst = max(ks, key=lambda k: rows[k]["sd"] / max(rows[k]["se"], 1e-3))  # largest sd in units of its ± (at least 0.001)
        out["groups"][g] = {"n": len(ks), "median_sd_over_se": q(0.5), "p90_sd_over_se": q(0.9), "sd_over_2se": over,
                            "sd_over_2se_without_fit": over_boot,
                            "se_zero_but_varies": zero_se, "max_sd": max(rows[k]["sd"] for k in ks),
                            "worst": {"key": worst, **rows[worst]}}
        print(f"  {g:32s} n={len(ks):3d}  sd/± median {q(0.5):.2f}  p90 {q(0.9):.2f}  sd > 2±: {over:3d} ({over_boot} without the refits' part)  "
              f"(± 0 but varies: {zero_se}); largest sd {out['groups'][g]['max_sd']:.3f}; "
              f"worst {worst.split(':', 1)[1]} sd {rows[worst]['sd']:.3f} vs ± {rows[worst]['se']:.3f}")
    for i, (s, r) in enumerate(runs):
        out["within_tol_per_seed"][str(s)] = sum(1 for k in keys if abs(r["headline"][k] - ref[k]) <= args.tol)
    mean_in = sum(1 for k in keys if abs(statistics.fmean(r["headline"][k] for _, r in runs) - ref[k]) <= args.tol)
    out["n_numbers"], out["within_tol_of_seed_mean"] = len(keys), mean_in
    print(f"within {args.tol} of {ref_rec['reference']}: per seed {out['within_tol_per_seed']} of {len(keys)}; "
          f"the mean over seeds: {mean_in}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
