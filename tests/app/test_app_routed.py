"""The feature browser on a routed SAE: expert load, which latents live in which expert, and which experts
carry IO, S and Pos in an IOI evaluation (a runs dir of its own, made through the CLI)."""

from __future__ import annotations

import json

import pytest

from tests.app.conftest import APP, HOOK, _cli


@pytest.fixture(scope="module")
def routed_runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("routed") / "runs"
    root.mkdir()
    model, runs = str(tiny_model_dir), str(root)
    _cli("sae", "train", "--model", model, "--hook", HOOK, "--arch", "routed", "--gate", "topk", "--experts", "4", "--k", "4",
         "--expansion", "2", "--tokens", "1024", "--batch-size", "128", "--seq-batch", "16", "--shuffle-buffer", "256",
         "--eval-tokens", "256", "--warmup-steps", "2", "--dead-window", "512", "--name", "sae-routed", "--runs-dir", runs,
         "--quiet")
    _cli("sae", "analyze", str(root / "sae-routed"), "--tokens", "1000", "--seq-batch", "32", "--quiet")
    _cli("ioi", "eval", "--model", model, "--location", f"{HOOK}@END", "--sae", str(root / "sae-routed"), "--n-train", "100",
         "--n-eval", "24", "--ks", "2", "--n-boot", "10", "--name", "ioi-routed", "--runs-dir", runs, "--quiet")
    return root


def test_feature_browser_shows_experts_of_a_routed_sae(routed_runs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_RUNS", str(routed_runs))
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=60)
    at.switch_page("pages/2_Feature_browser.py")
    at.query_params["run"] = "sae-routed"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    an = json.loads((routed_runs / "sae-routed" / "analysis.json").read_text())
    assert "Experts" in [s.value for s in at.subheader]
    captions = " ".join(c.value for c in at.caption)
    assert f"4 experts of {an['experts']['latents_per_expert']} latents each, gate topk" in captions
    assert "Lives in expert" in captions  # the shown latent's expert
    titles = " ".join(c.proto.spec for c in at.get("vega_lite_chart"))
    assert "Expert load" in titles and "Latents of each expert that fired" in titles
    # the latents of the picked expert all live in it
    m = an["experts"]["latents_per_expert"]
    at.selectbox(key="expert_pick").select(2).run()
    assert not at.exception, [e.value for e in at.exception]
    lat = next(d.value for d in at.dataframe if "latent" in d.value.columns and "density" in d.value.columns
               and "n_active" in d.value.columns and len(d.value) <= 50 and d.value["latent"].nunique() == len(d.value)
               and (d.value["latent"] // m == 2).any())
    assert len(lat) and ((lat["latent"] // m) == 2).all()
    ioi = next(d.value for d in at.dataframe if {"ioi_run", "expert", "precision", "recall"} <= set(d.value.columns))
    assert set(ioi["attribute"]) == {"IO", "S", "Pos"} and {"precision", "recall"} <= set(ioi.columns)
