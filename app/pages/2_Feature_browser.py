"""Feature browser: one SAE run's latents — top-activating contexts and samples across the activation
range, activation histogram, density, the latent on the user's own text (runs the model, cached),
promoted/suppressed output tokens, IOI F1 per attribute, and the per-token L0 distribution; for routed
SAEs also the experts: the load each took, which latents live in which expert, and which experts carry
the IO, S and Pos values in IOI evaluations (experts.parquet).

Reads what `workbench sae analyze RUN` stored (analysis.json, analysis_latents.parquet,
analysis_contexts.parquet; see sae/analyze.py), eval.json from training, and the features.parquet of
IOI evaluations that evaluated this SAE (evals/report.py).
"""

import html

import numpy as np
import pandas as pd
import streamlit as st

import charts
import data
import ui

ui.setup("Feature browser")
saes = data.runs_of("sae")
with_analysis = saes[saes.get("analysis", pd.Series(False, index=saes.index)).fillna(False).astype(bool)] if len(saes) else saes
run = ui.pick_run("sae", "SAE run", default=with_analysis["name"].iloc[-1] if len(with_analysis) else None)
if run is None:
    st.stop()
path = run["path"]
ev = data.read_json(path, "eval.json")
an = data.read_json(path, data.SAE_ANALYSIS)
head = data.sae_headline(ev) if isinstance(ev, dict) else {}
window = f" of {head['dead_window']:,} held-out tokens" if head.get("dead_window") else ""
dead = None if pd.isna(run["dead_fraction"]) else 100 * run["dead_fraction"]
st.caption(f"{run['arch']} · k={run['k']} · {run['model']} · `{run['hook']}` · {run['mode'] or '?'} mode: "
           f"FVU {data.number(run['fvu'], 4)} · CE recovered {data.number(run['ce_recovered'], 4)} · "
           f"L0 {data.number(run['l0'], 2)} · dead {data.number(dead, 1)}% (silent on all{window}) · status {run['status']}"
           + (f" · {run['note']}" if run.get("note") else ""))
if isinstance(ev, dict) and head.get("mode") != "batch" and isinstance((ev.get("modes") or {}).get("batch"), dict):
    b = ev["modes"]["batch"]
    st.caption(f"batch mode (the training rule; each token's latents depend on the rest of its batch): FVU {data.number(b.get('fvu'), 4)} · "
               f"CE recovered {data.number(b.get('ce_recovered'), 4)} · L0 {data.number(b.get('l0_mean'), 2)}")
ANALYZE = f"run `workbench sae analyze {path}`"


def l0_distribution() -> None:
    """Per-token L0 from eval.json (each allocation mode) and from the analysis."""
    parts = []
    if isinstance(ev, dict):
        for mode, r in (ev.get("modes") or {}).items():
            if isinstance(r, dict) and r.get("l0_hist"):
                parts.append((f"eval.json · {mode}", r["l0_hist"]))
    if isinstance(an, dict) and an.get("l0_hist"):
        parts.append((f"analysis · {an.get('mode')}", an["l0_hist"]))
    if not parts:
        ui.not_available("Per-token L0 distribution", f"{ev.reason if not isinstance(ev, dict) else 'no l0_hist in eval.json'}; {ANALYZE}")
        return
    rows = [{"L0": i, "fraction of tokens": c / max(sum(h), 1), "source": src} for src, h in parts for i, c in enumerate(h)]
    st.altair_chart(charts.bars(pd.DataFrame(rows), "L0", "fraction of tokens", color="source",
                                title="Active latents per token (TopK: exactly k; Feature/Mutual Choice: varies by token)"),
                    width="stretch")
    if isinstance(an, dict) and an.get("l0_by_token"):
        by_tok = pd.DataFrame(an["l0_by_token"]).head(30)
        st.altair_chart(charts.bars(by_tok, "token", "l0_mean", x_type="N", title="Mean L0 of the 30 most frequent tokens"),
                        width="stretch")


