"""Routing: expert load over training, gates compared across seeds (mean ± std), the token x expert
allocation of a batch and, for sparse-OT gates, the transport plan. Reads the files `workbench moe
train|bench` write (routing/train.py, routing/bench.py): metrics.jsonl (gate<g>/load per logged step),
load.json, results.json, ot_plan.json, and <bench>/summary.json.
"""

import re

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

import charts
import data
import ui

ui.setup("Routing")
moe = data.runs_of("moe")
run = ui.pick_run("moe", "MoE run")
if run is None:
    st.stop()
path = run["path"]
res = data.read_json(path, "results.json")
load = data.read_json(path, "load.json")
gate_names = load.get("gates", []) if isinstance(load, dict) else []
if isinstance(res, dict):
    metric = "test_auc_mean" if "test_auc_mean" in res else "test_loss"
    st.caption(f"task {res.get('task')} · gate {res.get('gate')} · {res.get('experts')} experts · k={res.get('k')} · seed "
               f"{res.get('seed')} · {metric} {data.number(res.get(metric), 4)} · {data.number(res.get('train_time_s'), 1)} s")
else:
    st.caption(f"{run['arch']} on {run['model']} · status {run['status']} · {res.reason}")


def gate_label(g: int) -> str:
    return f"gate {g} ({gate_names[g]})" if g < len(gate_names) else f"gate {g}"


# ---- load over training -------------------------------------------------------------------------
st.subheader("Expert load over training")
with ui.section("Expert load"):
    m = data.read_metrics(path)
    gates = sorted({int(g) for c in (m.columns if isinstance(m, pd.DataFrame) else []) for g in re.findall(r"^gate(\d+)/load$", c)})
    if not gates:
        ui.not_available("Load heatmap", m.reason if isinstance(m, data.Missing) else "no gate<g>/load in metrics.jsonl")
    else:
        c1, c2 = st.columns([1, 3])
        g = c1.selectbox("Gate", gates, format_func=gate_label, key="load_gate")
        rows = m.dropna(subset=[f"gate{g}/load"])
        if len(rows) > 120:  # keep the heatmap readable: at most 120 logged steps
            rows = rows.iloc[np.linspace(0, len(rows) - 1, 120).round().astype(int)]
        mat = np.array(rows[f"gate{g}/load"].tolist(), dtype=float)  # (steps, experts)
        share = mat / np.maximum(mat.sum(1, keepdims=True), 1e-12)
        n_exp = mat.shape[1]
        heat = pd.DataFrame([{"step": int(s), "expert": e, "load share": share[i, e]}
                             for i, s in enumerate(rows["step"]) for e in range(n_exp)])
        c1.caption(f"Uniform routing gives every expert a share of 1/{n_exp} = {1 / n_exp:.3f}; the colour scale spans 0 "
                   f"to twice that (or the largest share).")
        c2.altair_chart(charts.heatmap(heat, "step", "expert", "load share", domain=(0, max(2 / n_exp, share.max())),
                                       title=f"Share of routed tokens per expert, {gate_label(g)}").properties(height=240),
                        width="stretch")
        c1, c2 = st.columns(2)
        cv_cols = [f"gate{x}/load_cv" for x in gates if f"gate{x}/load_cv" in m]
        if cv_cols:
            cv = m[["step", *cv_cols]].melt("step", var_name="gate", value_name="load CV").dropna()
            c1.altair_chart(charts.lines(cv, "step", "load CV", color="gate", title="Load imbalance (coefficient of variation)")
                            .properties(height=220), width="stretch")
    if isinstance(load, dict) and load.get("epochs"):
        ep = pd.DataFrame([{"epoch": e["epoch"], "gate": gate_label(gi), "expert": x, "tokens": v}
                           for e in load["epochs"] for gi, per in enumerate(e.get("load", [])) for x, v in enumerate(per)])
        c2.altair_chart(charts.heatmap(ep, "expert", "epoch", "tokens", title="Validation load per epoch (tokens per expert)")
                        .properties(height=90).facet(row=alt.Row("gate:N", title=None)).resolve_scale(color="independent"),
                        width="stretch")

