"""`workbench ioi eval --device cuda` gives the CPU's answers on the shipped model: the same prompts (fit,
train, eval and counterfactual splits), the same supervised dictionaries and SAE, the same numbers up to
float noise. Skipped without a GPU; run on a lent GPU machine (docs/ioi.md records where and when)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from cli.main import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LOCS = ["--location", "blocks.1.attn.hook_z[1]@END"]  # head 1.1 carries IO to END (docs/ioi.md)
FLAGS = ["--n-train", "400", "--n-eval", "200", "--ks", "1", "4", "--n-boot", "20", "--quiet"]


def _eval(tmp_path, device: str, sae_dir) -> dict:
    assert main(["ioi", "eval", "--model", "toy-ioi", *LOCS, "--sae", str(sae_dir), "--device", device,
                 "--runs-dir", str(tmp_path), "--name", device, *FLAGS]) == 0
    run = tmp_path / device
    return {"splits": json.loads((run / "splits.json").read_text()),
            **{n: pd.read_parquet(run / f"{n}.parquet") for n in ("approximation", "control", "interpretability")}}


def _close(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], cols: list[str], tol: float) -> None:
    m = a.merge(b, on=keys, suffixes=("_cpu", "_cuda"))
    assert len(m) == len(a) == len(b) > 0
    for c in cols:
        d = (m[f"{c}_cpu"] - m[f"{c}_cuda"]).abs()
        assert (d.fillna(0) <= tol).all(), (c, m.loc[d > tol, keys + [f"{c}_cpu", f"{c}_cuda"]])


def test_ioi_eval_on_cuda_matches_cpu(tmp_path, save_sae):
    sae_dir = save_sae(tmp_path / "sae", 32, "blocks.1.attn.hook_z", 1)  # an SAE on head 1.1's z (d_head 32)
    cpu, gpu = _eval(tmp_path, "cpu", sae_dir), _eval(tmp_path, "cuda", sae_dir)
    assert cpu["splits"] == gpu["splits"]  # prompts are made on the host: identical
    assert set(gpu["approximation"]["dictionary"]) == {"mean", "mse", "sae"}  # the SAE is evaluated too
    cols = ["sufficiency", "necessity", "ld_recovered", "top1_reconstructed", "fvu"]
    sup = lambda d: d[d["dictionary"] != "sae"]  # noqa: E731
    sae = lambda d: d[d["dictionary"] == "sae"]  # noqa: E731
    _close(sup(cpu["approximation"]), sup(gpu["approximation"]), ["cross_section", "dictionary"], cols, 1e-3)
    # the SAE's top-k can pick another latent at a near-tie in float32 on another device: a looser bound
    _close(sae(cpu["approximation"]), sae(gpu["approximation"]), ["cross_section", "dictionary"], cols, 0.01)
    _close(cpu["control"], gpu["control"], ["cross_section", "dictionary", "attribute", "method", "k", "min_f1"],
           ["accuracy", "target_changed"], 0.02)
    _close(cpu["interpretability"], gpu["interpretability"],
           ["cross_section", "dictionary", "location", "attribute", "f1_threshold"],
           ["mean_best_f1", "coverage", "interpretable_fraction"], 0.02)
