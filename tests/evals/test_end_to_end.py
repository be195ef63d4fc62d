"""`workbench ioi locate` and `workbench ioi eval` through the front door, on small random models.

The same code runs on the toy tokenizer (tiny_model) and on GPT-2's loading path (fake_gpt2: a tiny
random GPT-2 loaded by HookedTransformer.from_pretrained("gpt2") offline).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cli.main import main

EVAL_FLAGS = ["--n-train", "100", "--n-eval", "24", "--ks", "2", "4", "--n-boot", "20", "--quiet"]


def _files(run):
    return {p.name for p in run.iterdir()}


def test_locate_and_eval_on_tiny_model(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    assert main(["ioi", "locate", "--model", model, "--n-prompts", "40", "--qkv-heads", "2",
                 "--runs-dir", str(tmp_path), "--name", "loc", "--quiet"]) == 0
    loc = json.loads((tmp_path / "loc" / "locations.json").read_text())
    assert {"model", "clean", "heads", "locations", "cross_sections"} <= set(loc)
    assert len(loc["heads"]) == 4 and {"dla", "attn_io", "ablate_end", "patch_z", "role"} <= set(loc["heads"][0])
    assert pd.read_parquet(tmp_path / "loc" / "heads.parquet").shape[0] == 4
    assert json.loads((tmp_path / "loc" / "status.json").read_text())["status"] == "done"

    args = ["ioi", "eval", "--model", model, "--locations", str(tmp_path / "loc"),
            "--location", "blocks.1.attn.hook_q[0]@END", "--location", "blocks.0.attn.hook_z[1]@S2",
            "--runs-dir", str(tmp_path), "--name", "ev", *EVAL_FLAGS]
    assert main(args) == 0
    run = tmp_path / "ev"
    assert {"approximation.json", "approximation.parquet", "control.json", "control.parquet", "interpretability.json",
            "interpretability.parquet", "features.parquet", "diagnostics.json", "summary.md", "splits.json",
            "cross_sections.json", "dictionaries.json", "locations.json", "status.json"} <= _files(run)
    approx = pd.read_parquet(run / "approximation.parquet")
    sections = {c["name"] for c in json.loads((run / "cross_sections.json").read_text())}
    assert "custom" in sections and set(approx["cross_section"]) == sections
    assert set(approx["dictionary"]) == {"mean", "mse"}
    assert approx[["sufficiency", "necessity", "fvu"]].notna().all().all()
    ctrl = pd.read_parquet(run / "control.parquet")
    assert set(ctrl["method"]) == {"supervised"} and set(ctrl["attribute"]) == {"IO", "S", "Pos"}
    assert ctrl["accuracy"].between(0, 1).all()
    interp = pd.read_parquet(run / "interpretability.parquet")
    assert set(interp["f1_threshold"]) == {0.5, 0.6, 0.8}
    assert "## Approximation" in (run / "summary.md").read_text()
    splits = json.loads((run / "splits.json").read_text())  # the dictionaries' own prompts: 100 -> 2 blocks of 80 names
    assert splits["n_fit"] == 160 and splits["fit"] == "own prompts, one frame per block"


def test_unknown_cross_section_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "l.json").write_text(json.dumps({"cross_sections": []}))
    rc = main(["ioi", "eval", "--model", str(tiny_model_dir), "--locations", str(tmp_path / "l.json"),
               "--cross-section", "nope", "--runs-dir", str(tmp_path), *EVAL_FLAGS])
    assert rc == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    rc = main(["ioi", "eval", "--model", str(tiny_model_dir), "--location", "blocks.1.attn.hook_q[9]@END",
               "--runs-dir", str(tmp_path), *EVAL_FLAGS])
    assert rc == 2 and "head 9 out of range" in capsys.readouterr().err


def test_gpt2_path_locate_then_eval(fake_gpt2, tmp_path):
    """`--model gpt2` goes through HookedTransformer.from_pretrained (a tiny random local GPT-2 here)."""
    assert main(["ioi", "locate", "--model", "gpt2", "--n-prompts", "30", "--qkv-heads", "2",
                 "--runs-dir", str(tmp_path), "--name", "loc", "--quiet"]) == 0
    loc = json.loads((tmp_path / "loc" / "locations.json").read_text())
    assert len(loc["heads"]) == 8
    assert main(["ioi", "eval", "--model", "gpt2", "--locations", str(tmp_path / "loc"),
                 "--location", "blocks.1.attn.hook_z[3]@END", "--runs-dir", str(tmp_path), "--name", "ev", *EVAL_FLAGS]) == 0
    splits = json.loads((tmp_path / "ev" / "splits.json").read_text())
    assert splits["names_kept"] + len(splits["names_dropped"]) == 100
    approx = pd.read_parquet(tmp_path / "ev" / "approximation.parquet")
    assert "custom" in set(approx["cross_section"])


def test_eval_with_saes_on_tiny_model(tiny_model_dir, tmp_path, save_sae):
    model = str(tiny_model_dir)
    a = save_sae(tmp_path / "sae_q", 16, "blocks.1.attn.hook_q", 0)
    b = save_sae(tmp_path / "sae_z", 16, "blocks.0.attn.hook_z", 1, arch="mutual-choice", seed=1)
    args = ["ioi", "eval", "--model", model, "--location", "blocks.1.attn.hook_q[0]@END", "--location", "blocks.0.attn.hook_z[1]@S2",
            "--sae", f"pair={a},{b}", "--sae", str(a), "--runs-dir", str(tmp_path), "--name", "ev", *EVAL_FLAGS]
    assert main(args) == 0
    run = tmp_path / "ev"
    approx = pd.read_parquet(run / "approximation.parquet")
    assert set(approx["dictionary"]) == {"mean", "mse", "pair"}
    pair = approx[approx["dictionary"] == "pair"].iloc[0]
    assert pair["kind"] == "sae" and pair["arch"] == "mutual-choice/topk"
    assert 0 < pair["l0"] <= 64
    ctrl = pd.read_parquet(run / "control.parquet")
    sae_rows = ctrl[ctrl["dictionary"] == "pair"]
    assert set(sae_rows["method"]) == {"greedy", "f1"} and set(sae_rows["k"]) == {2, 4}
    assert sae_rows[["x", "y", "magnitude"]].notna().any().all()
    dicts = json.loads((run / "dictionaries.json").read_text())
    assert dicts["skipped"] and dicts["skipped"][0]["dictionary"] == "sae_q"  # covers one of two locations
    feats = pd.read_parquet(run / "features.parquet")
    assert (feats["dictionary"] == "pair").any()
    diag = json.loads((run / "diagnostics.json").read_text())
    assert {d["diagnostic"] for d in diag} == {"occlusion", "over_splitting", "frozen_decoder"}
    table = pd.read_parquet(run / "diagnostics.parquet")
    assert len(table) == 3 * 2  # mean, mse, pair at two locations
    assert table[table["dictionary"] == "pair"][["fvu_sae", "fvu_frozen", "fvu_frozen_se"]].notna().all().all()
    interp = pd.read_parquet(run / "interpretable.parquet")
    assert set(interp["dictionary"]) == {"pair"} and set(interp["f1_threshold"]) == {0.5, 0.6, 0.8}
    assert interp[["sufficiency", "sufficiency_se", "sufficiency_full"]].notna().all().all()
    assert (interp["sufficiency_full"] == pair["sufficiency"]).all()
    assert {"IO & Pos", "S union", "Name", "Place", "(any)"} <= set(pd.read_parquet(run / "interpretability.parquet")["attribute"])
    for f in run.glob("*.json"):  # strict JSON: no NaN / Infinity tokens
        json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f.name} contains {c}"))


def test_eval_reports_which_experts_carry_io_s_pos_for_a_routed_sae(tiny_model_dir, tmp_path, save_sae):
    model = str(tiny_model_dir)
    r = save_sae(tmp_path / "routed", 16, "blocks.1.attn.hook_q", 0, arch="routed", gate="topk", experts=4)
    t = save_sae(tmp_path / "topk", 16, "blocks.1.attn.hook_q", 0)
    args = ["ioi", "eval", "--model", model, "--location", "blocks.1.attn.hook_q[0]@END", "--sae", f"sw={r}",
            "--sae", f"tk={t}", "--runs-dir", str(tmp_path), "--name", "ev", *EVAL_FLAGS]
    assert main(args) == 0
    run = tmp_path / "ev"
    approx = pd.read_parquet(run / "approximation.parquet")
    assert approx[approx["dictionary"] == "sw"]["arch"].iloc[0] == "routed"
    ex = pd.read_parquet(run / "experts.parquet")
    assert set(ex["dictionary"]) == {"sw"}  # only routed SAEs have experts
    assert set(ex["attribute"]) == {"IO", "S", "Pos"}
    per_value = ex[ex["value"] != "(mean)"]
    assert per_value["expert"].between(0, 3).all()
    assert per_value[["precision", "recall"]].apply(lambda c: c.between(0, 1)).all().all()
    pos = per_value[per_value["attribute"] == "Pos"]
    assert set(pos["value"]) == {"ABB", "BAB"} and pos["n"].sum() == 100  # every train prompt has a Pos value
    means = ex[ex["value"] == "(mean)"]
    assert len(means) == 3 and means["f1_chance"].notna().all()
    assert (means[["precision_se", "recall_se", "f1_se"]] >= 0).all().all()  # bootstrap ± of the means
    text = (run / "summary.md").read_text()
    assert "which experts carry IO, S and Pos" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| custom | sw | `") and "` | 4 | Pos |" in ln)
    assert row.count(" ± ") == 3  # precision, recall and F1, each with its ±


def test_ordinal_prompts_locate_then_eval_and_a_mismatched_s2_is_refused(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir)
    assert main(["ioi", "locate", "--model", model, "--s2", "ordinal", "--n-prompts", "40", "--qkv-heads", "2",
                 "--runs-dir", str(tmp_path), "--name", "loc", "--quiet"]) == 0
    assert json.loads((tmp_path / "loc" / "locations.json").read_text())["config"]["s2"] == "ordinal"
    rc = main(["ioi", "eval", "--model", model, "--locations", str(tmp_path / "loc"), "--runs-dir", str(tmp_path),
               *EVAL_FLAGS])
    assert rc == 2 and "pass --s2 ordinal" in capsys.readouterr().err
    assert main(["ioi", "eval", "--model", model, "--s2", "ordinal", "--locations", str(tmp_path / "loc"),
                 "--location", "blocks.0.attn.hook_k[1]@S2", "--runs-dir", str(tmp_path), "--name", "ev",
                 "--n-fit", "0", *EVAL_FLAGS]) == 0  # fitted on the train prompts, read leave-one-out
    assert json.loads((tmp_path / "ev" / "splits.json").read_text())["fit"] == "train prompts, leave-one-out"
    ctrl = pd.read_parquet(tmp_path / "ev" / "control.parquet")
    assert set(ctrl["attribute"]) == {"IO", "S", "Pos"} and ctrl["accuracy"].between(0, 1).all()
    assert json.loads((tmp_path / "ev" / "config.json").read_text())["config"]["s2"] == "ordinal"
    assert "S2 said by its place" in (tmp_path / "ev" / "summary.md").read_text()
