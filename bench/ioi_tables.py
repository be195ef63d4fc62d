"""Markdown comparison tables (as in docs/ioi.md) from a `workbench ioi eval` run dir.

    .venv/bin/python bench/ioi_tables.py runs/ioi-eval-toy

One table per axis, one row per (cross-section, dictionary):
- approximation: sufficiency, necessity, LD recovered, FVU, L0;
- control: for each attribute whose counterfactual changes the output on some prompts, the
  supervised edit accuracy, or the greedy SAE edit at k = 1 / 4 / 16 and the F1-guided edit at k = 16;
- interpretability: mean best F1 and coverage of IO, S, Pos at the first tau (SAEs; supervised read-outs for reference).
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import sys
from pathlib import Path

import pandas as pd


def _f(v, nd=2):
    return "–" if v is None or pd.isna(v) else f"{v:.{nd}f}"


def tables(run: Path) -> str:
    ap = pd.read_parquet(run / "approximation.parquet")
    ct = pd.read_parquet(run / "control.parquet")
    it = pd.read_parquet(run / "interpretability.parquet")
    out = ["| cross-section | dictionary | sufficiency | necessity | LD recovered | FVU | L0 |", "|---|---|---|---|---|---|---|"]
    for r in ap.itertuples():
        out.append(f"| {r.cross_section} | {r.dictionary} | {_f(r.sufficiency)} | {_f(r.necessity)} | {_f(r.ld_recovered)} | {_f(r.fvu)} | {_f(r.l0, 1)} |")
    out += ["", "| cross-section | attribute (target changed) | dictionary | no edit | supervised | greedy k=1 / 4 / 16 | F1-guided k=16 |",
            "|---|---|---|---|---|---|---|"]
    for (cs, attr), g in ct.groupby(["cross_section", "attribute"], sort=False):
        changed = g["target_changed"].iloc[0]
        if changed < 0.05:
            continue
        for d, h in g.groupby("dictionary", sort=False):
            sup = h[h.method == "supervised"]["accuracy"]
            def at(method, k):
                mf = h["min_f1"].fillna(0) if "min_f1" in h else 0
                v = h[(h.method == method) & (h.k == k) & (mf == 0)]["accuracy"]
                return _f(v.iloc[0]) if len(v) else "–"
            greedy = " / ".join(at("greedy", k) for k in (1, 4, 16)) if (h.method == "greedy").any() else "–"
            out.append(f"| {cs} | {attr} ({_f(changed)}) | {d} | {_f(h['acc_none'].iloc[0])} | "
                       f"{_f(sup.iloc[0]) if len(sup) else '–'} | {greedy} | {at('f1', 16)} |")
    tau = it["tau"].min()
    out += ["", f"| cross-section | dictionary | location | IO F1 / cov | S F1 / cov | Pos F1 / cov |", "|---|---|---|---|---|---|"]
    sub = it[it.tau == tau]
    for (cs, d, loc), g in sub.groupby(["cross_section", "dictionary", "location"], sort=False):
        cells = []
        for a in ("IO", "S", "Pos"):
            r = g[g.attribute == a]
            cells.append(f"{_f(r['mean_best_f1'].iloc[0])} / {_f(r['coverage'].iloc[0])}" if len(r) else "–")
        out.append(f"| {cs} | {d} | `{loc}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(Path(sys.argv[1])))
