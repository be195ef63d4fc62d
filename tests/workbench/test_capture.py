"""Hook capture has one home (workbench.models.capture): it returns what run_with_cache sees, per head or all heads."""

import pytest
import torch

from workbench.errors import ModelError
from workbench.models import capture, capture_with_logits, head_view, stop_layer


@pytest.fixture(scope="module")
def tokens(tiny_model):
    return tiny_model.to_tokens(["Mary saw John at the park", "John gave a book to Mary"], padding_side="right")


@pytest.mark.parametrize("hook", ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.mlp.hook_post", "ln_final.hook_normalized"])
def test_capture_matches_run_with_cache(tiny_model, tokens, hook):
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[hook])
    got = capture(tiny_model, tokens, hook)
    assert got.shape == cache[hook].shape and torch.allclose(got, cache[hook], atol=1e-6)


def test_per_head_hooks_give_one_head_or_all_heads_concatenated(tiny_model, tokens):
    hook = "blocks.0.attn.hook_z"
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[hook])
    z = cache[hook]  # (batch, pos, n_heads, d_head)
    assert torch.allclose(capture(tiny_model, tokens, hook, head=1), z[:, :, 1], atol=1e-6)
    flat = capture(tiny_model, tokens, hook)
    assert flat.shape == (*z.shape[:2], z.shape[2] * z.shape[3])
    assert torch.allclose(flat[..., z.shape[3]:2 * z.shape[3]], z[:, :, 1], atol=1e-6)  # head 1 is the second slice


def test_capture_with_logits_is_one_full_forward(tiny_model, tokens):
    logits, act = capture_with_logits(tiny_model, tokens, "blocks.0.attn.hook_z")
    assert torch.allclose(logits, tiny_model(tokens), atol=1e-5)
    assert act.ndim == 4 and torch.equal(head_view(act, 0), act[:, :, 0])


def test_bad_head_and_hook_are_one_line_errors(tiny_model, tokens):
    with pytest.raises(ModelError, match=r"head: 5 is out of range, the hook has 2 heads; pass --head 0\.\.1"):
        capture(tiny_model, tokens, "blocks.0.attn.hook_z", head=5)
    with pytest.raises(ModelError, match="applies only to per-head hooks"):
        capture(tiny_model, tokens, "blocks.0.hook_resid_post", head=0)
    with pytest.raises(ModelError, match="unknown hook name"):
        capture(tiny_model, tokens, "blocks.0.hook_resid_pots")


def test_stop_layer():
    assert stop_layer("blocks.3.attn.hook_z") == 4 and stop_layer("hook_embed") == 0
    assert stop_layer("ln_final.hook_normalized") is None
