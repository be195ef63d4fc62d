"""How many prompts does `workbench ioi eval` need? Every reported number at small settings vs a large one.

    .venv/bin/python bench/ioi_settings.py --locations runs/demo-ioi-locate --location blocks.1.hook_resid_post@END \\
        --sae runs/demo-sae-topk --sae runs/demo-sae-feature-choice --sae runs/demo-sae-mutual-choice \\
        --reference 96000x8000 --settings 3000x1500 12000x1500 24000x1500 24000x3000 --n-boot 50 \\
        --out runs/bench/ioi_settings_v4_full.json --summary bench/results/ioi_settings_v4.json

Runs the evaluation in-process (one model load) at the reference setting (n_train x n_eval; taken as
the converged values) and at each candidate, with the same seed: the prompts of a smaller setting are
the first prompts of the larger one, so a difference is the sampling error of using fewer. Every
number on a 0-1 scale is compared (approximation ratios, accuracies, FVU, F1 and coverage, edit
accuracies and magnitudes, interpretable fractions, the frozen-decoder FVUs); logit differences, L0 and
the normalised edit coordinates x, y (ratios whose denominators can be near 0) are left out. Prints,
per candidate, the largest |difference|, where it is, how many numbers are within --tol, and the
largest bootstrap ± at that setting (what one seed's difference is typically of the order of); then
the same for the numbers summary.md shows (`evals.report.headline_numbers`: the tables a reader of the
report sees, without the finer interpretation kinds and per-k edit rows), and the smallest candidate
whose every such number is within --tol of the reference.
Every value goes to --out (a run-store path; large), the comparison to --summary (small, kept in the repo).
A setting may name the fit prompts too (n_train x n_eval x n_fit); the reference runs last, so a run cut
short keeps the candidates (`--reuse` picks them up). With several candidates it also prints how each kind
of number's ± shrinks with the train prompts (`se_scaling`: means as n^-1/2, counts over a threshold slower).
Large references want a GPU: `--device cuda` (docs/ioi.md, "How many prompts").
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from evals.refit import without_fit

SKIP = ("logit_diff", "ld_clean", "ld_ablated", "ld_reconstructed", "ld_without_reconstruction", "l0", "l0_full", "l0_interpretable",
        "x", "y", "n_features", "n_values", "n_interpretable", "frozen_k", "frozen_l0", "frozen_minus_sae_fvu", "occlusion_ratio",
        "dead_fraction", "n_removed", "k", "min_f1", "f1_threshold", "d_sae", "target_changed", "min_best_f1", "read_z")


def compared(key: str) -> bool:
    """Whether a flattened key is a number the comparison uses (also for records written before SKIP grew)."""
    metric = key.rsplit("/", 1)[-1].split(":")[-1]
    return metric not in SKIP and not metric.startswith(("n_split", "magnitude_"))


def flatten(res) -> tuple[dict, dict, dict]:
    """{key: value}, {key: se}, {key: the fit's part of that se (--n-refit)} of every compared number of one evaluation."""
    vals, ses, fits = {}, {}, {}

    def add(prefix, row, ids):
        for k, v in row.items():
            if (k in ids or k in SKIP or k.endswith(("_se", "_se_fit")) or k.startswith(("n_split", "magnitude_")) or not isinstance(v, (int, float))
                    or isinstance(v, bool)):  # magnitude_*: norms of supervised vectors, not on a 0-1 scale
                continue
            key = "/".join(str(row.get(i)) for i in ids) + f"/{k}"
            vals[f"{prefix}:{key}"] = float(v)
            if row.get(f"{k}_se") is not None:
                ses[f"{prefix}:{key}"] = float(row[f"{k}_se"])
            if row.get(f"{k}_se_fit") is not None:
                fits[f"{prefix}:{key}"] = float(row[f"{k}_se_fit"])

    add("clean", {k: v for k, v in res.clean.items() if k != "n"}, [])
    for r in res.approximation:
        add("approximation", r, ["cross_section", "dictionary"])
    for r in res.interpretable:
        add("interpretable", r, ["cross_section", "dictionary", "f1_threshold"])
    for r in res.control:
        add("control", r, ["cross_section", "dictionary", "attribute", "method", "k", "min_f1"])
    for r in res.interpretability:
        add("interpretability", r, ["cross_section", "dictionary", "location", "attribute", "f1_threshold"])
    for r in res.diagnostics_table:
        add("diagnostics", r, ["cross_section", "dictionary", "location"])
    return vals, ses, fits


def compare(run: dict, ref: dict, tol: float, field: str = "values") -> dict:
    """How far one setting's numbers are from a reference's: the largest difference, counts within tol.
    field "values": every 0-1 number; "headline": those summary.md shows (evals.report.headline_numbers)."""
    diffs = {k: abs(v - ref[k]) for k, v in run[field].items() if k in ref and (field == "headline" or compared(k))}
    worst = max(diffs, key=diffs.get)
    by_table, outside = {}, {}
    for k, d in diffs.items():
        table, metric = k.split(":")[0], k.rsplit("/", 1)[-1]
        by_table[table] = max(by_table.get(table, 0.0), d)
        if d > tol:
            key = f"{table}/{metric}"
            outside[key] = outside.get(key, 0) + 1
    ses, fits = run["se"], run.get("se_fit", {})
    z = {k: d / ses[k] for k, d in diffs.items() if ses.get(k) is not None and ses[k] > 0}  # difference in units of its ±
    boot = {k: without_fit(ses[k], fits.get(k, 0.0)) for k in z}  # the ± without the refits' part
    return {"max_abs_diff": diffs[worst], "worst": worst, "within_tol": sum(d <= tol for d in diffs.values()), "n": len(diffs),
            "n_with_se": len(z), "within_2se": sum(v <= 2 for v in z.values()), "within_3se": sum(v <= 3 for v in z.values()),
            "within_tol_or_2se": sum(d <= tol or z.get(k, math.inf) <= 2 for k, d in diffs.items()),
            "within_2se_without_fit": sum(diffs[k] <= 2 * b for k, b in boot.items()), "n_with_se_fit": sum(k in fits for k in z),
            "max_abs_diff_by_table": by_table, "outside_tol": outside,
            "max_se": max((v for k, v in run["se"].items() if compared(k)), default=float("nan")), "wall_s": run["wall_s"],
            "outside": sorted(((k, round(d, 4)) for k, d in diffs.items() if d > tol), key=lambda x: -x[1])[:20]}


def parse_setting(setting: str) -> tuple[int, int, int | None]:
    """"24000x3000" -> (24000, 3000, None: fit prompts as many as train); "96000x3000x24000" sets n_fit too."""
    try:
        parts = [int(x) for x in setting.split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or min(parts) < 0:
        raise SystemExit(f"setting {setting!r}: write n_train x n_eval, optionally x n_fit (e.g. 24000x3000 or 96000x3000x24000)")
    return parts[0], parts[1], (parts[2] if len(parts) == 3 else None)


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def se_scaling(runs: dict, settings: list[str]) -> dict:
    """How each kind of number's bootstrap ± shrinks with the train prompts: per metric (coverage, mean best F1,
    interpretable fraction, of the interpretability table), the median ratio of a setting's ± to the first
    setting's, and the exponent a in ± ~ n_train^-a it implies (1/2 for a mean; about 1/4 for a count of values
    over a threshold when many values sit near it: the values within one ± of it are themselves ~ ±)."""
    import statistics

    base = runs[settings[0]]["se"]
    n0 = parse_setting(settings[0])[0]
    out = {}
    for s in settings[1:]:
        ratio_n = parse_setting(s)[0] / n0
        for metric in ("coverage", "mean_best_f1", "interpretable_fraction"):
            ks = [k for k, v in base.items() if k.startswith("interpretability:") and k.endswith("/" + metric) and v > 1e-4
                  and runs[s]["se"].get(k, 0) > 0]
            if ks and ratio_n != 1:
                r = statistics.median(runs[s]["se"][k] / base[k] for k in ks)
                out[f"{s} vs {settings[0]}/{metric}"] = {"n": len(ks), "median_se_ratio": r, "n_train_ratio": ratio_n,
                                                         "exponent": -math.log(r) / math.log(ratio_n)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--locations", required=True)
    p.add_argument("--location", action="append", default=[])
    p.add_argument("--cross-section", action="append", default=[])
    p.add_argument("--sae", action="append", default=[])
    p.add_argument("--reference", default="96000x8000", help="n_train x n_eval (x n_fit; default n_fit = n_train) taken as converged")
    p.add_argument("--settings", nargs="+", default=["3000x1500", "12000x1500", "24000x1500", "24000x3000"])
    p.add_argument("--pairs", nargs="*", default=[], metavar="CAND:REF", help="further comparisons between stored settings")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--n-refit", type=int, default=8, help="refits of the supervised dictionaries per candidate (their fit noise in the ±)")
    p.add_argument("--device", default="cpu", help="torch device of the model and the evaluation (cuda for large references)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=0.02)
    p.add_argument("--out", default="runs/bench/ioi_settings_full.json", help="every value of every setting")
    p.add_argument("--summary", default="bench/results/ioi_settings.json", help="the comparison per setting")
    p.add_argument("--reuse", action="store_true", help="keep the settings already in --out (same SAEs and locations) instead of re-running them")
    args = p.parse_args(argv)
    for setting in [*args.settings, args.reference]:  # a typo fails now, not after the settings before it have run
        parse_setting(setting)

    from cli.ioi import load_cross_sections, select_sections
    from evals.dictionary import load_families
    from evals.harness import EvalConfig, evaluate
    from evals.report import headline_numbers
    from workbench.models import load_model

    model = load_model(args.model, args.device)
    families = load_families(args.sae, args.device)
    _, sections = load_cross_sections(args.locations)
    sections = select_sections(sections, args.cross_section, args.location)
    record = {"model": args.model, "locations": args.locations, "location": args.location, "sae": args.sae, "seed": args.seed,
              "reference": args.reference, "tol": args.tol, "cpu_count": os.cpu_count(), "device": _device_name(args.device), "runs": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.reuse and out.exists():
        old = json.loads(out.read_text())
        if all(old.get(k) == record[k] for k in ("model", "locations", "location", "sae", "seed")):
            record["runs"] = {k: v for k, v in old["runs"].items() if "headline" in v}  # older records lack headline numbers
    for setting in [*args.settings, args.reference]:  # the reference last: a run cut short keeps the candidates
        if setting in record["runs"]:
            print(f"{setting}: reused from {out}", flush=True)
            continue
        n_train, n_eval, n_fit = parse_setting(setting)
        t0, load = time.perf_counter(), os.getloadavg()[0]
        ref = setting == args.reference  # no ± for the reference: its own is the candidates' x sqrt(n / N)
        res = evaluate(model, EvalConfig(model=args.model, n_train=n_train, n_eval=n_eval, n_fit=n_fit, seed=args.seed,
                                         n_boot=0 if ref else args.n_boot, n_refit=0 if ref or n_fit == 0 else args.n_refit,
                                         device=args.device),
                       sections, families, progress=lambda m: print(f"  [{setting}] {m}", flush=True))
        vals, ses, fits = flatten(res)
        record["runs"][setting] = {"values": vals, "se": ses, "se_fit": fits, "headline": headline_numbers(res), "wall_s": time.perf_counter() - t0,
                                   "load_before": load, "timings": res.timings, "device": record["device"]}
        print(f"{setting}: {len(vals)} numbers, {time.perf_counter() - t0:.0f} s (load {load:.1f})", flush=True)
        out.write_text(json.dumps(record, indent=1))
    pairs = [(c, args.reference) for c in args.settings] + [tuple(x.split(":")) for x in args.pairs]
    summary, passing = {}, []
    for cand, refname in pairs:
        for field, what in (("values", "every 0-1 number"), ("headline", "summary.md's numbers")):
            s = compare(record["runs"][cand], record["runs"][refname][field], args.tol, field)
            summary[f"{cand} vs {refname}" + ("" if field == "values" else " (headline)")] = s
            print(f"{cand} vs {refname}, {what}: max |diff| {s['max_abs_diff']:.3f} at {s['worst']}; {s['within_tol']}/{s['n']} "
                  f"within {args.tol}; numbers off by more, per table/metric: {s['outside_tol']}; within 2 ± of it: "
                  f"{s['within_2se']}/{s['n_with_se']} of those with a ± ({s['within_2se_without_fit']} without the refits' part); within {args.tol} or 2 ±: {s['within_tol_or_2se']}/{s['n']}")
            if field == "headline" and refname == args.reference and s["within_tol"] == s["n"]:
                passing.append(cand)
    cands = [c for c in args.settings if record["runs"][c]["se"]]
    if len(cands) > 1:
        record["se_scaling"] = se_scaling(record["runs"], cands)
        for k, v in record["se_scaling"].items():
            print(f"± of {k}: median ratio {v['median_se_ratio']:.2f} over {v['n']} numbers at {v['n_train_ratio']:g}x the train "
                  f"prompts: ± ~ n_train^-{v['exponent']:.2f}")
    smallest = min(passing, key=lambda c: sum(parse_setting(c)[:2]), default=None)
    print(f"smallest setting with every number of summary.md within {args.tol} of {args.reference}: {smallest or 'none of these'}")
    record["summary"], record["smallest_headline_within_tol"] = summary, smallest
    out.write_text(json.dumps(record, indent=1))
    small = {k: v for k, v in record.items() if k != "runs"}
    small["timings"] = {s: {"wall_s": r["wall_s"], "load_before": r["load_before"], "device": r.get("device")} for s, r in record["runs"].items()}
    Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
    Path(args.summary).write_text(json.dumps(small, indent=1))
    print(f"every value in {out}; the comparison in {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
