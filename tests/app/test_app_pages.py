"""Every page of the app under streamlit.testing.v1.AppTest, on the real run dirs of conftest.app_runs.

Each test opens a page the way a user does (Home.py, then a page, optionally with ?run=...), asserts
that it raised nothing and that the elements hold the values stored in the run dirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

BROKEN = ("broken-config", "unknown-kind", "not-a-run")  # made by conftest.app_runs
PAGES = ("1_Runs.py", "2_Feature_browser.py", "3_IOI_evaluation.py", "4_Routing.py")


def frame(at, *columns: str) -> pd.DataFrame:
    """The first st.dataframe on the page holding all these columns."""
    for df in at.dataframe:
        if set(columns) <= set(df.value.columns):
            return df.value
    raise AssertionError(f"no dataframe with columns {columns}; have {[list(d.value.columns) for d in at.dataframe]}")


def chart_data(at) -> list[pd.DataFrame]:
    """The data of every Vega-Lite (Altair) chart on the page."""
    out = []
    for ch in at.get("vega_lite_chart"):
        for d in ch.proto.datasets:
            out.append(pa.ipc.open_stream(d.data.data).read_all().to_pandas())
    return out


def chart_colors(at) -> list[str]:
    """The colour field of every chart (layer) on the page."""
    out = []
    for ch in at.get("vega_lite_chart"):
        spec = json.loads(ch.proto.spec)
        for part in [spec, *spec.get("layer", [])]:
            field = part.get("encoding", {}).get("color", {}).get("field")
            if field:
                out.append(field)
    return out


def infos(at) -> str:
    return "\n".join(e.value for e in at.info)


def warnings(at) -> str:
    return "\n".join(e.value for e in at.warning)


@pytest.mark.parametrize("page", (None, *PAGES))
def test_every_page_opens_without_exception_or_warning(app_test, page):
    at = app_test(page)
    assert at.title[0].value
    assert [w.value for w in at.warning if "— unreadable:" not in w.value] == []  # only the list of broken dirs


def test_home_counts_runs_and_lists_unreadable_dirs(app_test):
    at = app_test()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["sae runs"] == "6" and metrics["ioi runs"] == "2" and metrics["moe runs"] == "5"
    assert metrics["unreadable"] == str(len(BROKEN))
    text = warnings(at)
    for name in BROKEN:
        assert f"`{name}` — unreadable:" in text
    assert "unknown run kind 'banana'" in text and "is not a run directory" in text


def test_runs_table_holds_the_stored_numbers(app_test, app_runs):
    at = app_test("1_Runs.py")
    table = frame(at, "name", "kind", "fvu", "status").set_index("name")
    assert {"sae-topk", "sae-feature-choice", "sae-half", "sae-corrupt", "sae-other-hook", "sae-legacy-eval", "ioi-locate",
            "ioi-eval", "moe-ot", *(f"bench-syn/{g}-s{s}" for g in ("topk", "hash") for s in (0, 1))} == set(table.index)
    ev = json.loads((app_runs / "sae-topk" / "eval.json").read_text())
    row = table.loc["sae-topk"]
    assert (row["kind"], row["arch"], row["k"], row["hook"], row["mode"]) == ("sae", "topk", 4, "blocks.1.hook_resid_post", "batch")
    assert row["fvu"] == pytest.approx(ev["fvu"]) and row["l0"] == pytest.approx(ev["l0_mean"])
    assert row["ce_recovered"] == pytest.approx(ev["ce_recovered"])
    assert row["dead_fraction"] == pytest.approx(ev["dead_fraction"]) and row["status"] == "done"
    # Feature Choice: the saved SAE's threshold (inference) mode, not the batch rule of training
    for name in ("sae-feature-choice", "sae-legacy-eval"):  # the second: an eval.json with batch numbers on top
        inf = json.loads((app_runs / "sae-feature-choice" / "eval.json").read_text())["modes"]["threshold"]
        fc = table.loc[name]
        assert fc["mode"] == "threshold" and fc["fvu"] == pytest.approx(inf["fvu"]), name
        assert fc["ce_recovered"] == pytest.approx(inf["ce_recovered"]) and fc["l0"] == pytest.approx(inf["l0_mean"])
        assert fc["dead_fraction"] == pytest.approx(inf["dead_fraction"])
    half = table.loc["sae-half"]  # unfinished: numbers from the last complete metrics row, torn line skipped
    rows = [json.loads(x) for x in (app_runs / "sae-half" / "metrics.jsonl").read_text().splitlines()[:3]]
    assert half["status"] == "running" and half["fvu"] == pytest.approx(rows[-1]["fvu"])
    assert "training metrics (batch mode, step" in half["note"] and "missing eval.json" in half["note"]
    assert "dead = silent on the last 512 training tokens" in half["note"]
    assert "eval.json is unreadable" in table.loc["sae-corrupt", "note"]
    res = json.loads((app_runs / "bench-syn" / "topk-s0" / "results.json").read_text())
    bench = table.loc["bench-syn/topk-s0"]
    assert (bench["kind"], bench["arch"], bench["metric"]) == ("moe", "topk", "test_loss")
    assert bench["value"] == pytest.approx(res["test_loss"])
    assert table.loc["ioi-eval", "arch"] == "eval" and table.loc["ioi-locate", "arch"] == "locate"
    assert "`broken-config` — unreadable:" in warnings(at)


def test_runs_filters(app_test):
    at = app_test("1_Runs.py")
    at.text_input(key="filter").input("feature").run()
    assert set(frame(at, "name", "arch")["arch"]) == {"feature-choice"}
    at.text_input(key="filter").input("").run()
    at.multiselect(key="kinds").set_value(["moe"]).run()
    shown = frame(at, "name", "kind")
    assert set(shown["kind"]) == {"moe"} and len(shown) == 5


def test_runs_compare_curves_and_frontier(app_test):
    at = app_test("1_Runs.py")
    at.multiselect(key="compare").set_value(["sae-topk", "sae-feature-choice"]).run()
    assert not at.exception
    diff = next(d.value for d in at.dataframe if "sae.arch" in d.value.index)
    assert diff.loc["sae.arch"].tolist() == ["topk", "feature-choice"]
    assert "acts.hook" not in diff.index  # same in both: not a difference
    assert at.selectbox(key="curve_metric").value == "fvu"
    charts = chart_data(at)
    curves = next(c for c in charts if {"run", "fvu"} <= set(c.columns))
    assert set(curves["run"]) == {"sae-topk", "sae-feature-choice"}
    at.selectbox(key="curve_metric").set_value("l0_mean").run()
    assert not at.exception


def _frontier(at) -> pd.DataFrame:
    return next(c for c in chart_data(at) if {"l0", "ce_recovered", "arch"} <= set(c.columns) and "run" not in c.columns)


def test_frontier_plots_ce_recovered_against_l0_for_one_model_hook_and_corpus(app_test, app_runs):
    at = app_test("1_Runs.py")
    assert at.selectbox(key="front_hook").value == "blocks.1.hook_resid_post"  # the hook with the most runs
    assert set(at.selectbox(key="front_hook").options) == {"blocks.1.hook_resid_post", "blocks.0.hook_resid_post"}
    assert at.selectbox(key="front_corpus").value == "toy"
    front = _frontier(at)
    assert set(front["name"]) == {"sae-topk", "sae-feature-choice", "sae-legacy-eval"}  # finished, readable, this hook
    ev = json.loads((app_runs / "sae-feature-choice" / "eval.json").read_text())
    point = front.set_index("name").loc["sae-feature-choice"]
    assert point["ce_recovered"] == pytest.approx(ev["ce_recovered"]) and point["l0"] == pytest.approx(ev["l0_mean"])
    at.selectbox(key="front_hook").set_value("blocks.0.hook_resid_post").run()
    assert set(_frontier(at)["name"]) == {"sae-other-hook"}


def _latents(app_runs, run="sae-topk"):
    return (pd.read_parquet(app_runs / run / "analysis_latents.parquet"),
            pd.read_parquet(app_runs / run / "analysis_contexts.parquet"))


def test_feature_browser_shows_one_latent(app_test, app_runs):
    lat, ctx = _latents(app_runs)
    feats = pd.read_parquet(app_runs / "ioi-eval" / "features.parquet")
    feats = feats[feats["dictionary"] == "sae-topk"]
    latent = int(feats.sort_values("f1", ascending=False)["feature"].iloc[0]) if len(feats) else int(lat["latent"][0])
    at = app_test("2_Feature_browser.py", run="sae-topk", latent=latent)
    assert at.selectbox(key="pick_sae").value == "sae-topk"
    assert at.number_input(key="latent").value == latent
    row = lat.set_index("latent").loc[latent]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["density"] == f"{row['density']:.2e}" and metrics["active tokens"] == str(int(row["n_active"]))
    assert metrics["max activation"] == f"{row['max_act']:.3f}"
    top = ctx[ctx["latent"] == latent].sort_values("rank").iloc[0]
    html = next(m.value for m in at.markdown if "font-family: monospace" in m.value)
    assert f"{top['act']:6.3f}" in html and "text-decoration: underline" in html
    assert html.count("<div") == ((ctx["latent"] == latent) & (ctx["sample"] == 0)).sum()  # the top contexts
    promoted = frame(at, "token", "logit")
    assert promoted["token"].tolist() == list(row["promoted"])
    if len(feats[feats["feature"] == latent]):
        f1 = frame(at, "attribute", "value", "f1")
        assert set(f1["attribute"]) == set(feats[feats["feature"] == latent]["attribute"])
    assert infos(at) == "" and warnings(at) == ""


def test_feature_browser_samples_the_activation_quantiles(app_test, app_runs):
    """Besides the top contexts, samples from each activation quantile, each under a heading with its ranks and values."""
    lat, ctx = _latents(app_runs)
    an = json.loads((app_runs / "sae-topk" / "analysis.json").read_text())
    q = ctx[ctx["sample"] > 0]
    latent = int(q.groupby("latent").size().idxmax())
    at = app_test("2_Feature_browser.py", run="sae-topk", latent=latent)
    mine = q[q["latent"] == latent]
    n = int(lat.set_index("latent").loc[latent, "n_active"])
    blocks = [m.value for m in at.markdown if "activations ranked" in m.value]
    assert len(blocks) == mine["sample"].nunique() == an["quantiles"]
    for k, part in mine.groupby("sample"):
        block = next(b for b in blocks if f"quantile {k} of {an['quantiles']}:" in b)
        assert f"ranked {int((k - 1) * n / an['quantiles']) + 1}–{int(k * n / an['quantiles'])} of {n}" in block
        assert f"values {part['act'].min():.3f}–{part['act'].max():.3f}" in block
        assert all(f"{a:6.3f}" in block for a in part["act"])
    assert mine["act"].min() < ctx[(ctx["latent"] == latent) & (ctx["sample"] == 0)]["act"].min()


def test_feature_browser_histogram_is_legible(app_test, app_runs):
    lat, _ = _latents(app_runs)
    latent = int(lat.sort_values("n_active").iloc[-1]["latent"])
    at = app_test("2_Feature_browser.py", run="sae-topk", latent=latent)
    (spec,) = [x for x in _specs(at) if _title(x).startswith("Nonzero activations")]
    assert spec["height"] >= 240
    assert spec["encoding"]["x"]["title"] == "activation" and spec["encoding"]["y"]["title"] == "tokens with this activation"
    assert spec["encoding"]["x2"] == {"field": "hi"} and spec["encoding"]["y2"] == {"datum": 0}  # bars span their bin, from 0 up
    hist = next(c for c in chart_data(at) if {"lo", "hi", "count"} <= set(c.columns))
    row = lat.set_index("latent").loc[latent]
    assert hist["count"].tolist() == list(row["hist"]) and hist["hi"].iloc[-1] == pytest.approx(row["max_act"])
    assert f"({int(row['n_active'])} tokens)" in _title(spec)


def _informative(lat: pd.DataFrame, ctx: pd.DataFrame, feats: pd.DataFrame) -> int:
    """The feature browser's opening rule, written out: best IOI F1, else the most consistent top-context peak token
    among latents active on 0.05%..10% of tokens."""
    if len(feats) and feats["f1"].max() > 0:
        return int(feats.sort_values("f1", ascending=False, kind="stable")["feature"].iloc[0])
    top = ctx[ctx["sample"] == 0]
    share = {j: pd.Series([t[p].strip() for t, p in zip(g["tokens"], g["pos"])]).value_counts().iloc[0] / len(g)
             for j, g in top.groupby("latent")}
    pool = lat[(lat["n_active"] > 0) & lat["density"].between(5e-4, 0.1)]
    pool = pool if len(pool) else lat[lat["n_active"] > 0]
    pool = pool.assign(share=pool["latent"].map(share).fillna(0))
    return int(pool.sort_values(["share", "n_active"], ascending=False, kind="stable")["latent"].iloc[0])


@pytest.mark.parametrize("run", ("sae-topk", "sae-feature-choice"))
def test_feature_browser_opens_on_an_informative_latent(app_test, app_runs, run):
    lat, ctx = _latents(app_runs, run)
    feats = pd.read_parquet(app_runs / "ioi-eval" / "features.parquet")
    feats = feats[feats["dictionary"] == run]
    at = app_test("2_Feature_browser.py", run=run)
    want = _informative(lat, ctx, feats)
    assert at.number_input(key="latent").value == want
    assert any(c.value.startswith(f"Opened on latent {want}: ") for c in at.caption)
    if not len(feats) and (lat["density"] <= 0.1).any():
        assert lat.set_index("latent").loc[want, "density"] <= 0.1  # not one of the dense latents


def test_feature_browser_runs_the_model_on_the_users_text(app_test, app_runs, tiny_model):
    import numpy as np

    import sae as sae_pkg
    from workbench.models import capture, encode

    lat, ctx = _latents(app_runs)
    top = ctx[ctx["sample"] == 0].sort_values("act", ascending=False).iloc[0]
    latent, text = int(top["latent"]), " ".join(t.strip() for t in top["tokens"])
    at = app_test("2_Feature_browser.py", run="sae-topk", latent=latent)
    at.text_input(key="own_text").input(text).run()
    assert not at.exception
    shown = frame(at, "position", "token", "activation")
    tokens = encode(tiny_model, [text])
    sae = sae_pkg.load(app_runs / "sae-topk")
    want = sae(capture(tiny_model, tokens, "blocks.1.hook_resid_post")[0, 1:]).codes()[:, latent].detach().numpy()
    assert shown["token"].str.strip().tolist() == text.split()
    np.testing.assert_allclose(shown["activation"].to_numpy(), want, rtol=1e-5, atol=1e-6)
    peak = int(np.argmax(want))
    assert any(f"at '{shown['token'][peak]}' (position {peak + 1})" in c.value for c in at.caption)
    at.text_input(key="own_text").input("zzqx-not-a-word").run()
    assert "Cannot run this text:" in warnings(at) and not at.exception


def test_a_link_to_a_run_that_does_not_exist_says_so(app_test):
    at = app_test("2_Feature_browser.py", run="nonexistent")
    assert "No sae run named `nonexistent`" in warnings(at) and "showing `" in warnings(at)
    at = app_test("3_IOI_evaluation.py", run="nonexistent")
    assert "No ioi run named `nonexistent`" in warnings(at)
    at = app_test("3_IOI_evaluation.py", run="ioi-eval")
    assert "No ioi run named" not in warnings(at)


def test_runs_table_shows_status_and_note_whole(app_test, app_runs):
    at = app_test("1_Runs.py")
    table = next(d for d in at.dataframe if {"status", "note"} <= set(d.value.columns))
    cols = list(table.value.columns)
    assert cols.index("status") <= 2  # next to the name, not past the right edge
    config = json.loads(table.proto.columns)
    assert config["status"]["width"] in ("medium", "large") or config["status"]["width"] >= 100
    longest = table.value["note"].dropna().str.len().max()
    assert config["note"]["width"] >= min(7 * longest, 900)  # wide enough for the longest note (~7 px a character)


def test_feature_browser_searches(app_test, app_runs):
    lat, ctx = _latents(app_runs)
    target = lat.sort_values("max_act", ascending=False).iloc[0]
    at = app_test("2_Feature_browser.py", run="sae-topk")
    at.radio(key="find").set_value("by output token").run()
    at.text_input(key="q_out").input(str(target["promoted"][0]).strip()).run()
    assert any(o.startswith(f"#{int(target['latent'])} ") for o in at.selectbox(key="cand").options)
    first = ctx[ctx["latent"] == target["latent"]].sort_values("rank").iloc[0]
    at.radio(key="find").set_value("by context token").run()
    at.text_input(key="q_ctx").input(str(first["tokens"][first["pos"]]).strip()).run()
    assert any(o.startswith(f"#{int(target['latent'])} ") for o in at.selectbox(key="cand").options)
    assert not at.exception


def test_feature_browser_search_by_ioi_attribute(app_test, app_runs):
    feats = pd.read_parquet(app_runs / "ioi-eval" / "features.parquet")
    feats = feats[feats["dictionary"] == "sae-topk"]
    if feats.empty:
        pytest.skip("the tiny SAE has no latent with F1 > 0 on this tiny eval")
    at = app_test("2_Feature_browser.py", run="sae-topk")
    at.radio(key="find").set_value("by IOI attribute").run()
    attr = at.selectbox(key="q_attr").value
    value = at.selectbox(key="q_value").value
    hit = feats[(feats["attribute"] == attr) & (feats["value"].astype(str) == value)]
    best = int(hit.sort_values("f1", ascending=False, kind="stable")["feature"].iloc[0])
    assert at.selectbox(key="cand").value == best
    assert at.markdown and any(m.value == f"#### Latent {best}" for m in at.markdown)


def test_feature_browser_per_token_l0(app_test, app_runs):
    at = app_test("2_Feature_browser.py", run="sae-feature-choice")
    an = json.loads((app_runs / "sae-feature-choice" / "analysis.json").read_text())
    assert an["mode"] == "threshold" and an["arch"] == "feature-choice"
    l0 = next(c for c in chart_data(at) if "fraction of tokens" in c.columns)
    assert {"analysis · threshold", "eval.json · batch", "eval.json · threshold"} <= set(l0["source"])
    ours = l0[l0["source"] == "analysis · threshold"]
    assert ours["fraction of tokens"].sum() == pytest.approx(1.0)
    assert ours.set_index("L0")["fraction of tokens"].to_dict() == pytest.approx(
        {i: c / sum(an["l0_hist"]) for i, c in enumerate(an["l0_hist"])})


def test_feature_browser_on_runs_without_or_with_broken_analysis(app_test):
    at = app_test("2_Feature_browser.py", run="sae-half")
    text = infos(at)
    assert "Latent browser: not available for this run (missing analysis.json; run `workbench sae analyze" in text
    assert "Per-token L0 distribution: not available for this run (missing eval.json" in text
    at = app_test("2_Feature_browser.py", run="sae-corrupt")
    assert "Latent browser: not available for this run (analysis_latents.parquet is unreadable" in infos(at)
    assert any("eval.json is unreadable" in c.value for c in at.caption)


def test_feature_browser_header_shows_the_inference_mode_first(app_test, app_runs):
    ev = json.loads((app_runs / "sae-feature-choice" / "eval.json").read_text())
    at = app_test("2_Feature_browser.py", run="sae-feature-choice")
    head, batch = at.caption[0].value, at.caption[1].value
    assert f"threshold mode: FVU {ev['fvu']:.4f} · CE recovered {ev['ce_recovered']:.4f}" in head
    assert f"(silent on all of {ev['dead_window']:,} held-out tokens)" in head
    assert batch.startswith("batch mode (the training rule") and f"FVU {ev['modes']['batch']['fvu']:.4f}" in batch


def _specs(at) -> list[dict]:
    """Every Vega-Lite spec on the page, layers flattened, with its title."""
    out = []
    for ch in at.get("vega_lite_chart"):
        spec = json.loads(ch.proto.spec)
        for part in [spec, *spec.get("layer", [])]:
            out.append({**part, "title": part.get("title") or spec.get("title")})
    return out


def _title(spec: dict) -> str:
    t = spec.get("title")
    return t.get("text", "") if isinstance(t, dict) else (t or "")


def test_ioi_eval_page(app_test, app_runs):
    at = app_test("3_IOI_evaluation.py", run="ioi-eval")
    approx = pd.read_parquet(app_runs / "ioi-eval" / "approximation.parquet")
    shown = frame(at, "cross_section", "dictionary", "sufficiency", "necessity")
    assert set(shown["dictionary"]) == {"mean", "mse", "sae-topk"}
    merged = shown.merge(approx, on=["cross_section", "dictionary"], suffixes=("", "_file"))
    assert merged["sufficiency"].tolist() == pytest.approx(merged["sufficiency_file"].tolist())
    assert merged["necessity"].tolist() == pytest.approx(merged["necessity_file"].tolist())
    assert {"sufficiency_se", "ld_recovered_signed", "top1_reconstructed"} <= set(shown.columns)
    assert at.selectbox(key="ctrl_cs").value == "custom"
    control = pd.read_parquet(app_runs / "ioi-eval" / "control.parquet")
    data = chart_data(at)
    edits = next(c for c in data if {"k", "accuracy", "method"} <= set(c.columns) and (c["method"] != "supervised").all()
                 and "min_f1" in c and (c["min_f1"].fillna(0) == 0).all())
    want = control[(control["cross_section"] == "custom") & (control["attribute"] == at.selectbox(key="ctrl_attr").value)
                   & (control["method"] != "supervised") & (control["min_f1"].fillna(0) == 0)]
    assert sorted(edits["accuracy"]) == pytest.approx(sorted(want["accuracy"]))  # no F1-curve row joins the k lines
    specs = _specs(at)
    dash = next(s for s in specs if "strokeDash" in s.get("encoding", {}) and "field" in s["encoding"]["strokeDash"])
    assert dash["encoding"]["strokeDash"]["legend"]["symbolType"] == "stroke"  # the legend shows solid vs dashed
    assert {"sufficiency", "necessity", "mean_best_f1", "coverage"} <= set(chart_colors(at))
    for s in specs:  # diverging heatmaps are centred on 0
        scale = s.get("encoding", {}).get("color", {}).get("scale", {})
        if scale.get("scheme") in ("blueorange", "redblue"):
            assert scale.get("domainMid") == 0
            assert scale["domain"][0] == -scale["domain"][1]
    row_axes = [s["encoding"]["y"].get("axis", {}) for s in specs if s.get("mark") in ("rect", {"type": "rect"})]
    assert row_axes and all(a.get("labelLimit") == 0 for a in row_axes)  # row labels are not truncated
    # interpretable features, the interpretation space, the diagnostics
    interp_only = pd.read_parquet(app_runs / "ioi-eval" / "interpretable.parquet")
    assert any(_title(s).startswith("sufficiency: interpretable features only") for s in specs)
    assert frame(at, "f1_threshold", "interpretable_fraction", "sufficiency_full")["sufficiency"].tolist() == pytest.approx(
        interp_only[interp_only["cross_section"] == "custom"]["sufficiency"].tolist())
    titles = {_title(s) for s in specs}
    assert {"Occlusion: coverage per attribute", "Over-splitting: small precise features per Pos value",
            "Frozen decoder: FVU at the SAE's k"} <= titles
    diag = pd.read_parquet(app_runs / "ioi-eval" / "diagnostics.parquet")
    frozen = next(c for c in data if {"decoder", "FVU"} <= set(c.columns))
    want = diag[diag["dictionary"] == "sae-topk"]
    assert sorted(frozen["FVU"]) == pytest.approx(sorted(want[["fvu_sae", "fvu_frozen"]].to_numpy().ravel()))
    assert "Circuit: not available for this run (missing locations.json" in infos(at)

    at.selectbox(key="ctrl_attr").set_value("Pos").run()
    at.selectbox(key="f1_thr").set_value(0.8).run()
    at.selectbox(key="interp_only_metric").set_value("necessity").run()
    assert not at.exception


def test_ioi_page_explains_an_empty_magnitude_chart_and_clamped_cells(app_test, app_runs, tmp_path, monkeypatch):
    """A run whose supervised edit is no better than not editing gets a message, not an empty chart;
    a sufficiency outside the colour scale gets a note. (A copy of ioi-eval in a runs root of its own.)"""
    import shutil

    dst = tmp_path / "runs" / "ioi-eval-edited"
    shutil.copytree(app_runs / "ioi-eval", dst)
    ctrl = pd.read_parquet(dst / "control.parquet")
    ctrl["x"], ctrl["y"] = float("nan"), float("nan")
    ctrl.to_parquet(dst / "control.parquet", index=False)
    ap = pd.read_parquet(dst / "approximation.parquet")
    ap.loc[0, "sufficiency"] = 1.7
    ap.to_parquet(dst / "approximation.parquet", index=False)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = app_test("3_IOI_evaluation.py", run="ioi-eval-edited")
    assert "Normalised edit magnitude: nothing to plot for custom" in infos(at)
    assert "Normalised edit magnitude" not in {_title(s) for s in _specs(at)}
    assert any("outside [-1.25, 1.25] are drawn in the end colour (clamped): 1.70" in c.value for c in at.caption)
    assert not at.exception


def test_ioi_page_explains_negative_normalised_magnitudes(app_test, app_runs, tmp_path, monkeypatch):
    """Edits with x < 0 (they removed less than the supervised edit) are counted and explained under the chart."""
    import shutil

    dst = tmp_path / "runs" / "ioi-eval-neg"
    shutil.copytree(app_runs / "ioi-eval", dst)
    ctrl = pd.read_parquet(dst / "control.parquet")
    rows = (ctrl["cross_section"] == "custom") & (ctrl["method"] != "supervised")
    attr = sorted(ctrl["attribute"].unique())[0]  # the page's first attribute
    rows &= ctrl["attribute"] == attr
    ctrl.loc[rows, ["x", "y"]] = [[-0.4, 0.5]]
    ctrl.to_parquet(dst / "control.parquet", index=False)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = app_test("3_IOI_evaluation.py", run="ioi-eval-neg")
    assert at.selectbox(key="ctrl_attr").value == attr
    pts = ctrl[(ctrl["cross_section"] == "custom") & (ctrl["attribute"] == attr)].dropna(subset=["x", "y"])
    neg = pts[pts["x"] < 0]
    assert len(neg) >= rows.sum()
    cap = next(c.value for c in at.caption if "x < 0 means" in c.value)
    assert f"Here {len(neg)} of {len(pts)} edits have x < 0 (down to {neg['x'].min():.2f})" in cap
    assert "sae-topk greedy" in cap and "removed less of the reconstruction than the supervised edit" in cap


def test_ioi_locate_page_shows_the_circuit(app_test, app_runs):
    at = app_test("3_IOI_evaluation.py", run="ioi-locate")
    heads = frame(at, "layer", "head", "role")
    assert len(heads) == 4 and set(heads["layer"]) == {0, 1}
    loc = json.loads((app_runs / "ioi-locate" / "locations.json").read_text())
    dla = {(h["layer"], h["head"]): h["dla"] for h in loc["heads"]}
    assert {(r.layer, r.head): r.dla for r in heads.itertuples()} == pytest.approx(dla)
    if loc["cross_sections"]:
        assert set(frame(at, "name", "locations")["name"]) == {c["name"] for c in loc["cross_sections"]}
    assert "Approximation: not available for this run (missing approximation.parquet; this is a `workbench ioi locate` run)" in infos(at)
    at.selectbox(key="head_score").set_value("ablate_end").run()
    assert not at.exception


def test_routing_sparse_ot_run(app_test, app_runs):
    at = app_test("4_Routing.py", run="moe-ot")
    assert "Transport plan" not in infos(at)
    plan = json.loads((app_runs / "moe-ot" / "ot_plan.json").read_text())["plan"]
    data = chart_data(at)
    mass = next(c for c in data if "mass" in c.columns)
    nonzero = sum(v > 0 for row in plan for v in row)
    assert len(mass) == nonzero and mass["mass"].sum() == pytest.approx(sum(map(sum, plan)), rel=1e-5)
    heat = next(c for c in data if "load share" in c.columns)
    first = json.loads((app_runs / "moe-ot" / "metrics.jsonl").read_text().splitlines()[0])
    share = heat[heat["step"] == first["step"]].sort_values("expert")["load share"].tolist()
    assert share == pytest.approx([v / sum(first["gate0/load"]) for v in first["gate0/load"]])
    assert len(at.selectbox(key="load_gate").options) == 2  # one gate per task


def test_routing_gate_comparison_over_seeds(app_test, app_runs):
    at = app_test("4_Routing.py", run="bench-syn/topk-s0")
    assert at.radio(key="scope").value == "this bench"
    table = frame(at, "gate", "mean", "std", "n").set_index("gate")
    summary = json.loads((app_runs / "bench-syn" / "summary.json").read_text())["gates"]
    assert set(table.index) == set(summary) == {"topk", "hash"}
    for gate, s in summary.items():
        assert table.loc[gate, "n"] == s["n"] == 2
        assert table.loc[gate, "mean"] == pytest.approx(s["mean"]) and table.loc[gate, "std"] == pytest.approx(s["std"])
    assert "Transport plan: not available for this run (missing ot_plan.json; only sparse-ot gates write one)" in infos(at)
    at.radio(key="scope").set_value("all runs of this task").run()
    assert "sparse-ot" in set(frame(at, "gate", "mean", "std", "n")["gate"])


def test_a_cached_rerun_shows_the_same_page(app_test):
    """The app only reads and caches: a rerun (served from the caches) shows exactly what the first run did.
    How fast that rerun is, is measured by bench/app_pages.py, not here."""
    for page, run in (("1_Runs.py", None), ("2_Feature_browser.py", "sae-topk"), ("3_IOI_evaluation.py", "ioi-eval"),
                      ("4_Routing.py", "moe-ot")):
        at = app_test(page, **({"run": run} if run else {}))
        first = ([m.value for m in at.markdown], [c.value for c in at.caption], len(at.dataframe))
        at.run()
        assert not at.exception, page
        assert ([m.value for m in at.markdown], [c.value for c in at.caption], len(at.dataframe)) == first, page


@pytest.mark.parametrize("page", (None, *PAGES))
def test_pages_on_an_empty_or_missing_runs_dir(page, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "nothing-here"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app" / "Home.py"), default_timeout=60)
    if page:
        at.switch_page(f"pages/{page}")
    at.run()
    assert not at.exception
    assert "nothing-here" in infos(at) or any("nothing-here" in c.value for c in at.caption)


def test_ioi_page_says_when_prompts_name_s2_by_its_place(app_test, app_runs, tmp_path, monkeypatch):
    """An `ioi eval --s2 ordinal` run is captioned as such (a copy of ioi-eval with its config changed)."""
    import json
    import shutil

    at = app_test("3_IOI_evaluation.py", run="ioi-eval")  # a name-S2 run: no such caption
    assert not any("--s2 ordinal" in c.value for c in at.caption)
    dst = tmp_path / "runs" / "ioi-eval-ordinal"
    shutil.copytree(app_runs / "ioi-eval", dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["config"]["s2"] = "ordinal"
    (dst / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = app_test("3_IOI_evaluation.py", run="ioi-eval-ordinal")
    assert any("--s2 ordinal" in c.value for c in at.caption) and not at.exception


def test_ioi_page_names_the_supervised_read_outs_at_chance(app_test, app_runs, tmp_path, monkeypatch):
    """Rows with above_chance = False (a supervised read-out no better than chance) are named with their z
    under the interpretability charts; a run where every read-out is above chance gets no such line."""
    import shutil

    dst = tmp_path / "runs" / "ioi-eval-chance"
    shutil.copytree(app_runs / "ioi-eval", dst)
    interp = pd.read_parquet(dst / "interpretability.parquet")
    sup = interp["dictionary"].isin(["mean", "mse"]) & interp["attribute"].isin(["IO", "S", "Pos"])
    assert interp.loc[sup, "read_z"].notna().all() and interp.loc[~sup, "above_chance"].isna().all()
    interp.loc[sup, "above_chance"] = True
    interp.to_parquet(dst / "interpretability.parquet", index=False)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = app_test("3_IOI_evaluation.py", run="ioi-eval-chance")
    assert not any(c.value.startswith("Read at chance") for c in at.caption)
    pos = (interp["dictionary"] == "mean") & (interp["attribute"] == "Pos")
    interp.loc[pos, ["above_chance", "read_z"]] = [[False, 1.23]]
    interp.to_parquet(dst / "interpretability.parquet", index=False)
    at = app_test("3_IOI_evaluation.py", run="ioi-eval-chance")
    cap = next(c.value for c in at.caption if c.value.startswith("Read at chance"))
    loc = interp.loc[pos, "location"].iloc[0]
    assert cap.endswith(f"mean @ {loc}: Pos (z 1.2)") and "mse" not in cap
    assert not at.exception