# ---- gates compared across seeds ----------------------------------------------------------------
st.subheader("Gates compared across seeds")
with ui.section("Gate comparison"):
    scope = ["this bench", "all runs of this task"] if run["group"] else ["all runs of this task"]
    where = st.radio("Compare", scope, horizontal=True, key="scope")
    peers = moe[moe["group"] == run["group"]] if where == "this bench" else moe[moe["model"] == run["model"]]
    rows = []
    for p in peers.itertuples():
        r = data.read_json(p.path, "results.json")
        if isinstance(r, dict):
            rows.append({"gate": p.arch, "seed": r.get("seed"), "test_auc_mean": r.get("test_auc_mean"),
                         "test_loss": r.get("test_loss"), "time_s": r.get("train_time_s"), "run": p.name})
    if not rows:
        ui.not_available("Gate comparison", "no finished MoE runs (results.json) to compare")
    else:
        per_run = pd.DataFrame(rows)
        agg = []
        for gate, grp in per_run.groupby("gate"):
            for met in ("test_auc_mean", "test_loss"):
                v = grp[met].dropna()
                if len(v):
                    agg.append({"gate": gate, "metric": met, "mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else 0.0,
                                "n": len(v), "time_s": grp["time_s"].mean()})
        agg = pd.DataFrame(agg)
        metrics = list(agg["metric"].unique())
        met = st.selectbox("Metric", metrics, key="cmp_metric")
        shown = agg[agg["metric"] == met].sort_values("mean", ascending=met == "test_loss")
        c1, c2 = st.columns([3, 2])
        c1.altair_chart(charts.error_bars(shown, "gate", "mean", "std", title=f"{met}: mean ± std over seeds"), width="stretch")
        c2.dataframe(shown.drop(columns="metric"), hide_index=True, key="cmp_table")
        if run["group"]:
            summ = data.read_json(str(data.runs_root() / run["group"]), "summary.json")
            if isinstance(summ, dict) and summ.get("command"):
                c2.caption(f"bench command: `{summ['command']}`")

# ---- one batch's allocation, and the transport plan ---------------------------------------------
c1, c2 = st.columns(2)
with c1, ui.section("Allocation"):
    st.markdown("**Token × expert combine weights** (64 test tokens, gate 0; blank = not dispatched)")
    w = load.get("weights_sample") if isinstance(load, dict) else None
    if not w:
        ui.not_available("Allocation sample", load.reason if isinstance(load, data.Missing) else "no weights_sample in load.json")
    else:
        w = np.asarray(w, dtype=float)
        heat = pd.DataFrame([{"token": t, "expert": e, "weight": w[t, e]} for t, e in zip(*np.nonzero(w))])
        st.altair_chart(charts.heatmap(heat, "expert", "token", "weight", scheme="greens", x_values=list(range(w.shape[1])))
                        .properties(height=360), width="stretch")
        st.caption(f"experts per token: mean {(w > 0).sum(1).mean():.2f}; tokens per expert: "
                   f"{', '.join(str(int(c)) for c in (w > 0).sum(0))}")
with c2, ui.section("Transport plan"):
    st.markdown("**Sparse-OT transport plan** (tokens × experts; blank = zero)")
    plan = data.read_json(path, "ot_plan.json")
    if not isinstance(plan, dict) or not plan.get("plan"):
        ui.not_available("Transport plan", (plan.reason if isinstance(plan, data.Missing) else "empty plan")
                         + "; only sparse-ot gates write one")
    else:
        P = np.asarray(plan["plan"], dtype=float)
        heat = pd.DataFrame([{"token": t, "expert": e, "mass": P[t, e]} for t, e in zip(*np.nonzero(P))])
        st.altair_chart(charts.heatmap(heat, "expert", "token", "mass", scheme="oranges", x_values=list(range(P.shape[1])))
                        .properties(height=360), width="stretch")
        st.caption(f"orientation {plan.get('orientation')}, γ = {plan.get('gamma')}, k = {plan.get('k')}; nonzeros per token: "
                   f"max {int((P > 0).sum(1).max())}; mass per expert: {', '.join(f'{v:.3f}' for v in P.sum(0))}")
