"""IOI evaluation: the discovered circuit, sufficiency/necessity per cross-section (full reconstruction and
interpretable features only), edit accuracy vs edit size (supervised line as reference), the normalised
edit-magnitude plot, F1/coverage heatmaps over the interpretation space, and the diagnostics (occlusion,
over-splitting, frozen decoder). Every number carries its bootstrap ± (`<name>_se` columns). Reads the
files `workbench ioi locate|eval` write (listed in evals/report.py).
"""

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

import charts
import data
import ui

ui.setup("IOI evaluation")
run = ui.pick_run("ioi", "IOI run")
if run is None:
    st.stop()
path = run["path"]
meta = data.read_json(path, "config.json")
cfg = meta.get("config", {}) if isinstance(meta, dict) else {}
dicts = data.read_json(path, "dictionaries.json")
locs = data.read_json(path, "locations.json")
locs_from = "this run"
if not isinstance(locs, dict) and cfg.get("locations"):  # `ioi eval --locations X` without discovery output of its own
    p = Path(cfg["locations"])
    alt_dir, alt_name = (p, "locations.json") if p.suffix != ".json" else (p.parent, p.name)
    other = data.read_json(alt_dir, alt_name)
    if isinstance(other, dict):
        locs, locs_from = other, str(p)
clean = (dicts.get("clean") if isinstance(dicts, dict) else None) or (locs.get("clean") if isinstance(locs, dict) else None)
settings = (dicts.get("settings") if isinstance(dicts, dict) else None) or {}


def pm(d: dict, key: str, nd: int = 3) -> str:
    """A number with its bootstrap ± when the file has one."""
    se = d.get(f"{key}_se")
    return data.number(d.get(key), nd) + (f" ± {data.number(se, nd)}" if se is not None else "")


bits = [f"`workbench ioi {cfg.get('command', '?')}`", f"model {cfg.get('model', '?')}", f"status {run['status']}"]
if clean:
    bits.append(f"clean accuracy (LD > 0) {pm(clean, 'accuracy')}" + (f", top-1 {pm(clean, 'top1_accuracy')}" if "top1_accuracy" in clean else "")
                + f", logit diff {pm(clean, 'logit_diff')} on {clean.get('n')} prompts")
if isinstance(dicts, dict) and dicts.get("timings", {}).get("total_s") is not None:
    bits.append(f"{dicts['timings']['total_s']:.0f} s")
st.caption(" · ".join(bits))
if cfg.get("s2") == "ordinal":
    st.caption('Prompts say S2 by its place in the pair ("the former" / "the latter", `--s2 ordinal`): S is known only '
               "through Pos, and the Pos counterfactual swaps the pair and the word together.")
if settings.get("n_boot"):
    st.caption(f"± = bootstrap standard error over {settings['n_boot']} resamples of the prompts (columns `*_se`). "
               f"A feature is active when {settings.get('activation_rule', 'code > 0')}.")

APPROX_DOMAIN = (-1.25, 1.25)


def pick_cross_section(col, table, key):
    """Cross-section selectbox over a result table, preselecting the user's own ("custom") if present."""
    sections = sorted(table["cross_section"].unique())
    return col.selectbox("Cross-section", sections, key=key,
                         index=sections.index("custom") if "custom" in sections else 0)


def with_se(df: pd.DataFrame, cols: list[str]) -> list[str]:
    """cols, each followed by its _se column where the table has one."""
    return [c2 for c in cols if c in df for c2 in (c, f"{c}_se") if c2 in df]


