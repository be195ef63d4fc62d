"""IOI evaluation: the discovered circuit, sufficiency/necessity per cross-section, edit accuracy vs the
number of features edited (supervised line as reference), the normalised edit-magnitude plot, and
F1/coverage heatmaps. Reads the files `workbench ioi locate|eval` write (listed in evals/report.py).
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
bits = [f"`workbench ioi {cfg.get('command', '?')}`", f"model {cfg.get('model', '?')}", f"status {run['status']}"]
if clean:
    bits.append(f"clean accuracy {data.number(clean.get('accuracy'))}, logit diff {data.number(clean.get('logit_diff'))} "
                f"on {clean.get('n')} prompts")
if isinstance(dicts, dict) and dicts.get("timings", {}).get("total_s") is not None:
    bits.append(f"{dicts['timings']['total_s']:.0f} s")
st.caption(" · ".join(bits))

# ---- approximation ------------------------------------------------------------------------------
approx = data.read_table(path, "approximation")
st.subheader("Sufficiency and necessity per cross-section")
with ui.section("Approximation"):
    if isinstance(approx, data.Missing):
        ui.not_available("Approximation", approx.reason + ("; this is a `workbench ioi locate` run" if cfg.get("command") == "locate" else ""))
    else:
        cols = [c for c in ("cross_section", "dictionary", "kind", "sufficiency", "necessity", "ld_recovered", "fvu", "l0",
                            "accuracy_reconstructed", "n_features") if c in approx]
        c1, c2 = st.columns(2)
        for col, metric in ((c1, "sufficiency"), (c2, "necessity")):
            col.altair_chart(charts.heatmap(approx, "dictionary", "cross_section", metric, title=metric, scheme="blueorange",
                                            domain=(-1, 1), text=True), width="stretch")
        st.dataframe(approx[cols], hide_index=True, key="approx_table")
        st.caption("Sufficiency: logit difference kept when the activations are replaced by the reconstruction; necessity: "
                   "LD lost when the reconstruction is removed (both 1 = perfect).")

def pick_cross_section(col, table, key):
    """Cross-section selectbox over a result table, preselecting the user's own ("custom") if present."""
    sections = sorted(table["cross_section"].unique())
    return col.selectbox("Cross-section", sections, key=key,
                         index=sections.index("custom") if "custom" in sections else 0)


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
        sae_rows = sub[sub["method"] != "supervised"].dropna(subset=["k"])
        sup = sub[sub["method"] == "supervised"]
        layers = []
        if len(sae_rows):
            layers.append(charts.lines(sae_rows, "k", "accuracy", color="dictionary", dash="method"))
        if len(sup):
            layers.append(alt.Chart(sup).mark_rule(strokeWidth=2).encode(
                y="accuracy:Q", color=alt.Color("dictionary:N"), tooltip=["dictionary", "accuracy"]))
        if len(sub):
            none = sub["acc_none"].iloc[0]
            layers.append(alt.Chart(pd.DataFrame({"accuracy": [none], "label": ["no edit"]})).mark_rule(
                strokeDash=[4, 4], color="gray").encode(y="accuracy:Q", tooltip=["label", "accuracy"]))
        left, right = st.columns(2)
        if layers:
            left.altair_chart(alt.layer(*layers).properties(
                title=f"Edit accuracy vs features edited ({attr})"),
                width="stretch")
        left.caption("Lines: SAE edits (greedy / F1-guided) of k features; solid rules: supervised dictionaries; dashed: no edit."
                     + ("" if len(sae_rows) else " No SAE edits here (an SAE family is evaluated where it covers every location)."))
        pts = sub.assign(k=sub["k"].astype("Float64").astype(str).replace("<NA>", "–"))
        mag = alt.Chart(pts, title="Normalised edit magnitude").mark_point(
            filled=True, size=80).encode(x=alt.X("x:Q", title="normalised magnitude"), y=alt.Y("y:Q", title="normalised accuracy"),
                                         color="dictionary:N", shape="method:N", tooltip=["dictionary", "method", "k", "x", "y",
                                                                                          "accuracy", "magnitude"])
        rules = alt.Chart(pd.DataFrame({"y": [0.0, 1.0]})).mark_rule(color="gray", strokeDash=[2, 2]).encode(y="y:Q")
        right.altair_chart((rules + mag).interactive(), width="stretch")
        right.caption("The mean dictionary's supervised edit sits at (0, 1), not editing at y = 0; up and left is better.")

# ---- interpretability ---------------------------------------------------------------------------
interp = data.read_table(path, "interpretability")
st.subheader("Interpretability: F1 and coverage")
with ui.section("Interpretability"):
    if isinstance(interp, data.Missing):
        ui.not_available("F1/coverage", interp.reason)
    else:
        c1, c2 = st.columns(2)
        cs = pick_cross_section(c1, interp, "interp_cs")
        tau = c2.selectbox("τ (activation threshold, fraction of a feature's max)", sorted(interp["tau"].unique()), key="tau")
        sub = interp[(interp["cross_section"] == cs) & (interp["tau"] == tau)]
        sub = sub.assign(dictionary_at=sub["dictionary"] + " @ " + sub["location"])
        c1.altair_chart(charts.heatmap(sub, "attribute", "dictionary_at", "mean_best_f1", title="mean best F1",
                                       domain=(0, 1), text=True), width="stretch")
        c2.altair_chart(charts.heatmap(sub, "attribute", "dictionary_at", "coverage", title="coverage", domain=(0, 1),
                                       text=True), width="stretch")
        diag = data.read_json(path, "diagnostics.json")
        if isinstance(diag, list):
            flagged = [d for d in diag if d.get("any_occluded") or d.get("any_over_split")]
            if flagged:
                st.caption(f"Diagnostics flagged {len(flagged)} cases (occlusion / over-splitting); see summary.md.")

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
            c1.caption(f"Circuit from {locs_from}.")
            c2.altair_chart(charts.heatmap(heads, "head", "layer", score, title=f"{score} per head", scheme="redblue",
                                           text=True), width="stretch")
            show = [c for c in ("layer", "head", "role", "attends", "dla", "ablate_end", "patch_z_END", "patch_z_S2") if c in heads]
            st.dataframe(heads[show].sort_values(score, key=abs, ascending=False), hide_index=True, key="heads_table")
        sections = pd.DataFrame(locs.get("cross_sections", []))
        if len(sections):
            sections["locations"] = sections["locations"].map(lambda v: ", ".join(v) if isinstance(v, list) else v)
            st.dataframe(sections[[c for c in ("name", "locations", "description") if c in sections]], hide_index=True,
                         key="sections_table")
