"""SAE metrics: FVU, L0 (mean and distribution), dead latents, and CE loss recovered.

Dead (one definition everywhere): a latent is dead if it fired on none of ``dead_window``
consecutive tokens. The trainer counts the last ``dead_window`` training tokens (batch rule; what
aux_k and aux_zipf act on); an evaluation counts ``dead_window`` held-out tokens in the mode it reports.

CE loss recovered (the SAE spliced into the model at its hook):
    CE_rec = (L_zero - L_sae) / (L_zero - L_clean)
where L is the mean next-token cross-entropy over real tokens, L_clean with the model untouched,
L_zero with the activation at the hook replaced by zeros and L_sae by the SAE's reconstruction.
Only the positions the SAE is trained on are replaced (BOS and padding stay clean), as in training.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from workbench.acts import ActsConfig, TextSource, select_positions
from workbench.models import capture, capture_with_logits, encode, head_view

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from sae.model import SAE

HELD_OUT_SEED = 1_000_003  # added to the training seed: evaluation text the SAE never saw


def l0_stats(l0: Tensor) -> dict:
    """Summary of per-token L0 (active latents per token): mean, spread and quantiles."""
    l = l0.double()
    q = torch.quantile(l, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64, device=l.device)) if l.numel() else torch.zeros(3)
    return {"l0_mean": l.mean().item(), "l0_std": l.std(unbiased=False).item(), "l0_min": int(l0.min()),
            "l0_p05": q[0].item(), "l0_p50": q[1].item(), "l0_p95": q[2].item(), "l0_max": int(l0.max()),
            "l0_zero_frac": (l0 == 0).double().mean().item()}


def density_histogram(density: Tensor, lo: int = -7) -> dict:
    """Counts of latents per decade of density (10^lo .. 1), plus never-active ones."""
    d = density.double().cpu()
    edges = torch.arange(lo, 1, dtype=torch.float64)
    logd = torch.log10(d.clamp_min(10.0 ** (lo - 1)))
    counts = torch.histc(logd[d > 0], bins=len(edges) - 1, min=lo, max=0) if (d > 0).any() else torch.zeros(len(edges) - 1)
    return {"density_decades": edges[:-1].tolist(), "density_counts": counts.long().tolist(), "density_zero": int((d == 0).sum())}


def _splice(act: Tensor, mask: Tensor, new: Tensor, head: int | None) -> Tensor:
    """act with the masked positions replaced by new (n_sel, d); handles (batch, pos, head, d_head)."""
    act, new = act.clone(), new.to(act.device)
    if act.ndim == 4:
        if head is not None:
            act[:, :, head][mask] = new.to(act.dtype)
        else:
            act[mask] = new.reshape(-1, *act.shape[2:]).to(act.dtype)
    else:
        act[mask] = new.to(act.dtype)
    return act


def _token_ce(logits: Tensor, tokens: Tensor, pad_id: int | None) -> tuple[Tensor, Tensor]:
    """(sum of next-token CE over real targets, number of targets)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    tgt = tokens[:, 1:]
    nll = -logp.gather(-1, tgt[..., None]).squeeze(-1)  # (batch, pos-1)
    real = torch.ones_like(tgt, dtype=torch.bool) if pad_id is None else tgt != pad_id
    return nll[real].sum(), real.sum()


