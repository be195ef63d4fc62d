"""Activation health: the distribution of token norms at every residual-stream hook.

A few tokens with norms many times the median ("massive activations") dominate the variance of a
hook and break global allocation rules (Mutual Choice, uniform Feature Choice). This module measures,
at each ``blocks.L.hook_resid_pre`` / ``hook_resid_post``, over the real tokens of a corpus (BOS and
padding excluded, as SAE training does): median, p99 and max of ||x||, the share of tokens above
``factor`` x median, and which positions and tokens those are.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def residual_hooks(model: "HookedTransformer") -> list[str]:
    """Every residual-stream hook in forward order."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def token_norms(model: "HookedTransformer", n_seqs: int = 512, seed: int = 0, factor: float = 3.0,
                top: int = 5) -> dict[str, dict]:
    """Norm statistics per residual hook over ``n_seqs`` sequences of the toy corpus."""
    from workbench import toyworld
    from workbench.acts import select_positions
    from workbench.models import encode

    rng = random.Random(seed)
    texts = [toyworld.training_text(rng) for _ in range(n_seqs)]
    tokens = encode(model, texts)  # (batch, pos)
    keep = select_positions(tokens, model.tokenizer.pad_token_id, "all")  # (batch, pos): real tokens but BOS
    hooks = residual_hooks(model)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
    pos_idx = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)[keep]  # (n_tok,)
    tok_ids = tokens[keep]
    out = {}
    for hook in hooks:
        norms = cache[hook][keep].norm(dim=-1).float()  # (n_tok,)
        med = float(norms.median())
        big = norms > factor * med
        words = model.tokenizer.convert_ids_to_tokens(tok_ids[big].tolist())
        out[hook] = {
            "median": med, "p99": float(norms.quantile(0.99)), "max": float(norms.max()),
            "frac_above": float(big.float().mean()), "factor": factor, "n_tokens": int(norms.numel()),
            "top_positions": Counter(pos_idx[big].tolist()).most_common(top),
            "top_tokens": Counter(words).most_common(top),
            "variance_share_above": float((norms[big] ** 2).sum() / (norms ** 2).sum()) if big.any() else 0.0,
        }
    return out


def format_norms(stats: dict[str, dict]) -> str:
    lines = [f"{'hook':<24} {'median':>7} {'p99':>7} {'max':>7} {'>3x med':>8} {'var share':>9}  where (positions; tokens)"]
    for hook, s in stats.items():
        where = ""
        if s["frac_above"] > 0:
            where = (", ".join(f"{p}:{c}" for p, c in s["top_positions"]) + "; "
                     + ", ".join(f"{w}:{c}" for w, c in s["top_tokens"]))
        lines.append(f"{hook:<24} {s['median']:>7.2f} {s['p99']:>7.2f} {s['max']:>7.2f} {s['frac_above']:>8.2%} "
                     f"{s['variance_share_above']:>9.2%}  {where}")
    return "\n".join(lines)