# ---- approximation ------------------------------------------------------------------------------
approx = data.read_table(path, "approximation")
st.subheader("Sufficiency and necessity per cross-section")
with ui.section("Approximation"):
    if isinstance(approx, data.Missing):
        ui.not_available("Approximation", approx.reason + ("; this is a `workbench ioi locate` run" if cfg.get("command") == "locate" else ""))
    else:
        cols = ["cross_section", "dictionary", "kind"] + with_se(approx, ["sufficiency", "necessity", "ld_recovered", "ld_recovered_signed",
                                                                           "fvu", "l0", "accuracy_reconstructed", "top1_reconstructed"])
        cols += [c for c in ("n_features", "ablation_effect", "necessity_informative") if c in approx]
        c1, c2 = st.columns(2)
        notes = []
        for col, metric in ((c1, "sufficiency"), (c2, "necessity")):
            col.altair_chart(charts.heatmap(approx, "dictionary", "cross_section", metric, title=metric, scheme="blueorange",
                                            domain=APPROX_DOMAIN, text=True), width="stretch")
            notes.append(charts.clamp_note(approx, metric, APPROX_DOMAIN))
        st.dataframe(approx[cols], hide_index=True, key="approx_table")
        st.caption("Sufficiency: logit difference kept when the activations are replaced by the reconstruction; necessity: "
                   "LD lost when the reconstruction is removed (both 1 = perfect; the colour scale is centred on 0, so 0 is white "
                   "and negative values are the other hue). LD recovered = |LD_rec − LD_abl| / |LD_clean − LD_abl| as the "
                   "authors compute it; the signed value is beside it. " + " ".join(n for n in notes if n))
        if "necessity_informative" in approx and not approx["necessity_informative"].all():
            weak = sorted(set(approx.loc[~approx["necessity_informative"].astype(bool), "cross_section"]))
            st.caption(f"Necessity and LD recovered are not informative on {', '.join(weak)}: mean ablation there moves LD by "
                       "less than 10% (ablation_effect), so both divide by nearly 0 (the model has a backup for it).")

# ---- interpretable features --------------------------------------------------------------------
interp_only = data.read_table(path, "interpretable")
st.subheader("Interpretable features only vs the full reconstruction")
with ui.section("Interpretable features"):
    if isinstance(interp_only, data.Missing):
        ui.not_available("Interpretable-feature approximation", interp_only.reason + "; only SAE families have it")
    else:
        c1, c2 = st.columns(2)
        cs = pick_cross_section(c1, interp_only, "interp_only_cs")
        metric = c2.selectbox("Metric", ["sufficiency", "necessity", "ld_recovered", "interpretable_fraction"], key="interp_only_metric")
        sub = interp_only[interp_only["cross_section"] == cs]
        sub = sub.assign(lo=sub[metric] - sub[f"{metric}_se"].fillna(0), hi=sub[metric] + sub[f"{metric}_se"].fillna(0))
        base = alt.Chart(sub).encode(x=alt.X("f1_threshold:Q", title="F1 threshold (a feature is interpretable at F1 ≥ t)",
                                             scale=alt.Scale(zero=False)), color=alt.Color("dictionary:N"))
        layers = [base.mark_line(point=True).encode(y=alt.Y(f"{metric}:Q", title=metric),
                                                    tooltip=["dictionary", "f1_threshold", metric, f"{metric}_se"]),
                  base.mark_rule().encode(y="lo:Q", y2="hi:Q")]
        if f"{metric}_full" in sub:
            full = sub.drop_duplicates("dictionary")
            layers.append(alt.Chart(full).mark_rule(strokeDash=[6, 3]).encode(
                y=f"{metric}_full:Q", color="dictionary:N", tooltip=["dictionary", f"{metric}_full"]))
        st.altair_chart(alt.layer(*layers).properties(title=f"{metric}: interpretable features only (dashed: all features)"),
                        width="stretch")
        st.caption("Each point keeps only the features whose best interpretation (over the whole interpretation space) has "
                   "F1 ≥ the threshold, and reconstructs from them; bars: ± bootstrap standard error.")
        st.dataframe(sub[[c for c in sub.columns if c not in ("lo", "hi", "kind", "arch")]], hide_index=True, key="interp_only_table")