def context_html(tokens, acts, pos: int, top: float) -> str:
    """Tokens coloured by the latent's activation (darker = stronger); the max token is underlined."""
    sep = "" if any(str(t).startswith(" ") for t in tokens) else " "  # BPE tokens carry their own spaces
    out = []
    for i, (t, a) in enumerate(zip(tokens, acts)):
        alpha = 0.0 if top <= 0 else min(1.0, max(0.0, float(a) / top))
        style = f"background: rgba(255, 120, 0, {alpha:.2f}); padding: 1px 2px; border-radius: 3px; white-space: pre"
        if i == pos:
            style += "; text-decoration: underline; font-weight: 600"
        out.append(f'<span style="{style}" title="{float(a):.3f}">{html.escape(str(t))}</span>')
    return sep.join(out)


def contexts_block(rows: pd.DataFrame, top: float) -> str:
    """Contexts as HTML lines: the activation at the marked token, then the tokens coloured by activation."""
    return "\n".join(
        f'<div style="margin: 3px 0; font-family: monospace; font-size: 0.9em"><span style="color: #888">{r.act:6.3f}'
        f'</span>&nbsp;&nbsp;{context_html(r.tokens, r.acts, r.pos, top)}</div>' for r in rows.itertuples())


def quantile_samples(ctx: pd.DataFrame, row: pd.Series) -> None:
    """Samples from each quantile of the latent's activations (the top contexts are often near-duplicates)."""
    q = ctx[ctx["sample"] > 0]
    n_q = int(an.get("quantiles") or 0) if isinstance(an, dict) else 0
    if q.empty:
        why = ("this analysis predates quantile samples; re-run it" if not n_q else
               f"the latent fired on {int(row['n_active'])} tokens, all shown above")
        st.caption(f"Activation-quantile samples: none ({why}).")
        return
    st.markdown("**Samples across the activation range** (ranked strongest first, split into "
                f"{n_q} quantiles; {an.get('per_quantile')} evenly spaced samples each)")
    n = int(row["n_active"])
    for k, part in q.groupby("sample"):
        lo, hi = int((k - 1) * n / n_q), int(k * n / n_q)
        st.markdown(f"<div style='color: #666; font-size: 0.85em; margin-top: 6px'>quantile {k} of {n_q}: activations ranked "
                    f"{lo + 1}–{hi} of {n} (values {part['act'].min():.3f}–{part['act'].max():.3f})</div>\n"
                    + contexts_block(part, row["max_act"]), unsafe_allow_html=True)


def own_text(latent: int, row: pd.Series) -> None:
    """A text box: the latent's activation at every token of the user's own text (runs the model; cached)."""
    import live

    st.markdown(f"**Latent {latent} on your own text**")
    text = st.text_input("Text (words the model knows; press Enter to run the model and the SAE on it)", key="own_text",
                         placeholder="e.g. one of the contexts above, edited").strip()
    if not text:
        st.caption("The model and the SAE are loaded once, on the first text; each text's result is cached.")
        return
    try:
        tokens, acts = live.activations(path, text, (an or {}).get("mode", "batch"))
    except live.TextError as e:
        st.warning(f"Cannot run this text: {e}")
        return
    mine = acts[:, latent]  # (n_tokens,)
    peak = int(mine.argmax()) if len(mine) else 0
    top = max(float(row["max_act"]), float(mine.max()) if len(mine) else 0.0)
    st.markdown(f'<div style="font-family: monospace; font-size: 0.95em">{context_html(tokens, mine, peak, top)}</div>',
                unsafe_allow_html=True)
    st.dataframe(pd.DataFrame({"position": np.arange(1, len(tokens) + 1), "token": tokens, "activation": mine}),
                 hide_index=True, key="own_text_acts", height=min(400, 38 + 35 * len(tokens)))
    st.caption(f"Max {mine.max():.3f} at '{tokens[peak]}' (position {peak + 1}); the colour scale is the analysis's max "
               f"{row['max_act']:.3f}. The SAE ran in {(an or {}).get('mode', 'batch')} mode, like the analysis; in training it "
               "read only the positions `--positions` chose.")


