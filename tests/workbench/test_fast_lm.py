"""The training twin computes exactly what the HookedTransformer computes, with the same weights."""

import torch

from workbench.fast_lm import FastLM, hooked_state
from workbench.models import toy_config_dict


def test_twin_matches_hooked_transformer_logits_and_grads():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**toy_config_dict(3, 48, 3, 80, 20, d_vocab=50), device="cpu"))
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a mix-up of any of them shows
        for k, v in model.named_parameters():
            if k.endswith((".w", ".b")) or ".b_" in k:
                v.add_(0.3 * torch.randn_like(v))
    twin = FastLM.like(model)
    tokens = torch.randint(0, 50, (4, 17))
    ref = model(tokens)
    out = twin(tokens)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    ref.square().mean().backward()
    out.square().mean().backward()
    grads = dict(model.named_parameters())
    for k, p in twin.named_parameters():
        assert torch.allclose(p.grad, grads[k].grad, atol=1e-5), k
    assert set(twin.state_dict()) == set(hooked_state(model))
