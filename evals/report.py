"""The files ``workbench ioi locate`` and ``workbench ioi eval`` write into a run dir (kind ``ioi``).

Every file is written atomically; tables are written both as JSON (a list of row objects) and as
Parquet with the same columns. Columns of every table are listed here; the app reads these names.

JSON files are strict JSON: undefined numbers (e.g. y when no edit can change the output) are null.

``config.json``  {"kind": "ioi", "config": {"command": "locate"|"eval", ...flags}, "created": t}
``status.json``  {"status": "running"|"done"|"failed", "time": t, ...}

written by ``locate`` (and by ``eval`` when it had to run discovery itself):

``locations.json``  {
    "model", "config" (LocateConfig), "clean": {"accuracy", "logit_diff", "n"}, "names_dropped": [...],
    "heads": [{"layer", "head", "dla" (mean DLA at END onto W_U[IO]-W_U[S]), "attn_io", "attn_s1",
               "attn_s2" (mean attention END->token), "attends" (IO|S1|S2), "ablate_end" (fractional
               LD drop when the head's z at END is mean-ablated), "patch_z": {"IO","S1","S2","END"}
               (fractional LD drop, z patched from the ABC counterfactual), "role"}],
    "locations": [{"location" ("hook[head]@POS"), "hook", "head", "pos", "kind" (q|k|v|z|resid_pre),
                   "patch_abc" (fractional LD drop)}]  ranked by |patch_abc|,
    "cross_sections": [{"name", "locations": ["hook[head]@POS", ...], "description",
                        "evidence": {"patch_abc", "mean_ablation" (group effects), "role"}}],
    "paper_heads" (gpt2 only): {role: {"L.H": role found or null}} }
``heads.parquet``   the "heads" list flattened (patch_z_IO, patch_z_S1, patch_z_S2, patch_z_END).

written by ``eval``:

``cross_sections.json``  the cross-sections evaluated (same objects as in locations.json).
``splits.json``  n_train, n_eval, templates, names_kept, names_dropped, eval_pool,
    counterfactual_pool, train_balance / eval_balance: {attr: {"values", "min_count", "max_count"}}.
``dictionaries.json``  {"clean": {"accuracy", "logit_diff", "n"}, "sae_families": [{"label", "saes":
    [{"path", "hook", "head", "arch", "k", "d_sae", "d_in", "corpus", "positions", "tokens"}]}],
    "skipped": [{"cross_section", "dictionary", "reason"}], "timings": {"data_s", <section>, "total_s"}}
``approximation.{json,parquet}``  one row per (cross_section, dictionary):
    cross_section, dictionary (mean | mse | SAE family label), kind (supervised | sae), arch, k, d_sae,
    corpus, positions, locations, sufficiency, necessity, ld_recovered, ld_clean, ld_ablated,
    ld_reconstructed, ld_without_reconstruction, accuracy_reconstructed, fvu, l0, shrinkage,
    dead_fraction, n_features.
``control.{json,parquet}``  one row per (cross_section, dictionary, attribute, method, k):
    attribute (IO | S | Pos), method (supervised | greedy | f1), k (null for supervised), min_f1 (f1
    edits use only features with F1 > min_f1: 0, and 0.25 / 0.5 / 0.75 at the largest k: the
    causal-effect-vs-interpretability curve; null for supervised), accuracy
    (edit accuracy against counterfactual patching), magnitude (total weight of removed features),
    x, y (normalised: mean-dictionary supervised edit at (0, 1), no edit at y = 0), acc_none
    (accuracy of not editing), target_changed (1 - acc_none), plus the dictionary columns above.
``interpretability.{json,parquet}``  one row per (cross_section, dictionary, location, attribute, tau):
    n_values, mean_best_f1, min_best_f1, coverage (fraction of values with a feature of F1 >=
    f1_threshold, default 0.8), n_distinct_best_features.
``features.parquet``  one row per (cross_section, dictionary, location, tau, feature, attribute) for
    features with F1 > 0: value (the best-matching value), precision, recall, f1.
``diagnostics.json``  rows with "diagnostic": "over_splitting" (attribute Pos; n_split, best_recall,
    summed_recall, over_split per value, any_over_split) or "occlusion" (attributes: {attr:
    {magnitude, coverage, causal, occluded, by}}, any_occluded).
``summary.md``  the headline tables in Markdown.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from workbench.runs import Run, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from evals.harness import Results


def clean_json(obj):
    """NaN / inf -> None, recursively, so the JSON files are strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def write_table(run: Run, name: str, rows: list[dict], json_too: bool = True) -> None:
    """rows -> name.parquet (and name.json, NaN written as null), each written atomically."""
    import io

    import pandas as pd

    if json_too:
        run.write_json(f"{name}.json", clean_json(rows))
    df = pd.DataFrame(rows)
    for c in df.columns:  # lists / dicts are stored as JSON text so Parquet gets one type per column
        if df[c].map(lambda v: isinstance(v, (list, dict))).any():
            import json

            df[c] = df[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(run.path / f"{name}.parquet", buf.getvalue())


def write_locate(run: Run, result: dict) -> None:
    run.write_json("locations.json", clean_json(result))
    heads = []
    for h in result.get("heads", []):
        row = {k: v for k, v in h.items() if k != "patch_z"}
        row.update({f"patch_z_{p}": v for p, v in h.get("patch_z", {}).items()})
        heads.append(row)
    if heads:
        write_table(run, "heads", heads, json_too=False)


def write_eval(run: Run, res: "Results", model: str) -> None:
    run.write_json("cross_sections.json", res.cross_sections)
    run.write_json("splits.json", res.splits)
    run.write_json("dictionaries.json", clean_json({"clean": res.clean, "sae_families": res.families,
                                         "skipped": res.skipped, "timings": res.timings}))
    write_table(run, "approximation", res.approximation)
    write_table(run, "control", res.control)
    write_table(run, "interpretability", res.interpretability)
    write_table(run, "features", res.features, json_too=False)
    run.write_json("diagnostics.json", clean_json(res.diagnostics))
    atomic_write_text(run.path / "summary.md", summary_markdown(res, model))


def _f(v, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def summary_markdown(res: "Results", model: str) -> str:
    """Headline tables: approximation, best edit accuracy per method, interpretability at the first tau."""
    out = [f"# IOI evaluation of `{model}`", "",
           f"Clean: accuracy {_f(res.clean['accuracy'], 3)}, mean LD {_f(res.clean['logit_diff'])} on "
           f"{res.clean['n']} eval prompts ({res.splits['n_train']} train). Total time {_f(res.timings.get('total_s'), 1)} s.", ""]
    out += ["## Cross-sections", ""]
    for cs in res.cross_sections:
        out.append(f"- **{cs['name']}**: {', '.join(f'`{loc}`' for loc in cs['locations'])}" + (f" — {cs['description']}" if cs.get("description") else ""))
    out += ["", "## Approximation", "", "| cross-section | dictionary | sufficiency | necessity | LD recovered | FVU | L0 |", "|---|---|---|---|---|---|---|"]
    for r in res.approximation:
        out.append(f"| {r['cross_section']} | {r['dictionary']} | {_f(r['sufficiency'])} | {_f(r['necessity'])} | "
                   f"{_f(r['ld_recovered'])} | {_f(r['fvu'])} | {_f(r['l0'], 1)} |")
    out += ["", "## Control (edit accuracy; SAE edits: the best over k, with the k that reached it)", "",
            "| cross-section | dictionary | attribute | no edit | supervised / greedy | F1-guided | target changed |", "|---|---|---|---|---|---|---|"]
    keyed: dict = {}
    for r in res.control:
        keyed.setdefault((r["cross_section"], r["dictionary"], r["attribute"]), []).append(r)
    for (cs, d, a), rows in keyed.items():
        def best(method):
            rs = [r for r in rows if r["method"] == method and not r.get("min_f1")]
            if not rs:
                return "–"
            b = max(rs, key=lambda r: r["accuracy"])
            return _f(b["accuracy"]) + (f" (k={b['k']})" if b["k"] is not None else "")
        main = best("supervised") if rows[0]["kind"] == "supervised" else best("greedy")
        out.append(f"| {cs} | {d} | {a} | {_f(rows[0]['acc_none'])} | {main} | {best('f1')} | {_f(rows[0]['target_changed'])} |")
    if res.interpretability:
        tau = res.interpretability[0]["tau"]
        out += ["", f"## Interpretability (tau = {tau}: mean best F1 / coverage per attribute)", "",
                "| cross-section | dictionary | location | IO | S | Pos |", "|---|---|---|---|---|---|"]
        keyed = {}
        for r in res.interpretability:
            if r["tau"] == tau:
                keyed.setdefault((r["cross_section"], r["dictionary"], r["location"]), {})[r["attribute"]] = r
        for (cs, d, loc), by in keyed.items():
            cells = [f"{_f(by[a]['mean_best_f1'])} / {_f(by[a]['coverage'])}" if a in by else "–" for a in ("IO", "S", "Pos")]
            out.append(f"| {cs} | {d} | `{loc}` | " + " | ".join(cells) + " |")
    first_tau = res.interpretability[0]["tau"] if res.interpretability else None
    flagged = [d for d in res.diagnostics if d["kind"] == "sae" and d["tau"] == first_tau
               and (d.get("any_occluded") or d.get("any_over_split"))]
    if flagged:
        out += ["", f"## Diagnostics flagged (SAEs, tau = {first_tau}; all in diagnostics.json)", ""]
        for d in flagged:
            if d["diagnostic"] == "occlusion":
                occ = {a: v["by"] for a, v in d["attributes"].items() if v["occluded"]}
                out.append(f"- occlusion in {d['cross_section']} / {d['dictionary']} at `{d['location']}`: " +
                           ", ".join(f"{a} hidden by {', '.join(b)}" for a, b in occ.items()))
            else:
                out.append(f"- over-splitting of Pos in {d['cross_section']} / {d['dictionary']} at `{d['location']}` "
                           f"(tau {d['tau']}): {d['n_split']} precise features per value")
    if res.skipped:
        out += ["", "## Skipped", ""] + [f"- {s['dictionary']} on {s['cross_section']}: {s['reason']}" for s in res.skipped]
    return "\n".join(out) + "\n"
