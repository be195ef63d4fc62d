"""`workbench sae analyze`: the stored feature-browser data equals a direct computation on the same tokens."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch


@pytest.fixture
def trained(tiny_cfg, tiny_model):
    from sae.trainer import train

    return lambda arch: train(tiny_cfg(arch, name=arch), model=tiny_model, progress=False)


def _direct_codes(run, tiny_model, n_seq: int):
    """Codes of the saved SAE on the held-out text analyze reads: (tokens, codes (n_sel, d_sae), mask)."""
    from workbench.acts import TextSource, select_positions
    from workbench.config import from_dict
    from workbench.models import encode

    import sae
    from sae.config import TrainConfig
    from sae.metrics import HELD_OUT_SEED

    acts = from_dict(TrainConfig, run.config).acts
    texts = TextSource(replace(acts, seed=acts.seed + HELD_OUT_SEED)).next(n_seq)
    n_ctx = tiny_model.cfg.n_ctx
    pad = tiny_model.tokenizer.pad_token_id
    tokens = encode(tiny_model, texts)[:, :n_ctx]
    tokens = torch.nn.functional.pad(tokens, (0, n_ctx - tokens.shape[1]), value=pad)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=acts.hook)
    mask = select_positions(tokens, pad, acts.positions)
    model = sae.load(run.path)
    return tokens, model.encode(cache[acts.hook][mask]), mask, model


def test_analysis_matches_direct_computation(trained, tiny_model):
    from sae.analyze import AnalyzeConfig, analyze

    run = trained("topk")
    s = analyze(run.path, AnalyzeConfig(tokens=500, top_n=4, n_logits=5, seq_batch=16), model=tiny_model)
    assert s["mode"] == "batch" and s["n_tokens"] >= 500
    tokens, codes, mask, model = _direct_codes(run, tiny_model, s["n_sequences"])
    assert codes.shape[0] == s["n_tokens"]
    lat = pd.read_parquet(run.path / "analysis_latents.parquet")
    ctx = pd.read_parquet(run.path / "analysis_contexts.parquet")
    active = codes > 0
    np.testing.assert_allclose(lat["density"], active.float().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(lat["max_act"], codes.max(0).values.numpy(), rtol=1e-5)
    assert [int(sum(h)) for h in lat["hist"]] == active.sum(0).tolist()
    assert s["l0_hist"] == torch.bincount(active.sum(1)).tolist()
    # top contexts: strongest activation first, the max token is the one where the code peaks
    strs = tiny_model.tokenizer.batch_decode([[int(t)] for t in tokens[mask]])
    for j in range(codes.shape[1]):
        mine = ctx[(ctx["latent"] == j) & (ctx["sample"] == 0)].sort_values("rank")
        assert len(mine) == min(4, int(active[:, j].sum()))
        if len(mine):
            top = mine.iloc[0]
            assert top["act"] == pytest.approx(float(codes[:, j].max()), rel=1e-5)
            assert top["acts"][top["pos"]] == pytest.approx(top["act"])
            assert top["tokens"][top["pos"]] == strs[int(codes[:, j].argmax())]
            assert list(mine["act"]) == sorted(mine["act"], reverse=True)
    # promoted tokens: decoder direction through the unembedding, special tokens excluded
    logits = model.W_dec.detach() @ tiny_model.W_U.detach()
    logits[:, tiny_model.tokenizer.all_special_ids] = -float("inf")
    want = [tiny_model.tokenizer.batch_decode([[int(i)] for i in row]) for row in logits.topk(5, dim=1).indices]
    assert [list(p) for p in lat["promoted"]] == want


def test_quantile_samples_span_each_latents_activation_range(trained, tiny_model):
    """Besides the top contexts: per_quantile samples from each quantile of a latent's nonzero activations,
    evenly spaced in rank, each the activation a direct computation ranks there."""
    from sae.analyze import AnalyzeConfig, analyze

    run = trained("topk")
    s = analyze(run.path, AnalyzeConfig(tokens=500, top_n=3, quantiles=4, per_quantile=2, seq_batch=16), model=tiny_model)
    assert (s["quantiles"], s["per_quantile"]) == (4, 2)
    _, codes, _, _ = _direct_codes(run, tiny_model, s["n_sequences"])
    ctx = pd.read_parquet(run.path / "analysis_contexts.parquet")
    checked = 0
    for j in range(codes.shape[1]):
        acts = np.sort(codes[:, j].numpy()[codes[:, j].numpy() > 0])[::-1]  # strongest first
        mine = ctx[(ctx["latent"] == j) & (ctx["sample"] > 0)].sort_values(["sample", "rank"])
        if len(acts) <= 3:
            assert mine.empty  # all its activations are among the top contexts already
            continue
        n = len(acts)
        want = [int(np.floor((q + (i + 0.5) / 2) / 4 * n)) for q in range(4) for i in range(2)]
        assert mine["rank"].tolist() == want and mine["sample"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
        np.testing.assert_allclose(mine["act"], acts[want], rtol=1e-5)
        for r in mine.itertuples():
            assert r.acts[r.pos] == pytest.approx(r.act, rel=1e-5)  # the marked token is the sampled one
        checked += 1
    assert checked > 0
    assert ctx[ctx["sample"] > 0]["act"].min() < ctx[ctx["sample"] == 0]["act"].min()  # weaker than any top context


def test_text_activations_equal_the_codes_of_a_direct_forward(trained, tiny_model):
    from sae.analyze import text_activations
    from workbench.errors import ModelError
    from workbench.models import capture, encode

    import sae as sae_pkg

    run = trained("topk")
    model = sae_pkg.load(run.path)
    import random

    from workbench import toyworld

    text = toyworld.training_text(random.Random(3))
    tokens = encode(tiny_model, [text])[:, : tiny_model.cfg.n_ctx]
    strs, acts = text_activations(model, tiny_model, "blocks.1.hook_resid_post", None, text)
    x = capture(tiny_model, tokens, "blocks.1.hook_resid_post")[0, 1:]
    want = model(x).codes().detach().numpy()
    assert len(strs) == acts.shape[0] == tokens.shape[1] - 1 and acts.shape == want.shape
    assert " ".join(strs) == " ".join(text.split()[: len(strs)])
    np.testing.assert_allclose(acts, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="empty"):
        text_activations(model, tiny_model, "blocks.1.hook_resid_post", None, "  ")


def test_feature_choice_is_analysed_in_threshold_mode(trained, tiny_model):
    from sae.analyze import AnalyzeConfig, analyze

    run = trained("feature-choice")
    s = analyze(run.path, AnalyzeConfig(tokens=300, seq_batch=16), model=tiny_model)
    assert s["mode"] == "threshold" and sum(s["l0_hist"]) == s["n_tokens"]
    assert (run.path / "analysis.json").is_file() and s["logit_lens"] == "W_dec @ W_U"


def test_hooks_without_a_path_to_the_unembedding_say_why(trained, tiny_model):
    from sae.analyze import _logit_lens, _Vocab

    import sae

    model = sae.load(trained("topk").path)
    lens, why = _logit_lens(model, tiny_model, "blocks.0.attn.hook_q", None, 5, _Vocab(tiny_model))
    assert lens is None and "no linear path from blocks.0.attn.hook_q" in why
    lens, why = _logit_lens(model, tiny_model, "blocks.0.mlp.hook_post", None, 5, _Vocab(tiny_model))
    assert lens is None and "does not match the unembedding path W_dec @ W_out[0] @ W_U" in why


def test_analyze_refuses_runs_it_cannot_read(tmp_path, tiny_cfg, tiny_model):
    from workbench.errors import RunError
    from workbench.runs import Run

    from sae.analyze import analyze

    other = Run.create("moe", {}, name="moe", root=tmp_path)
    with pytest.raises(RunError, match="not an SAE run"):
        analyze(other.path, model=tiny_model)
    unfinished = Run.create("sae", {"acts": {}, "sae": {}}, name="sae", root=tmp_path)
    with pytest.raises(RunError, match="training unfinished"):
        analyze(unfinished.path, model=tiny_model)
