"""Runs: every run dir in a table (filterable), a side-by-side comparison, training curves and the SAE frontier
(CE loss recovered against L0, comparing like with like: one model, hook and corpus)."""

import pandas as pd
import streamlit as st

import charts
import data
import ui

ui.setup("Runs")
df, bad = data.scan()
if df.empty:
    st.info(f"No readable runs in {data.runs_root()} yet.")
    ui.unreadable(bad)
    st.stop()

# ---- the table --------------------------------------------------------------------------------
def note_width(notes: pd.Series) -> int:
    """Pixels that show the longest note whole (about 7.5 px a character, within 120..900)."""
    longest = int(notes.dropna().astype(str).str.len().max()) if notes.notna().any() else 0
    return int(min(max(120, 7.5 * longest + 24), 900))


c1, c2, c3 = st.columns([2, 2, 3])
all_kinds = sorted(df["kind"].dropna().unique())
kinds = c1.multiselect("Kind", all_kinds, default=all_kinds, key="kinds")
all_status = sorted(df["status"].dropna().unique())
statuses = c2.multiselect("Status", all_status, default=all_status, key="statuses")
text = c3.text_input("Filter by name, model, hook or architecture", key="filter").strip().lower()
view = df[df["kind"].isin(kinds) & df["status"].isin(statuses)]
if text:
    hay = view[["name", "model", "hook", "arch"]].map(data.number).agg(" ".join, axis=1).str.lower()
    view = view[hay.str.contains(text, regex=False)]
COLS = ["name", "kind", "status", "model", "hook", "arch", "k", "mode", "fvu", "ce_recovered", "l0", "dead_fraction", "metric",
        "value", "note"]
st.dataframe(view[COLS], hide_index=True, key="runs_table", column_config={
    "status": st.column_config.TextColumn("status", width="medium"),  # wide enough for "interrupted"
    "note": st.column_config.TextColumn("note", width=note_width(view["note"])),  # the whole note, not its first words
    "mode": st.column_config.TextColumn("mode", help="SAE runs: the allocation mode of the numbers (the saved SAE's inference "
                                        "mode: threshold for feature/mutual choice, batch for TopK)"),
    "fvu": st.column_config.NumberColumn("FVU", format="%.4f"),
    "ce_recovered": st.column_config.NumberColumn("CE recovered", format="%.4f"),
    "l0": st.column_config.NumberColumn("L0", format="%.2f"),
    "dead_fraction": st.column_config.NumberColumn("dead %", format="percent", help="latents silent on all of the run's "
                                                   "dead-window held-out tokens (training metrics: the last dead-window training tokens)"),
    "value": st.column_config.NumberColumn("value", format="%.4f", help="the run's headline metric (column 'metric')"),
    "k": st.column_config.NumberColumn("k", format="%d"),
})
st.caption(f"{len(view)} of {len(df)} runs shown. SAE runs: the saved SAE in its inference mode on held-out tokens "
           "(eval.json; batch-mode numbers are in the comparison below and in `workbench sae eval`); dead = silent on all of "
           "the run's --dead-window held-out tokens. MoE runs: model = task, arch = gate; IOI runs: arch = command.")
ui.unreadable(bad)

# ---- compare -----------------------------------------------------------------------------------
st.subheader("Compare runs")
names = view["name"].tolist()
sae_done = view[(view["kind"] == "sae") & (view["status"] == "done")].sort_values("created", ascending=False)["name"].tolist()
chosen = st.multiselect("Runs to compare", names, default=(sae_done or names)[:3], key="compare")
if chosen:
    picked = view.set_index("name").loc[chosen]
    with ui.section("Comparison"):
        configs = {}
        for name, row in picked.iterrows():
            meta = data.read_json(row["path"], "config.json")
            configs[name] = data.flatten(meta.get("config", {})) if isinstance(meta, dict) else {"(config)": meta.reason}
        cfg = pd.DataFrame(configs).map(data.number)
        differ = cfg[cfg.nunique(axis=1) > 1] if len(chosen) > 1 else cfg
        left, right = st.columns(2)
        left.markdown("**Headline numbers**")
        left.dataframe(picked[[c for c in COLS[1:] if picked[c].notna().any()]].T.map(lambda v: data.number(v, 4)),
                       key="compare_numbers")
        right.markdown(f"**Config fields that differ** ({len(differ)} of {len(cfg)})" if len(chosen) > 1 else "**Config**")
        right.dataframe(differ, key="compare_config")

    with ui.section("Training curves"):
        frames, missing = [], []
        for name, row in picked.iterrows():
            m = data.read_metrics(row["path"])
            if isinstance(m, data.Missing):
                missing.append(f"{name}: {m.reason}")
                continue
            frames.append(m.select_dtypes("number").assign(run=name))
        if missing:
            st.caption("No curves for " + "; ".join(missing))
        if frames:
            curves = pd.concat(frames, ignore_index=True)
            metrics = [c for c in curves.columns if c not in ("step", "run", "epoch") and curves[c].notna().any()]
            prefer = next((m for m in ("fvu", "loss", "val/loss") if m in metrics), metrics[0] if metrics else None)
            c1, c2 = st.columns([3, 1])
            metric = c1.selectbox("Metric", metrics, index=metrics.index(prefer) if prefer else 0, key="curve_metric")
            log_y = c2.checkbox("log scale", key="curve_log")
            has = curves.dropna(subset=[metric])
            x = "tokens" if "tokens" in has and has["tokens"].notna().all() else "step"
            sub = has[[x, metric, "run"]].dropna()
            if log_y:
                sub = sub[sub[metric] > 0]
            st.altair_chart(charts.lines(sub, x, metric, color="run", log_y=log_y, title=f"{metric} during training"),
                            width="stretch")

# ---- frontier ----------------------------------------------------------------------------------
st.subheader("SAE frontier: CE loss recovered against L0")
sae = view[(view["kind"] == "sae")].dropna(subset=["ce_recovered", "l0"])
if sae.empty:
    st.info("No SAE runs with CE recovered and L0 among the runs shown (they come from eval.json).")
else:
    c1, c2, c3 = st.columns(3)
    groups = sae.groupby(["model", "hook", "corpus"], dropna=False).size().sort_values(ascending=False)
    models = list(dict.fromkeys(m for m, _, _ in groups.index))
    model = c1.selectbox("Model", models, key="front_model")
    hooks = list(dict.fromkeys(h for m, h, _ in groups.index if m == model))
    hook = c2.selectbox("Hook", hooks, key="front_hook")
    corpora = list(dict.fromkeys(c for m, h, c in groups.index if m == model and h == hook))
    corpus = c3.selectbox("Corpus", corpora, key="front_corpus")
    pick = sae[(sae["model"] == model) & (sae["hook"] == hook) & (sae["corpus"] == corpus)]
    st.altair_chart(charts.frontier(pick[["name", "arch", "k", "hook", "mode", "l0", "fvu", "ce_recovered"]]), width="stretch")
    st.caption(f"{len(pick)} of {len(sae)} SAE runs: those of {model} at `{hook}` on the {corpus} corpus. Each point is the "
               "saved SAE in its inference mode on held-out tokens (eval.json).")