def ioi_features() -> tuple[list[dict], pd.DataFrame]:
    """IOI evals of this SAE and their features.parquet rows for it (feature = latent index)."""
    evals = data.ioi_evals_of_sae(path)
    parts = []
    for e in evals:
        f = data.read_table(e["path"], "features")
        if isinstance(f, pd.DataFrame) and {"dictionary", "feature", "attribute", "value", "f1"} <= set(f.columns):
            parts.append(f[f["dictionary"] == e["label"]].assign(ioi_run=e["run"]))
    return evals, (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame())


def find_latent(lat: pd.DataFrame, features: pd.DataFrame) -> int | None:
    """The latent to show: by index, or the best match of a search by output token, context token or IOI attribute."""
    modes = ["by index", "by output token", "by context token"] + (["by IOI attribute"] if len(features) else [])
    how = st.radio("Find a latent", modes, horizontal=True, key="find")
    cands = None
    if how == "by output token":
        if "promoted" not in lat:
            ui.not_available("Output-token search", an.get("logit_lens_missing") or "no promoted tokens stored")
            return None
        q = st.text_input("Output token the latent promotes", key="q_out").strip()
        if q:
            cands = data.latents_promoting(path, q)
    elif how == "by context token":
        q = st.text_input("Token at which the latent fires (in its top contexts)", key="q_ctx").strip()
        if q:
            cands = data.latents_firing_on(path, q)
    elif how == "by IOI attribute":
        c1, c2 = st.columns(2)
        attr = c1.selectbox("Attribute", sorted(features["attribute"].unique()), key="q_attr")
        values = sorted(features.loc[features["attribute"] == attr, "value"].astype(str).unique())
        value = c2.selectbox("Value", values, key="q_value")
        hit = features[(features["attribute"] == attr) & (features["value"].astype(str) == value)]
        cands = hit.groupby("feature")["f1"].max().rename("score").rename_axis("latent").reset_index()
        cands = cands.sort_values("score", ascending=False)
    if cands is not None:
        if cands.empty:
            st.info("No latent matches.")
            return None
        scores = dict(zip(cands["latent"], cands["score"]))
        st.caption(f"{len(cands)} matching latents, best first")
        return int(st.selectbox("Latent", list(scores)[:200], key="cand", format_func=lambda i: f"#{i} (score {scores[i]:.3g})"))
    d_sae = len(lat)
    asked = st.query_params.get("latent")
    first, why = informative_latent(lat, features)
    default = int(asked) if asked is not None and str(asked).isdigit() else first
    latent = int(st.number_input("Latent index", 0, d_sae - 1, value=min(max(default, 0), d_sae - 1), step=1, key="latent"))
    if latent == first:
        st.caption(f"Opened on latent {first}: {why}.")  # shown while it is the one shown
    if st.query_params.get("latent") != str(latent):
        st.query_params["latent"] = str(latent)  # a link to this page shows this latent
    return latent


def informative_latent(lat: pd.DataFrame, features: pd.DataFrame) -> tuple[int, str]:
    """The latent the browser opens on, and why: not the densest (which fires everywhere and says little), but
    the latent that best matches an IOI attribute value, else the one whose top contexts most consistently peak
    on one token, among latents that are neither dead nor dense (active on 0.05%..10% of tokens)."""
    if len(features) and features["f1"].max() > 0:
        best = features.sort_values("f1", ascending=False, kind="stable").iloc[0]
        return int(best["feature"]), f"its best IOI match, {best['attribute']} = {best['value']} (F1 {best['f1']:.2f})"
    alive = lat[lat["n_active"] > 0]
    if alive.empty:
        return 0, "every latent is dead on the analysed tokens"
    ok = alive[(alive["density"] <= 0.1) & (alive["density"] >= 5e-4)]
    pool = ok if len(ok) else alive
    peaks = data.peak_consistency(path)
    ranked = pool.merge(peaks, on="latent", how="left").fillna({"share": 0.0})
    best = ranked.sort_values(["share", "n_active"], ascending=False, kind="stable").iloc[0]
    if best["share"] > 0:
        return int(best["latent"]), (f"{100 * best['share']:.0f}% of its top contexts peak on '{best['token']}', at density "
                                     f"{best['density']:.1e} (the densest latents fire everywhere and say little)")
    return int(best["latent"]), f"a latent active on {100 * best['density']:.2f}% of tokens"