# ---- control ------------------------------------------------------------------------------------
control = data.read_table(path, "control")
st.subheader("Control: edit accuracy")
with ui.section("Control"):
    if isinstance(control, data.Missing):
        ui.not_available("Edit accuracy", control.reason)
    else:
        c1, c2 = st.columns(2)
        cs = pick_cross_section(c1, control, "ctrl_cs")
        attr = c2.selectbox("Attribute", sorted(control["attribute"].unique()), key="ctrl_attr")
        sub = control[(control["cross_section"] == cs) & (control["attribute"] == attr)]
        min_f1 = sub["min_f1"].fillna(0) if "min_f1" in sub else pd.Series(0.0, index=sub.index)
        sae_rows = sub[(sub["method"] != "supervised") & (min_f1 == 0)].dropna(subset=["k"])  # the edit-size curves
        curve = sub[(sub["method"] == "f1") & (min_f1 > 0)]  # the F1-threshold curve (at the largest k)
        sup = sub[sub["method"] == "supervised"]
        layers = []
        if len(sae_rows):
            layers.append(charts.lines(sae_rows, "k", "accuracy", color="dictionary", dash="method"))
        if len(sup):
            layers.append(alt.Chart(sup).mark_rule(strokeWidth=2).encode(
                y="accuracy:Q", color=alt.Color("dictionary:N"), tooltip=["dictionary", "accuracy", "accuracy_se"]))
        if len(sub):
            none = sub["acc_none"].iloc[0]
            layers.append(alt.Chart(pd.DataFrame({"accuracy": [none], "label": ["no edit"]})).mark_rule(
                strokeDash=[2, 2], color="gray").encode(y="accuracy:Q", tooltip=["label", "accuracy"]))
        left, right = st.columns(2)
        if layers:
            left.altair_chart(alt.layer(*layers).properties(title=f"Edit accuracy vs features changed ({attr})"), width="stretch")
        left.caption("Lines: SAE edits of k features (greedy: k swaps; F1-guided: k/2 removed + k/2 added), the line style "
                     "names the method (legend); solid horizontal rules: supervised dictionaries; dotted grey: no edit."
                     + ("" if len(sae_rows) else " No SAE edits here (an SAE family is evaluated where it covers every location)."))
        pts = sub.dropna(subset=["x", "y"])
        if pts.empty:
            reason = ("the supervised edit is no better than not editing here (both agree with the counterfactual equally "
                      "often), so the normalised accuracy y is undefined" if len(sub) and sup["y"].isna().all()
                      else "no edit has both coordinates")
            right.info(f"Normalised edit magnitude: nothing to plot for {cs} / {attr} ({reason}).")
        else:
            pts = pts.assign(k=pts["k"].astype("Float64").astype(str).replace("<NA>", "–"))
            mag = alt.Chart(pts, title="Normalised edit magnitude").mark_point(filled=True, size=80).encode(
                x=alt.X("x:Q", title="normalised magnitude (weight removed)"), y=alt.Y("y:Q", title="normalised accuracy"),
                color="dictionary:N", shape="method:N",
                tooltip=["dictionary", "method", "k", "min_f1", "x", "x_se", "y", "y_se", "accuracy", "magnitude"])
            rules = alt.Chart(pd.DataFrame({"y": [0.0, 1.0]})).mark_rule(color="gray", strokeDash=[2, 2]).encode(y="y:Q")
            right.altair_chart((rules + mag).interactive(), width="stretch")
            neg = pts[pts["x"] < 0]
            right.caption("The mean dictionary's supervised edit sits at (0, 1), not editing at y = 0; up and left is better. "
                          "x = (w − w_sup) / (1 − w_sup) with w the weight of the reconstruction an edit removes: x < 0 means "
                          "the edit removed less than the supervised edit does (a smaller edit), x = 1 that it removed all of it."
                          + (f" Here {len(neg)} of {len(pts)} edits have x < 0 (down to {neg['x'].min():.2f}): "
                             f"{', '.join(sorted(set(neg['dictionary'].astype(str) + ' ' + neg['method'].astype(str))))} "
                             "removed less of the reconstruction than the supervised edit." if len(neg) else ""))
        if len(curve):
            base_k = sae_rows[(sae_rows["method"] == "f1") & (sae_rows["k"] == curve["k"].iloc[0])]
            c = pd.concat([base_k, curve]).assign(min_f1=lambda d: d["min_f1"].fillna(0))
            st.altair_chart(charts.lines(c, "min_f1", "accuracy", color="dictionary",
                                         title=f"F1-guided edits at k = {int(curve['k'].iloc[0])}: accuracy vs the F1 a feature needs"),
                            width="stretch")

