"""Entry point of the app (`workbench app [--runs-dir runs]` runs `streamlit run app/Home.py`).

The app only reads run directories ($WORKBENCH_RUNS, default ./runs) and caches what it read; it
never trains. Pages: Runs, Feature browser (SAE runs), IOI evaluation, Routing (MoE runs).
"""

import pandas as pd
import pyarrow.parquet  # noqa: F401 - imported on the first page view, so the first chart page is not the slow one
import streamlit as st

import charts  # noqa: F401 - (Altair) same reason
import data
import ui

ui.setup(ui.TITLE)
root = data.runs_root()
st.caption(f"Browsing run directories in `{root.resolve()}` (set with `workbench app --runs-dir DIR`).")
df, bad = data.scan(root)

cols = st.columns(len(data.KINDS) + 1)
for col, kind in zip(cols, data.KINDS):
    col.metric(f"{kind} runs", int((df["kind"] == kind).sum()) if len(df) else 0)
cols[-1].metric("unreadable", len(bad))

st.subheader("Pages")
for page, what in (("pages/1_Runs.py", "every run: table, filters, comparison, training curves, the L0–FVU frontier"),
                   ("pages/2_Feature_browser.py", "one SAE run: latents, top-activating contexts, output tokens, per-token L0"),
                   ("pages/3_IOI_evaluation.py", "IOI runs: sufficiency/necessity, edit accuracy, F1/coverage, the circuit"),
                   ("pages/4_Routing.py", "MoE runs: expert load over training, gates compared across seeds, transport plans")):
    c1, c2 = st.columns([1, 3])
    with c1:
        st.page_link(page, label=page.split("_", 1)[1].removesuffix(".py").replace("_", " "))
    c2.caption(what)

st.subheader("Newest runs")
if len(df):
    recent = df.sort_values("created", ascending=False, na_position="last").head(10)
    recent = recent.assign(created=pd.to_datetime(recent["created"], unit="s").dt.strftime("%Y-%m-%d %H:%M"))
    st.dataframe(recent[["name", "kind", "model", "arch", "status", "created"]], hide_index=True, width="stretch")
else:
    st.info(f"No runs in {root} yet: train one (`workbench sae train`, `workbench moe train`, `workbench ioi eval`) or run `make demo`.")
ui.unreadable(bad)