def show_latent(latent: int, row: pd.Series, lat: pd.DataFrame, evals: list[dict], features: pd.DataFrame) -> None:
    st.markdown(f"#### Latent {latent}")
    if "expert" in row:
        st.caption(f"Lives in expert {int(row['expert'])} (routed SAE: latents "
                   f"{int(row['expert']) * an['experts']['latents_per_expert']}–{(int(row['expert']) + 1) * an['experts']['latents_per_expert'] - 1})")
    m = st.columns(4)
    m[0].metric("density", f"{row['density']:.2e}")
    m[1].metric("active tokens", int(row["n_active"]))
    m[2].metric("max activation", f"{row['max_act']:.3f}")
    m[3].metric("mean activation (when active)", f"{row['mean_act']:.3f}")
    left, right = st.columns([3, 2])
    with left, ui.section("Top contexts"):
        st.markdown("**Top-activating contexts**")
        ctx = data.contexts_of(path, latent)
        if isinstance(ctx, data.Missing):
            ui.not_available("Top contexts", f"{ctx.reason}; {ANALYZE}")
        elif ctx.empty:
            st.info("This latent never fired on the analysed tokens (whether it is dead, i.e. silent on the run's dead window, is in eval.json).")
        else:
            st.markdown(contexts_block(ctx[ctx["sample"] == 0], row["max_act"]), unsafe_allow_html=True)
            quantile_samples(ctx, row)
    with right, ui.section("Activation histogram"):
        bins = len(row["hist"])
        edges = np.arange(bins + 1) * row["max_act"] / bins
        st.altair_chart(charts.histogram(edges, np.asarray(row["hist"], dtype=int), x_title="activation",
                                         y_title="tokens with this activation",
                                         title=f"Nonzero activations of latent {latent} ({int(row['n_active'])} tokens)"),
                        width="stretch")
    with right, ui.section("Density"):
        logd = np.log10(lat["density"].clip(lower=1e-7))
        edges = np.linspace(-7, 0, 29)
        counts, _ = np.histogram(logd, bins=edges)
        here = np.clip(np.searchsorted(edges, np.log10(max(row["density"], 1e-7)), side="right") - 1, 0, len(counts) - 1)
        dens = pd.DataFrame({"log10 density": np.round(edges[:-1], 2), "latents": counts, "this": np.arange(len(counts)) == here})
        st.altair_chart(charts.bars(dens, "log10 density", "latents", highlight="this",
                                    title="Density of every latent (this one in red)").properties(height=220), width="stretch")
    with ui.section("Your own text"):
        own_text(latent, row)
    c1, c2, c3 = st.columns([1, 1, 2])
    with ui.section("Output tokens"):
        if "promoted" in lat:
            c1.markdown("**Promoted tokens**")
            c1.dataframe(pd.DataFrame({"token": list(row["promoted"]), "logit": list(row["promoted_logit"])}),
                         hide_index=True, key="promoted")
            c2.markdown("**Suppressed tokens**")
            c2.dataframe(pd.DataFrame({"token": list(row["suppressed"]), "logit": list(row["suppressed_logit"])}),
                         hide_index=True, key="suppressed")
        else:
            with c1:
                ui.not_available("Promoted/suppressed tokens", an.get("logit_lens_missing") or "not stored")
    with c3, ui.section("IOI F1"):
        st.markdown("**IOI F1 per attribute** (its best-matching value)")
        if not evals:
            ui.not_available("IOI F1", "no IOI evaluation (`workbench ioi eval --sae RUN`) has evaluated this SAE")
            return
        mine = features[features["feature"] == latent] if len(features) else features
        if mine.empty:
            st.caption(f"Latent {latent} has F1 = 0 for every IOI attribute value in {', '.join(e['run'] for e in evals)}.")
            return
        cols = [c for c in ("attribute", "value", "f1", "precision", "recall", "tau", "location", "cross_section", "ioi_run")
                if c in mine]
        st.dataframe(mine[cols].sort_values(["attribute", "f1"], ascending=[True, False]), hide_index=True, key="ioi_f1")