# ---- interpretability ---------------------------------------------------------------------------
interp = data.read_table(path, "interpretability")
st.subheader("Interpretability: F1 and coverage over the interpretation space")
with ui.section("Interpretability"):
    if isinstance(interp, data.Missing):
        ui.not_available("F1/coverage", interp.reason)
    elif "f1_threshold" not in interp:
        ui.not_available("F1/coverage", "this run was written by an older `ioi eval` (no f1_threshold column); re-run it")
    else:
        c1, c2 = st.columns(2)
        cs = pick_cross_section(c1, interp, "interp_cs")
        thr = c2.selectbox("F1 threshold (covered / interpretable at F1 ≥ t)", sorted(interp["f1_threshold"].unique()), key="f1_thr")
        sub = interp[(interp["cross_section"] == cs) & (interp["f1_threshold"] == thr)]
        sub = sub.assign(row=sub["dictionary"] + " @ " + sub["location"])
        per_value = sub.dropna(subset=["coverage"])
        c1.altair_chart(charts.heatmap(per_value, "attribute", "row", "mean_best_f1", title="mean best F1 (per value)",
                                       domain=(0, 1), text=True), width="stretch")
        c2.altair_chart(charts.heatmap(per_value, "attribute", "row", "coverage", title=f"coverage at F1 ≥ {thr:g}",
                                       domain=(0, 1), text=True), width="stretch")
        kinds = sub[sub["attribute"] != "(any)"]
        c1.altair_chart(alt.Chart(kinds, title=f"features whose best interpretation has F1 ≥ {thr:g}, by kind").mark_bar().encode(
            x=alt.X("n_features:Q", title="features"), y=alt.Y("row:N", title=None, axis=alt.Axis(labelLimit=0)),
            color=alt.Color("attribute:N", title="kind"), tooltip=["row", "attribute", "n_features"]), width="stretch")
        anyk = sub[sub["attribute"] == "(any)"]
        if len(anyk):
            anyk = anyk.assign(lo=anyk["interpretable_fraction"] - anyk["interpretable_fraction_se"].fillna(0),
                               hi=anyk["interpretable_fraction"] + anyk["interpretable_fraction_se"].fillna(0))
            b = alt.Chart(anyk, title="interpretable fraction of all features (± se)").encode(
                y=alt.Y("row:N", title=None, axis=alt.Axis(labelLimit=0)))
            c2.altair_chart(b.mark_bar().encode(x=alt.X("interpretable_fraction:Q", scale=alt.Scale(domain=[0, 1]))) +
                            b.mark_rule(color="black").encode(x="lo:Q", x2="hi:Q"), width="stretch")
        st.caption("Kinds: the paper's IO, S, Pos; intersections with Pos (IO & Pos, S & Pos); unions of up to 10 names "
                   "(IO union, S union: searched per feature, so they have no per-value coverage); Name (IO or S); A, B "
                   "(first / second name); IO / S gender; Place, Object, Template. "
                   + (f"Left out (fewer than two values on these prompts): {', '.join(settings['interpretations_skipped'])}."
                      if settings.get("interpretations_skipped") else ""))
        if "above_chance" in sub:  # supervised read-outs of an attribute no better than chance at a location
            chance = sub[sub["above_chance"].eq(False)].drop_duplicates(["row", "attribute"])
            if len(chance):
                st.caption("Read at chance (a supervised read-out no better than chance, so its F1 for the attribute is "
                           "chance level, about 0.5 for Pos): " + "; ".join(f"{r.row}: {r.attribute} (z {r.read_z:.1f})"
                                                                           for r in chance.itertuples()))

