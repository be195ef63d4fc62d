"""Train and evaluate the embedded toy model (``workbench model train`` / ``workbench model eval``).

Recipe (see docs/toy-model.md): a 2-layer pre-LN transformer trained from scratch on the toy world,
80% IOI prompts (training names, five templates) and 20% general text that copies every name.
IOI accuracy sits at chance for ~2k steps, then jumps; train past it and judge by held-out names
and the held-out template, not the loss.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench import ioi, toyworld
from workbench.config import ConfigError, ModelTrainConfig, to_dict
from workbench.models import make_model, save_model, build_tokenizer, toy_config_dict
from workbench.checkpoint import CheckpointStore
from workbench.runs import Run
from workbench.tracking import Tracker


class WordEncoder:
    """Fast whitespace word -> id encoding for training batches (same ids as the HF tokenizer)."""

    def __init__(self, vocab: list[str], n_ctx: int):
        self.ids = {w: i for i, w in enumerate(vocab)}
        self.bos, self.pad, self.n_ctx = self.ids["<bos>"], self.ids["<pad>"], n_ctx

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), self.n_ctx), self.pad, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.bos] + [self.ids[w] for w in t.split()]
            if len(ids) > self.n_ctx:
                raise ConfigError(f"n_ctx: sequence of {len(ids)} tokens does not fit; raise --n-ctx")
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def warmup_cosine(step: int, steps: int, lr: float, warmup_steps: int, min_lr_frac: float) -> float:
    """Learning rate at `step`: linear warm-up over warmup_steps, then cosine decay to min_lr_frac * lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def lr_at(step: int, cfg: ModelTrainConfig) -> float:
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac)


def eval_splits(model, n: int, seed: int = 1234) -> dict[str, ioi.IOIBatch]:
    """The three IOI checks: training names, held-out names, held-out template + held-out names."""
    train_t = list(range(len(toyworld.TEMPLATES)))
    return {
        "train_names": ioi.make_batch(model, ioi.sample_prompts(n, toyworld.IOI_NAMES, seed, train_t)),
        "heldout_names": ioi.make_batch(model, ioi.sample_prompts(n, toyworld.HELDOUT_NAMES, seed + 1, train_t)),
        "heldout_template": ioi.make_batch(model, ioi.sample_prompts(n, toyworld.HELDOUT_NAMES, seed + 2, [-1])),
    }


def end_attention_ablation(model, batch: ioi.IOIBatch) -> dict[str, float]:
    """Mean LD when each layer's attention output at END is mean-ablated (and all layers at once)."""
    def ablate(act, hook, b):
        idx = torch.arange(len(b), device=act.device)
        act = act.clone()
        act[idx, b.end] = act[idx, b.end].mean(0, keepdim=True)
        return act

    out = {}
    names = [f"blocks.{layer}.hook_attn_out" for layer in range(model.cfg.n_layers)]
    for layer, name in enumerate(names):
        out[f"ablate_attn_end_L{layer}"] = float(ioi.run_logit_diff(model, batch, [(name, ablate)]).mean())
    out["ablate_attn_end_all"] = float(ioi.run_logit_diff(model, batch, [(n, ablate) for n in names]).mean())
    return out


def evaluate(model, n: int = 1000, seed: int = 1234) -> dict:
    """IOI accuracy / LD on the three splits, plus END-attention ablation on held-out names."""
    model.eval()
    res = {}
    splits = eval_splits(model, n, seed)
    for name, batch in splits.items():
        res[name] = ioi.summary(ioi.run_logit_diff(model, batch))
    res["ablation"] = end_attention_ablation(model, splits["heldout_names"])
    return res


def train(cfg: ModelTrainConfig, run: Run, resume: bool = False, progress: bool = True) -> Path:
    """Train the toy model into run/model (and cfg.out); returns the model directory."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    tok_dir = build_tokenizer(run.path / "model" / "tokenizer").name_or_path
    arch = toy_config_dict(cfg.n_layers, cfg.d_model, cfg.n_heads, None, cfg.n_ctx, seed=cfg.seed)
    model = make_model(arch, tok_dir, cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    start = 0
    store = CheckpointStore(run.path / "checkpoints")
    if resume:
        run.clean_tmp()
    ck = store.load_latest(required=("model", "optimizer", "py_rng", "torch_rng")) if resume else None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        rng.setstate(ck["py_rng"])
        torch.set_rng_state(ck["torch_rng"])
        start = ck["step"]
        run.truncate_metrics(start)
    last_ckpt = ck["path"] if ck is not None else "none yet"
    enc = WordEncoder(toyworld.vocabulary(), cfg.n_ctx)
    pad = enc.pad
    tracker = Tracker(run, cfg.wandb_project, to_dict(cfg))
    splits = eval_splits(model, cfg.eval_prompts)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="toy model", disable=not progress)
    t0 = time.time()
    for step in bar:
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        tokens = enc([toyworld.training_text(rng, cfg.ioi_fraction) for _ in range(cfg.batch_size)]).to(cfg.device)
        logits = model(tokens)  # (batch, pos, vocab)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=pad)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; last good checkpoint: {last_ckpt}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            model.eval()
            row = {"loss": loss.item(), "lr": lr_at(step, cfg), "elapsed_s": time.time() - t0}
            for name, batch in splits.items():
                for k, v in ioi.summary(ioi.run_logit_diff(model, batch)).items():
                    if k != "n":
                        row[f"{name}/{k}"] = v
            tracker.log(row, done)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc_heldout=f"{row['heldout_names/accuracy']:.2f}",
                            ld_heldout=f"{row['heldout_names/logit_diff']:.2f}")
            last_ckpt = store.save(done, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                          "py_rng": rng.getstate(), "torch_rng": torch.get_rng_state()})
    tracker.finish()
    meta = {"recipe": to_dict(cfg), "train_seconds": time.time() - t0}
    save_model(model, arch, run.path / "model", meta)
    if cfg.out:
        save_model(model, arch, cfg.out, meta)
    run.set_status("done")
    return run.path / "model"
