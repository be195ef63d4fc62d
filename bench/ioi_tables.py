"""Markdown comparison tables (as in docs/ioi.md) from a `workbench ioi eval` run dir, every number with its ±.

    .venv/bin/python bench/ioi_tables.py runs/ioi-eval-toy

One table per axis, one row per (cross-section, dictionary):
- approximation: sufficiency, necessity, LD recovered (absolute, the authors'; signed), top-1, FVU, L0;
- interpretable features only (SAEs): sufficiency / necessity / LD recovered at each F1 threshold, full beside;
- control: for each attribute whose counterfactual changes the output on some prompts, the
  supervised edit accuracy, or the greedy SAE edit at k = 2 / 4 / 16 features and the F1-guided edit at k = 16;
- interpretability: mean best F1 and coverage (at each F1 threshold) of IO, S, Pos;
- diagnostics: occlusion, over-splitting of Pos, frozen decoder.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import sys
from pathlib import Path

import pandas as pd

from evals.report import uninformative


def _f(v, nd=2):
    return "–" if v is None or pd.isna(v) else f"{v:.{nd}f}"


def _pm(r, key, nd=2):
    v, se = getattr(r, key, None), getattr(r, f"{key}_se", None)
    if v is None or pd.isna(v):
        return "–"
    return _f(v, nd) + ("" if se is None or pd.isna(se) else f" ± {_f(se, nd)}")


def tables(run: Path) -> str:
    ap = pd.read_parquet(run / "approximation.parquet")
    ct = pd.read_parquet(run / "control.parquet")
    it = pd.read_parquet(run / "interpretability.parquet")
    out = ["| cross-section | dictionary | sufficiency | necessity | LD recovered | LD recovered (signed) | top-1 | FVU | L0 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in ap.itertuples():
        ok = bool(getattr(r, "necessity_informative", True))
        nec, rec, signed = (_pm(r, k) if ok else uninformative(r) for k in ("necessity", "ld_recovered", "ld_recovered_signed"))
        out.append(f"| {r.cross_section} | {r.dictionary} | {_pm(r, 'sufficiency')} | {nec} | {rec} | "
                   f"{signed} | {_pm(r, 'top1_reconstructed')} | {_pm(r, 'fvu')} | {_pm(r, 'l0', 1)} |")
    if (run / "interpretable.parquet").exists():
        io = pd.read_parquet(run / "interpretable.parquet")
        out += ["", "| cross-section | dictionary | F1 >= | interpretable fraction | L0 kept / full | sufficiency (full) | necessity (full) | LD recovered (full) |",
                "|---|---|---|---|---|---|---|---|"]
        for r in io.itertuples():
            out.append(f"| {r.cross_section} | {r.dictionary} | {_f(r.f1_threshold)} | {_pm(r, 'interpretable_fraction')} | "
                       f"{_f(r.l0_interpretable, 1)} / {_f(r.l0_full, 1)} | {_pm(r, 'sufficiency')} ({_f(r.sufficiency_full)}) | "
                       f"{_pm(r, 'necessity')} ({_f(r.necessity_full)}) | {_pm(r, 'ld_recovered')} ({_f(r.ld_recovered_full)}) |")
    out += ["", "| cross-section | attribute (target changed) | dictionary | no edit | supervised | greedy k=2 / 4 / 16 | F1-guided k=16 |",
            "|---|---|---|---|---|---|---|"]
    for (cs, attr), g in ct.groupby(["cross_section", "attribute"], sort=False):
        changed = g["target_changed"].iloc[0]
        if changed < 0.05:
            continue
        for d, h in g.groupby("dictionary", sort=False):
            sup = h[h.method == "supervised"]

            def at(method, k):
                mf = h["min_f1"].fillna(0)
                v = h[(h.method == method) & (h.k == k) & (mf == 0)]
                return _pm(next(v.itertuples()), "accuracy") if len(v) else "–"
            greedy = " / ".join(at("greedy", k) for k in (2, 4, 16)) if (h.method == "greedy").any() else "–"
            out.append(f"| {cs} | {attr} ({_f(changed)}) | {d} | {_pm(next(h.itertuples()), 'acc_none')} | "
                       f"{_pm(next(sup.itertuples()), 'accuracy') if len(sup) else '–'} | {greedy} | {at('f1', 16)} |")
    thr = sorted(it["f1_threshold"].unique())
    out += ["", f"| cross-section | dictionary | location | IO F1; coverage at {' / '.join(map(str, thr))} | S | Pos | interpretable fraction |",
            "|---|---|---|---|---|---|---|"]
    for (cs, d, loc), g in it.groupby(["cross_section", "dictionary", "location"], sort=False):
        cells = []
        for a in ("IO", "S", "Pos"):
            r = g[g.attribute == a].sort_values("f1_threshold")
            v = r["above_chance"].iloc[0] if len(r) and "above_chance" in r else None
            chance = bool(pd.notna(v) and not v)  # a supervised read-out at chance (None / NaN: an SAE, or an older run)
            cells.append(f"{_pm(next(r.itertuples()), 'mean_best_f1')}; " + " / ".join(_f(c) for c in r["coverage"])
                         + (" (at chance)" if chance else "") if len(r) else "–")
        anyr = g[g.attribute == "(any)"].sort_values("f1_threshold")
        frac = " / ".join(_pm(r, "interpretable_fraction") for r in anyr.itertuples())
        out.append(f"| {cs} | {d} | `{loc}` | " + " | ".join(cells) + f" | {frac} |")
    if (run / "diagnostics.parquet").exists():
        dg = pd.read_parquet(run / "diagnostics.parquet")
        out += ["", "| cross-section | dictionary | location | occluded | coverage IO / S / Pos | over-split Pos (split ABB / BAB) | FVU SAE vs frozen supervised (k) |",
                "|---|---|---|---|---|---|---|"]
        for r in dg.itertuples():
            frozen = f"{_pm(r, 'fvu_sae')} vs {_pm(r, 'fvu_frozen')} ({r.frozen_k})" if "fvu_frozen" in dg and pd.notna(r.fvu_frozen) else "–"
            split = f"{'yes' if r.over_split else 'no'} ({getattr(r, 'n_split_ABB', '–')} / {getattr(r, 'n_split_BAB', '–')})"
            out.append(f"| {r.cross_section} | {r.dictionary} | `{r.location}` | {r.occluded or 'no'} | "
                       f"{_f(r.coverage_IO)} / {_f(r.coverage_S)} / {_f(r.coverage_Pos)} | {split} | {frozen} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a `workbench ioi eval` run dir")
    args = p.parse_args(argv)
    if not (args.run / "approximation.parquet").exists():
        p.error(f"{args.run} has no approximation.parquet; pass a `workbench ioi eval` run dir")
    print(tables(args.run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
