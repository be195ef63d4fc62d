"""Reading and patching locations agree with plain TransformerLens runs."""

from __future__ import annotations

import pytest
import torch

from evals.data import make_splits, semantic_positions
from evals.locations import Location, Patcher, end_only_ok, fast_path_ok, read_acts, resid_pre, run_patched
from workbench.ioi import make_batch


def _model_with_affine_ln(tiny_model_dir):
    from workbench.models import load_model

    m = load_model(str(tiny_model_dir))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained model's final LayerNorm has a non-trivial affine part
        m.ln_final.w.copy_(1 + 0.5 * torch.randn(m.ln_final.w.shape, generator=g))
        m.ln_final.b.copy_(0.5 * torch.randn(m.ln_final.b.shape, generator=g))
        m.blocks[1].attn.W_Q.mul_(3)
    return m


@pytest.mark.parametrize("which", ["affine", "fake_gpt2"])
def test_run_patched_matches_hooked_run(which, tiny_model_dir, request):
    model = _model_with_affine_ln(tiny_model_dir) if which == "affine" else request.getfixturevalue("fake_gpt2")
    s = make_splits(model, n_train=2, n_eval=16, seed=0)
    batch, cf = make_batch(model, s.eval), make_batch(model, s.counterfactual["S"])
    pos, cpos = semantic_positions(batch), semantic_positions(cf)
    rows = torch.arange(len(batch))
    clean = run_patched(model, batch, pos)
    logits = model(batch.tokens)[rows, batch.end]
    assert torch.allclose(clean.ld, logits[rows, batch.io_id] - logits[rows, batch.s_id], atol=1e-4)
    assert torch.equal(clean.top, logits.argmax(-1))

    z = Location("blocks.1.attn.hook_z", 1, "END")
    resid = Location("blocks.1.hook_resid_pre", None, "S2")
    patches = read_acts(model, cf, cpos, [z, resid])
    assert patches[z].shape == (16, model.cfg.d_head) and patches[resid].shape == (16, model.cfg.d_model)

    def hook_z(act, hook):
        act = act.clone()
        act[rows, batch.end, 1] = patches[z]
        return act

    def hook_resid(act, hook):
        act = act.clone()
        act[rows, pos["S2"]] = patches[resid]
        return act

    ref = model.run_with_hooks(batch.tokens, fwd_hooks=[(z.hook, hook_z), (resid.hook, hook_resid)])[rows, batch.end]
    ref_ld = ref[rows, batch.io_id] - ref[rows, batch.s_id]
    for kw in ({}, {"resid": {1: resid_pre(model, batch, 1)}}):  # full run and restart at block 1
        got = run_patched(model, batch, pos, patches, chunk=5, **kw)
        assert torch.allclose(got.ld, ref_ld, atol=1e-4)
        assert torch.equal(got.top, ref.argmax(-1))
    assert not torch.allclose(got.ld, clean.ld)


def _fast_equals_full(model, batch, pos, patches, chunk, monkeypatch):
    """Patcher's fast path, its clean states kept in chunks of `chunk` prompts, gives the full patched run's
    logit differences and argmax tokens; returns the full run's output."""
    from evals import locations

    ref = Patcher(model, batch, pos, fast=False)(patches)
    monkeypatch.setattr(locations._CleanStates.__init__, "__defaults__", (chunk,))
    got = Patcher(model, batch, pos)(patches)
    monkeypatch.undo()
    assert torch.allclose(got.ld, ref.ld, atol=1e-4), list(patches)
    assert torch.equal(got.top, ref.top), list(patches)
    return ref


@pytest.mark.parametrize("which", ["affine", "fake_gpt2"])
def test_end_only_fast_path_equals_the_full_patched_run(which, tiny_model_dir, request, monkeypatch):
    """Patches at END recompute END alone against the clean keys/values (Patcher's fast path): the same logit
    differences and argmax tokens as the full patched run, for every hook kind at END, in block 0 and block 1,
    with prompts of different lengths (ENDs at different positions) and a chunk boundary inside the batch."""
    model = _model_with_affine_ln(tiny_model_dir) if which == "affine" else request.getfixturevalue("fake_gpt2")
    s = make_splits(model, n_train=2, n_eval=24, seed=1)
    batch, cf = make_batch(model, s.eval), make_batch(model, s.counterfactual["IO"])
    pos, cpos = semantic_positions(batch), semantic_positions(cf)
    assert len(set(batch.end.tolist())) > 1  # prompts of several lengths
    groups = [[Location("blocks.1.attn.hook_z", 1, "END")],
              [Location("blocks.0.attn.hook_z", 0, "END"), Location("blocks.1.attn.hook_v", 1, "END")],
              [Location("blocks.0.hook_resid_pre", None, "END")],
              [Location("blocks.1.hook_resid_mid", None, "END"), Location("blocks.1.hook_mlp_out", None, "END")],
              [Location("blocks.0.attn.hook_q", 1, "END"), Location("blocks.0.hook_resid_post", None, "END")]]
    fast = Patcher(model, batch, pos)  # one instance for every group: its clean states are reused
    for locs in groups:
        patches = read_acts(model, cf, cpos, locs)
        assert end_only_ok(model, patches)
        ref = _fast_equals_full(model, batch, pos, patches, 7, monkeypatch)
        assert torch.allclose(fast(patches).ld, ref.ld, atol=1e-4)
    assert not torch.allclose(ref.ld, run_patched(model, batch, pos).ld)  # the patches do change the answer
    s2 = {Location("blocks.1.attn.hook_z", 1, "S2"): torch.zeros(len(batch), model.cfg.d_head)}
    assert not end_only_ok(model, s2)  # a patch before END changes later positions: the suffix path


@pytest.mark.parametrize("which", ["affine", "fake_gpt2"])
def test_suffix_fast_path_equals_the_full_patched_run(which, tiny_model_dir, request, monkeypatch):
    """Patches before END (S2, IO, S1, mixed with END) recompute only the positions from the first patched one on,
    prompts grouped by that position: the same answers as the full patched run, chunk boundaries included."""
    model = _model_with_affine_ln(tiny_model_dir) if which == "affine" else request.getfixturevalue("fake_gpt2")
    s = make_splits(model, n_train=2, n_eval=24, seed=2)
    batch, cf = make_batch(model, s.eval), make_batch(model, s.counterfactual["S"])
    pos, cpos = semantic_positions(batch), semantic_positions(cf)
    assert len(set(pos["S2"].tolist())) > 1
    groups = [[Location("blocks.0.attn.hook_v", 1, "S2")],
              [Location("blocks.1.hook_resid_pre", None, "S2"), Location("blocks.1.attn.hook_z", 0, "END")],
              [Location("blocks.0.hook_resid_post", None, "IO"), Location("blocks.1.attn.hook_k", 1, "S1")],
              [Location("blocks.0.hook_resid_pre", None, "S1")]]
    for locs in groups:
        patches = read_acts(model, cf, cpos, locs)
        assert fast_path_ok(model, patches) and not end_only_ok(model, patches)
        ref = _fast_equals_full(model, batch, pos, patches, 5, monkeypatch)
        assert not torch.allclose(ref.ld, run_patched(model, batch, pos).ld), locs  # the patch matters