def latent_browser() -> None:
    if not isinstance(an, dict):
        ui.not_available("Latent browser", f"{an.reason}; {ANALYZE}")
        return
    lat = data.read_table(path, "analysis_latents")
    if isinstance(lat, data.Missing):
        ui.not_available("Latent browser", f"{lat.reason}; {ANALYZE}")
        return
    lens = an.get("logit_lens") or f"unavailable ({an.get('logit_lens_missing')})"
    st.caption(f"Analysis of {an.get('n_tokens')} held-out tokens in {an.get('mode')} mode: {len(lat) - an.get('dead', 0)} of "
               f"{len(lat)} latents fired on them; output tokens via {lens}.")
    evals, features = ioi_features()
    latent = find_latent(lat, features)
    if latent is not None:
        show_latent(latent, lat[lat["latent"] == latent].iloc[0], lat, evals, features)


def experts_section() -> None:
    """Routed SAEs: expert load, latents per expert (alive / dead), each expert's latents, and IOI expert assignment."""
    ex = an.get("experts") if isinstance(an, dict) else None
    if not isinstance(ex, dict):
        if run["arch"] == "routed":
            ui.not_available("Experts", f"no expert data in the analysis; {ANALYZE}")
        return
    st.subheader("Experts")
    st.caption(f"{ex['n_experts']} experts of {ex['latents_per_expert']} latents each, gate {ex.get('gate')}, "
               f"{ex.get('experts_per_token')} per token")
    e = pd.DataFrame({"expert": np.arange(ex["n_experts"]), "load": ex["load"], "alive latents": ex["alive_latents"]})
    c1, c2 = st.columns(2)
    c1.altair_chart(charts.bars(e, "expert", "load", title="Expert load (share of routed tokens; uniform = 1/E)")
                    .properties(height=200), width="stretch")
    c2.altair_chart(charts.bars(e, "expert", "alive latents", title="Latents of each expert that fired")
                    .properties(height=200), width="stretch")
    lat = data.read_table(path, "analysis_latents")
    if isinstance(lat, pd.DataFrame) and "expert" in lat:
        pick = st.selectbox("Latents of expert", list(range(ex["n_experts"])), key="expert_pick")
        mine = lat[lat["expert"] == pick].sort_values("density", ascending=False)
        cols = [c for c in ("latent", "density", "n_active", "max_act", "promoted") if c in mine]
        st.dataframe(mine[cols].head(50), hide_index=True, key="expert_latents")
    parts = []
    for ev_ in data.ioi_evals_of_sae(path):
        t = data.read_table(ev_["path"], "experts")
        if isinstance(t, pd.DataFrame) and "dictionary" in t:
            parts.append(t[t["dictionary"] == ev_["label"]].assign(ioi_run=ev_["run"]))
    if parts:
        t = pd.concat(parts, ignore_index=True)
        st.markdown("**Which experts carry IO, S and Pos** (IOI evaluation; per value the expert of best F1; "
                    "the mean rows give chance in `*_chance`)")
        cols = [c for c in ("ioi_run", "location", "attribute", "value", "expert", "n", "precision", "recall", "f1",
                            "precision_chance", "recall_chance", "f1_chance") if c in t]
        st.dataframe(t[cols], hide_index=True, key="ioi_experts")
    else:
        st.caption("No IOI evaluation of this SAE yet (`workbench ioi eval --sae RUN`): expert assignment of IO, S, Pos not shown.")


st.subheader("Latents")
with ui.section("Latent browser"):
    latent_browser()
with ui.section("Experts"):
    experts_section()
st.subheader("Per-token L0 distribution")
with ui.section("Per-token L0 distribution"):
    l0_distribution()
