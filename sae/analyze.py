"""The feature browser's heavy computation, done once, stored in the run dir.

Runs the SAE over held-out text of the run's corpus (the run's seed + ``HELD_OUT_SEED``, the text
``sae eval`` uses) and writes, each file atomically:

``analysis.json``  {"version", "model", "hook", "head", "mode" (batch | threshold), "n_tokens",
    "n_sequences", "d_sae", "top_n", "quantiles", "per_quantile", "bins", "l0_hist" (tokens with L0 = i, i = 0..max), "l0_mean",
    "l0_std", "l0_by_token": [{"token", "count", "l0_mean"}] (the most frequent tokens),
    "l0_by_position": [mean L0 at position i] (null where no token), "logit_lens" (how directions reach
    the unembedding, e.g. "W_dec @ W_U") or null, "logit_lens_missing" (why not, when null),
    "density_log10_edges", "density_log10_counts" (latents per decade of density), "dead" (latents that
    never fired), "time_s"}; routed SAEs add "experts": {"n_experts", "latents_per_expert", "gate",
    "experts_per_token", "load" (share of dispatched (token, expert) pairs per expert), "tokens_routed",
    "alive_latents" (latents of each expert that fired)}
``analysis_latents.parquet``  one row per latent: latent, density (fraction of tokens where it is
    active), n_active, max_act, mean_act (over active tokens), hist (counts of its nonzero activations
    in ``bins`` equal bins over (0, max_act]), promoted / suppressed (token strings with the largest /
    smallest direct logit effect of the decoder direction), promoted_logit / suppressed_logit; routed
    SAEs add expert (the expert sub-dictionary that owns the latent).
``analysis_contexts.parquet``  one row per shown activation of a latent: latent, sample (0: one of its
    ``top_n`` strongest activations; q = 1..``quantiles``: a sample from the q-th activation quantile, its
    nonzero activations ranked strongest first, so 1 = the strongest and ``quantiles`` = the weakest
    1/quantiles; ``per_quantile`` each, evenly spaced in rank; only for latents active on more than
    ``top_n`` tokens), rank (0 = its strongest activation), act, seq, pos (index of the activating token
    inside ``tokens``), tokens (list of token strings of the context window), acts (the latent's
    activation at each of those tokens). Top contexts on this corpus are often near-duplicates; the
    quantile samples show what the latent does at ordinary strengths.

FC/MC SAEs are run in threshold mode (their batch-independent inference rule) unless ``--mode batch``.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sae.config import AnalyzeConfig
from workbench.errors import RunError
from workbench.runs import Run, atomic_write_bytes

FILES = ("analysis.json", "analysis_latents.parquet", "analysis_contexts.parquet")
VERSION = 1


def analyze(run_path: str | Path, cfg: AnalyzeConfig | None = None, *, model=None, progress: bool = False) -> dict:
    """Compute the analysis of an SAE run and write its three files; returns analysis.json's content."""
    from workbench.acts import TextSource, select_positions
    from workbench.models import capture, encode, load_model

    from sae import io as sae_io
    from sae.config import load_train_config
    from sae.metrics import HELD_OUT_SEED
    from sae.trainer import KIND

    cfg = cfg or AnalyzeConfig()
    t0 = time.perf_counter()
    run = Run.open(run_path)
    if run.kind != KIND:
        raise RunError(f"{run_path} is a {run.kind!r} run, not an SAE run")
    tcfg = load_train_config(run.config)
    acts = tcfg.acts
    device = cfg.device or acts.device
    if not (run.path / sae_io.WEIGHTS).is_file():
        raise RunError(f"{run.path} has no {sae_io.WEIGHTS} yet (training unfinished); analyse it after `workbench sae train` ends")
    sae = sae_io.load(run.path, device=device)
    mode = cfg.mode if cfg.mode != "auto" else ("threshold" if "threshold" in sae.modes else "batch")
    sae.set_mode(mode)
    model = model if model is not None else load_model(acts.model, device=device)
    d_sae = sae.cfg.d_sae
    text = TextSource(replace(acts, seed=acts.seed + HELD_OUT_SEED))
    pad = model.tokenizer.pad_token_id if model.tokenizer is not None else None
    n_ctx = int(model.cfg.n_ctx)

    routed = getattr(sae, "n_experts", None)
    load = torch.zeros(routed or 0, dtype=torch.float64)  # routed SAEs: tokens dispatched to each expert
    tok_chunks, sel_chunks, rows, cols, vals = [], [], [], [], []
    n_tok = n_seq = 0
    with torch.no_grad():
        while n_tok < cfg.tokens:
            tokens = encode(model, text.next(cfg.seq_batch))[:, :n_ctx]  # (batch, <= n_ctx)
            tokens = torch.nn.functional.pad(tokens, (0, n_ctx - tokens.shape[1]), value=0 if pad is None else pad)
            mask = select_positions(tokens, pad, acts.positions)  # (batch, n_ctx) positions the SAE reads
            x = capture(model, tokens.to(model.cfg.device), acts.hook, acts.head)[mask.to(model.cfg.device)]
            if x.shape[0] == 0:
                continue
            out = sae(x.float().to(sae.W_enc.device))
            on = out.values > 0
            if routed:
                load += out.route.allocation.col_counts().double().cpu()
            flat = torch.nonzero(mask.flatten()).squeeze(1) + n_seq * n_ctx  # global index of each selected token
            rows.append(flat[out.alloc.rows[on].cpu()].numpy())
            cols.append(out.alloc.cols[on].cpu().numpy())
            vals.append(out.values[on].detach().float().cpu().numpy())
            tok_chunks.append(tokens.numpy())
            sel_chunks.append(mask.numpy())
            n_tok += int(mask.sum())
            n_seq += tokens.shape[0]
            if progress:
                print(f"\ranalyze: {min(n_tok, cfg.tokens)}/{cfg.tokens} tokens", end="", flush=True)
    if progress:
        print()
    token_ids = np.concatenate(tok_chunks)  # (n_seq, n_ctx)
    selected = np.concatenate(sel_chunks)  # (n_seq, n_ctx)
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols).astype(np.int64), np.concatenate(vals)

    vocab = _Vocab(model)
    latents = _latent_table(rows, cols, vals, d_sae, n_tok, cfg.bins)
    lens, how = _logit_lens(sae, model, acts.hook, acts.head, cfg.n_logits, vocab)
    latents.update(lens or {})
    contexts = _contexts(rows, cols, vals, token_ids, selected, d_sae, cfg, vocab, pad)
    l0 = np.bincount(rows, minlength=n_seq * n_ctx).reshape(n_seq, n_ctx)  # per-token L0
    l0_sel = l0[selected]
    density = latents["density"]
    edges = np.arange(-7, 1, dtype=np.float64)
    logd = np.clip(np.log10(density[density > 0]), -7, 0)
    summary = {
        "version": VERSION, "model": acts.model, "hook": acts.hook, "head": acts.head, "mode": mode,
        "arch": sae.cfg.arch, "k": sae.cfg.k, "corpus": acts.corpus, "positions": acts.positions,
        "n_tokens": int(n_tok), "n_sequences": int(n_seq), "d_sae": d_sae, "top_n": cfg.top_n, "quantiles": cfg.quantiles,
        "per_quantile": cfg.per_quantile, "bins": cfg.bins,
        "l0_hist": np.bincount(l0_sel).tolist(), "l0_mean": float(l0_sel.mean()), "l0_std": float(l0_sel.std()),
        "l0_by_token": _l0_by_token(token_ids[selected], l0_sel, vocab),
        "l0_by_position": [float(l0[:, i][selected[:, i]].mean()) if selected[:, i].any() else None for i in range(n_ctx)],
        "logit_lens": how if lens else None, "logit_lens_missing": None if lens else how,
        "density_log10_edges": edges.tolist(), "density_log10_counts": np.histogram(logd, bins=edges)[0].tolist(),
        "dead": int((latents["n_active"] == 0).sum()),
    }
    if routed:  # which expert owns each latent, and the load each expert took
        m = d_sae // routed
        latents["expert"] = np.arange(d_sae) // m
        alive = np.bincount(latents["expert"][latents["n_active"] > 0], minlength=routed)
        summary["experts"] = {"n_experts": routed, "latents_per_expert": m, "gate": sae.cfg.gate,
                              "experts_per_token": sae.cfg.experts_per_token,
                              "load": (load / load.sum().clamp(min=1)).tolist(), "tokens_routed": load.tolist(),
                              "alive_latents": alive.tolist()}
    _write_parquet(run, "analysis_latents.parquet", latents)
    _write_parquet(run, "analysis_contexts.parquet", contexts)
    summary["time_s"] = time.perf_counter() - t0
    run.write_json("analysis.json", summary)  # written last: its presence means the tables are complete
    return summary