@torch.no_grad()
def evaluate(sae: "SAE", model: "HookedTransformer", acts: ActsConfig, n_tokens: int,
             modes: tuple[str, ...] | None = None, ce: bool = True, seed_offset: int = HELD_OUT_SEED,
             dead_tokens: int | None = None) -> dict:
    """Metrics of `sae` (taking raw activations) on >= n_tokens held-out tokens, per allocation mode.

    In batch mode FC/MC allocate over each chunk of ``acts.seq_batch`` sequences at once. Dead
    latents are counted over ``dead_tokens`` held-out tokens (default n_tokens): the first n_tokens
    serve every metric, the rest only the activity count (no CE, the model stops at the hook).
    Returns {mode: {fvu, mse, l0_*, dead_fraction, dead_window, ce_clean, ce_zero, ce_sae, ce_recovered}}.
    """
    modes = modes or sae.modes
    old_mode = sae.mode
    cfg = replace(acts, seed=acts.seed + seed_offset)
    text = TextSource(cfg)
    pad = model.tokenizer.pad_token_id if model.tokenizer is not None else None
    dev = sae.W_enc.device
    dead_tokens = max(dead_tokens or n_tokens, 1)
    acc = {m: {"sq": 0.0, "l0": [], "counts": torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=dev), "ce": 0.0} for m in modes}
    sxx = 0.0
    sum_x = None
    n_seen = n_dead = 0
    ce_clean = ce_zero = 0.0
    n_tgt = 0
    while n_seen < n_tokens or n_dead < dead_tokens:
        tokens = encode(model, text.next(cfg.seq_batch))[:, : model.cfg.n_ctx].to(model.cfg.device)
        mask = select_positions(tokens.cpu(), pad, cfg.positions).to(tokens.device)
        full = n_seen < n_tokens  # metrics batch (else: activity only, the forward stops at the hook)
        if full:
            logits, act = capture_with_logits(model, tokens, cfg.hook)  # act as the hook saw it, for splicing
            x = head_view(act, cfg.head)[mask].float().to(dev)  # (n_sel, d_in)
        else:
            x = capture(model, tokens, cfg.hook, cfg.head)[mask].float().to(dev)  # (n_sel, d_in)
        if x.shape[0] == 0:
            continue
        take = min(x.shape[0], dead_tokens - n_dead)  # tokens that count towards the dead window
        n_dead += take
        if not full:
            for m in modes:
                out = sae.set_mode(m)(x)
                on = (out.values > 0) & (out.alloc.rows < take)
                acc[m]["counts"] += torch.bincount(out.alloc.cols[on], minlength=sae.cfg.d_sae)
            continue
        n_seen += x.shape[0]
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sxx += x.pow(2).sum().item()
        if ce:
            s, n = _token_ce(logits, tokens, pad)
            ce_clean += s.item()
            n_tgt += int(n)
            zero_act = _splice(act, mask, torch.zeros_like(x), cfg.head)
            s, _ = _token_ce(model.run_with_hooks(tokens, fwd_hooks=[(cfg.hook, lambda a, hook: zero_act)]), tokens, pad)
            ce_zero += s.item()
        for m in modes:
            sae.set_mode(m)
            out = sae(x)
            a = acc[m]
            a["sq"] += (x - out.x_hat).pow(2).sum().item()
            a["l0"].append(out.l0().cpu())
            on = (out.values > 0) & (out.alloc.rows < take)
            a["counts"] += torch.bincount(out.alloc.cols[on], minlength=sae.cfg.d_sae)
            if ce:
                new_act = _splice(act, mask, out.x_hat, cfg.head)
                s, _ = _token_ce(model.run_with_hooks(tokens, fwd_hooks=[(cfg.hook, lambda a_, hook: new_act)]), tokens, pad)
                a["ce"] += s.item()
    sae.set_mode(old_mode)
    var = sxx - (sum_x.pow(2).sum().item() / n_seen)  # sum |x - mean|^2
    result = {}
    for m in modes:
        a = acc[m]
        l0 = torch.cat(a["l0"])
        r = {"tokens": n_seen, "fvu": a["sq"] / max(var, 1e-12), "mse": a["sq"] / n_seen, **l0_stats(l0),
             "l0_hist": torch.bincount(l0).tolist(), "dead_fraction": (a["counts"] == 0).double().mean().item(),
             "dead_window": n_dead}
        if ce:
            clean, zero, spliced = ce_clean / n_tgt, ce_zero / n_tgt, a["ce"] / n_tgt
            r.update(ce_clean=clean, ce_zero=zero, ce_sae=spliced,
                     ce_recovered=(zero - spliced) / (zero - clean) if zero != clean else float("nan"))
        result[m] = r
    return result