# ---- diagnostics --------------------------------------------------------------------------------
diag = data.read_table(path, "diagnostics")
st.subheader("Diagnostics: occlusion, over-splitting, frozen decoder")
with ui.section("Diagnostics"):
    if isinstance(diag, data.Missing):
        ui.not_available("Diagnostics", diag.reason + "; written by `ioi eval` since the paper's diagnostics were added")
    else:
        cs = pick_cross_section(st, diag, "diag_cs")
        sub = diag[diag["cross_section"] == cs]
        sub = sub.assign(row=sub["dictionary"] + " @ " + sub["location"])
        c1, c2, c3 = st.columns(3)
        cov = sub.melt(id_vars=["row", "occluded"], value_vars=[c for c in ("coverage_IO", "coverage_S", "coverage_Pos") if c in sub],
                       var_name="attribute", value_name="coverage")
        cov["attribute"] = cov["attribute"].str.replace("coverage_", "", regex=False)
        c1.altair_chart(alt.Chart(cov, title="Occlusion: coverage per attribute").mark_bar().encode(
            x=alt.X("coverage:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("row:N", title=None, axis=alt.Axis(labelLimit=0)),
            yOffset="attribute:N", color="attribute:N", tooltip=["row", "attribute", "coverage", "occluded"]), width="stretch")
        flagged = sub[sub["occluded"].fillna("") != ""]
        c1.caption("An attribute is occluded when counterfactual patching shows it matters here, no feature covers it, and a "
                   "larger-magnitude attribute is covered. " + ("Flagged: " + "; ".join(f"{r.row}: {r.occluded}" for r in flagged.itertuples())
                                                                if len(flagged) else "Nothing flagged here."))
        split_cols = [c for c in sub.columns if c.startswith("n_split_")]
        if split_cols:
            sp = sub.melt(id_vars=["row", "over_split"], value_vars=split_cols, var_name="Pos", value_name="split features")
            sp["Pos"] = sp["Pos"].str.replace("n_split_", "", regex=False)
            c2.altair_chart(alt.Chart(sp, title="Over-splitting: small precise features per Pos value").mark_bar().encode(
                x=alt.X("split features:Q"), y=alt.Y("row:N", title=None, axis=alt.Axis(labelLimit=0)), yOffset="Pos:N",
                color="Pos:N", tooltip=["row", "Pos", "split features", "over_split"]), width="stretch")
            c2.caption("Split features fire almost only on one Pos value (precision ≥ 0.9) but on less than half of it; the value "
                       "is over-split when ≥ 2 of them together cover half of it and no single feature matches it.")
        if "fvu_frozen" in sub and sub["fvu_frozen"].notna().any():
            fz = sub.dropna(subset=["fvu_frozen"]).melt(id_vars=["row", "frozen_k", "frozen_prefers"], value_vars=["fvu_sae", "fvu_frozen"],
                                                        var_name="decoder", value_name="FVU")
            fz["decoder"] = fz["decoder"].map({"fvu_sae": "SAE's own", "fvu_frozen": "frozen supervised"})
            c3.altair_chart(alt.Chart(fz, title="Frozen decoder: FVU at the SAE's k").mark_bar().encode(
                x="FVU:Q", y=alt.Y("row:N", title=None, axis=alt.Axis(labelLimit=0)), yOffset="decoder:N", color="decoder:N",
                tooltip=["row", "decoder", "FVU", "frozen_k", "frozen_prefers"]), width="stretch")
            c3.caption("The supervised directions (IO, S, Pos) as a frozen decoder, with the best k-sparse codes they allow. "
                       "If the SAE's own dictionary reconstructs better, the objective prefers it to the supervised one.")
        else:
            c3.info("Frozen decoder: no SAE family here (the comparison is made for SAEs).")
        st.dataframe(sub.drop(columns=["row"]), hide_index=True, key="diag_table")

# ---- circuit ------------------------------------------------------------------------------------
st.subheader("Discovered circuit")
with ui.section("Circuit"):
    if not isinstance(locs, dict):
        ui.not_available("Circuit", f"{locs.reason}; run `workbench ioi locate` (or `ioi eval` without --location)")
    else:
        heads = pd.DataFrame(locs.get("heads", []))
        if len(heads):
            for p in ("IO", "S1", "S2", "END"):
                heads[f"patch_z_{p}"] = heads["patch_z"].map(lambda d, p=p: (d or {}).get(p)) if "patch_z" in heads else None
            scores = [c for c in ("dla", "ablate_end", "patch_z_END", "patch_z_S2", "attn_io", "attn_s2") if c in heads]
            c1, c2 = st.columns([1, 2])
            score = c1.selectbox("Head score", scores, key="head_score")
            c1.caption(f"Circuit from {locs_from}. The colour scale is centred on 0 (white).")
            c2.altair_chart(charts.heatmap(heads, "head", "layer", score, title=f"{score} per head", scheme="redblue",
                                           text=True), width="stretch")
            show = [c for c in ("layer", "head", "role", "attends", "dla", "ablate_end", "patch_z_END", "patch_z_S2") if c in heads]
            st.dataframe(heads[show].sort_values(score, key=abs, ascending=False), hide_index=True, key="heads_table")
        sections = pd.DataFrame(locs.get("cross_sections", []))
        if len(sections):
            sections["locations"] = sections["locations"].map(lambda v: ", ".join(v) if isinstance(v, list) else v)
            st.dataframe(sections[[c for c in ("name", "locations", "description") if c in sections]], hide_index=True,
                         key="sections_table")