def text_activations(sae, model, hook: str, head: int | None, text: str) -> tuple[list[str], np.ndarray]:
    """The SAE's activations (forward's values, the scale analyze stores) at every token of one text after
    BOS, in the SAE's current mode: (token strings, (n_tokens, d_sae)). Longer texts are cut at the context."""
    from workbench.errors import ModelError
    from workbench.models import capture, encode

    if not text.strip():
        raise ModelError("the text is empty; type a sentence")
    tokens = encode(model, [text])[:, : int(model.cfg.n_ctx)]  # (1, T) with BOS
    if tokens.shape[1] < 2:
        raise ModelError("the text has no tokens after BOS; type a sentence")
    with torch.no_grad():
        x = capture(model, tokens.to(model.cfg.device), hook, head)[0, 1:]  # (T-1, d_in)
        out = sae(x.float().to(sae.W_enc.device))
    codes = out.codes().detach().float().cpu()  # (T-1, d_sae)
    return _Vocab(model)(tokens[0, 1:]), codes.numpy()


class _Vocab:
    """Token id -> display string (decoded one at a time, so BPE tokens keep their leading space)."""

    def __init__(self, model):
        self.tok = model.tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, ids) -> list[str]:
        ids = [int(i) for i in ids]
        new = sorted({i for i in ids if i not in self.cache})
        if new:
            strs = self.tok.batch_decode([[i] for i in new]) if self.tok is not None else [str(i) for i in new]
            self.cache.update(zip(new, strs))
        return [self.cache[i] for i in ids]

    def special_ids(self) -> list[int]:
        return list(getattr(self.tok, "all_special_ids", []) or [])


def _latent_table(rows, cols, vals, d_sae: int, n_tok: int, bins: int) -> dict:
    """Per-latent density, activation statistics and a histogram of its nonzero activations."""
    n_active = np.bincount(cols, minlength=d_sae)
    sums = np.bincount(cols, weights=vals, minlength=d_sae)
    max_act = np.zeros(d_sae, dtype=np.float64)
    np.maximum.at(max_act, cols, vals)
    b = np.minimum((vals / np.maximum(max_act[cols], 1e-30) * bins).astype(np.int64), bins - 1)
    hist = np.zeros((d_sae, bins), dtype=np.int64)
    np.add.at(hist, (cols, b), 1)
    return {"latent": np.arange(d_sae), "density": n_active / max(n_tok, 1), "n_active": n_active,
            "max_act": max_act, "mean_act": sums / np.maximum(n_active, 1), "hist": list(hist)}


_RESID = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def _logit_lens(sae, model, hook: str, head: int | None, n: int, vocab: _Vocab) -> tuple[dict | None, str]:
    """Promoted / suppressed tokens of each decoder direction through the unembedding, or (None, why not)."""
    m = re.match(r"blocks\.(\d+)\.(.+)$", hook)
    sub = m.group(2) if m else hook
    W_dec = sae.W_dec.detach().float().cpu()  # (d_sae, d_in)
    if sub in _RESID or hook in ("hook_embed", "hook_pos_embed", "ln_final.hook_normalized"):
        out_map, how = None, "W_dec @ W_U"
    elif m and sub == "attn.hook_z":
        W_O = model.blocks[int(m.group(1))].attn.W_O.detach().float().cpu()  # (n_heads, d_head, d_model)
        out_map = W_O[head] if head is not None else W_O.reshape(-1, W_O.shape[-1])
        how = f"W_dec @ W_O[{m.group(1)}{'' if head is None else f', {head}'}] @ W_U"
    elif m and sub == "mlp.hook_post":
        out_map, how = model.blocks[int(m.group(1))].mlp.W_out.detach().float().cpu(), f"W_dec @ W_out[{m.group(1)}] @ W_U"
    else:
        return None, f"no linear path from {hook} to the unembedding (residual-stream, attn.hook_z and mlp.hook_post hooks have one)"
    W_U = model.W_U.detach().float().cpu()  # (d_model, d_vocab)
    want = W_U.shape[0] if out_map is None else out_map.shape[0]
    if W_dec.shape[1] != want:
        return None, f"decoder width {W_dec.shape[1]} does not match the unembedding path {how} (width {want})"
    dirs = W_dec if out_map is None else W_dec @ out_map  # (d_sae, d_model)
    special = torch.tensor(vocab.special_ids(), dtype=torch.long)
    n = min(n, W_U.shape[1] - len(special))
    top_i, top_v, bot_i, bot_v = [], [], [], []
    for lo in range(0, dirs.shape[0], 2048):
        logits = dirs[lo:lo + 2048] @ W_U  # (chunk, d_vocab)
        if len(special):
            logits[:, special] = float("nan")
        t = torch.nan_to_num(logits, nan=-float("inf")).topk(n, dim=1)
        b = torch.nan_to_num(logits, nan=float("inf")).topk(n, dim=1, largest=False)
        top_i.append(t.indices), top_v.append(t.values), bot_i.append(b.indices), bot_v.append(b.values)
    top_i, bot_i = torch.cat(top_i).numpy(), torch.cat(bot_i).numpy()
    return {"promoted": [vocab(r) for r in top_i], "promoted_logit": list(torch.cat(top_v).numpy()),
            "suppressed": [vocab(r) for r in bot_i], "suppressed_logit": list(torch.cat(bot_v).numpy())}, how


def _samples(cols, vals, d_sae: int, cfg: AnalyzeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which activations to show: (index into cols/vals, rank within its latent, sample group; see the module doc)."""
    order = np.lexsort((-vals, cols))  # by latent, then strongest first
    c_sorted = cols[order]
    rank = np.arange(len(order)) - np.searchsorted(c_sorted, c_sorted)
    n = np.bincount(cols, minlength=d_sae)[c_sorted]  # activations of each one's latent
    top = rank < cfg.top_n
    idx, rk, group = [order[top]], [rank[top]], [np.zeros(int(top.sum()), dtype=np.int64)]
    if cfg.quantiles:
        frac = (np.arange(cfg.quantiles)[:, None] + (np.arange(cfg.per_quantile)[None, :] + 0.5) / cfg.per_quantile)
        frac = frac.ravel() / cfg.quantiles  # (quantiles * per_quantile,) rank fractions, evenly spaced in each quantile
        q_of = np.repeat(np.arange(1, cfg.quantiles + 1), cfg.per_quantile)
        for f, q in zip(frac, q_of):
            hit = (n > cfg.top_n) & (rank == np.floor(f * n).astype(np.int64))
            idx.append(order[hit]), rk.append(rank[hit]), group.append(np.full(int(hit.sum()), q))
    return np.concatenate(idx), np.concatenate(rk), np.concatenate(group)


def _contexts(rows, cols, vals, token_ids, selected, d_sae: int, cfg: AnalyzeConfig, vocab: _Vocab, pad) -> dict:
    """The shown activations of every latent (top and quantile samples), each with its context window and
    per-token activations."""
    n_seq, n_ctx = token_ids.shape
    keep, rk, sample = _samples(cols, vals, d_sae, cfg)
    lat, g, act = cols[keep], rows[keep], vals[keep]
    seq, pos = g // n_ctx, g % n_ctx
    length = (token_ids != pad).sum(1) if pad is not None else np.full(n_seq, n_ctx)
    lo = np.maximum(1, pos - cfg.before)  # BOS (position 0) is not shown
    hi = np.minimum(length[seq], pos + cfg.after + 1)
    wlen = hi - lo
    which = np.repeat(np.arange(len(lat)), wlen)  # window of each shown token
    p = lo[which] + np.arange(wlen.sum()) - np.repeat(np.cumsum(wlen) - wlen, wlen)
    keys = rows.astype(np.int64) * d_sae + cols
    ko = np.argsort(keys)
    ks, kv = keys[ko], vals[ko]
    want = (seq[which] * n_ctx + p) * d_sae + lat[which]
    idx = np.minimum(np.searchsorted(ks, want), len(ks) - 1)
    a = np.where(ks[idx] == want, kv[idx], 0.0) if len(ks) else np.zeros(len(want))
    strs = np.array(vocab(token_ids[seq[which], p]), dtype=object)
    cuts = np.cumsum(wlen)[:-1]
    return {"latent": lat, "sample": sample, "rank": rk, "act": act, "seq": seq, "pos": pos - lo,
            "tokens": [list(t) for t in np.split(strs, cuts)] if len(lat) else [],
            "acts": [list(x) for x in np.split(a.astype(np.float32), cuts)] if len(lat) else []}


def _l0_by_token(ids, l0, vocab: _Vocab, top: int = 200) -> list[dict]:
    """Mean L0 of the most frequent tokens (which tokens get more latents)."""
    uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    means = np.bincount(inv, weights=l0) / counts
    best = np.argsort(-counts, kind="stable")[:top]
    names = vocab(uniq[best])
    return [{"token": t, "count": int(counts[i]), "l0_mean": float(means[i])} for t, i in zip(names, best)]


def _write_parquet(run: Run, name: str, columns: dict) -> None:
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(columns).to_parquet(buf, index=False)
    atomic_write_bytes(run.path / name, buf.getvalue())
