"""Train and evaluate the embedded toy model (``workbench model train`` / ``workbench model eval``).

Recipe (see docs/toy-model.md): a pre-LN transformer trained from scratch on the toy world, IOI
prompts from the compositional grammar (training names, training productions, S2 at most at
``grammar.TRAIN_MAX_S2``) and general text that uses every name. IOI accuracy sits at chance for a
while, then jumps; train past it and judge by the held-out splits, not the loss.
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
from workbench.fast_lm import FastLM
from workbench.models import make_model, save_model, build_tokenizer, toy_config_dict
from workbench.checkpoint import CheckpointStore
from workbench.runs import Run
from workbench.tracking import Tracker


class WordEncoder:
    """Fast whitespace word -> id encoding for training batches (same ids as the HF tokenizer).

    Sequences are right-padded to the longest one in the call; with ``truncate`` a sequence longer
    than the context keeps its first n_ctx tokens, otherwise it is an error.
    """

    def __init__(self, vocab: list[str], n_ctx: int, truncate: bool = False):
        self.ids = {w: i for i, w in enumerate(vocab)}
        self.bos, self.pad, self.n_ctx, self.truncate = self.ids["<bos>"], self.ids["<pad>"], n_ctx, truncate

    def __call__(self, texts: list[str]) -> torch.Tensor:
        seqs = [[self.bos] + [self.ids[w] for w in t.split()] for t in texts]
        if not self.truncate and max(map(len, seqs)) > self.n_ctx:
            raise ConfigError(f"n_ctx: sequence of {max(map(len, seqs))} tokens does not fit; raise --n-ctx")
        seqs = [s[: self.n_ctx] for s in seqs]
        out = torch.full((len(texts), max(map(len, seqs))), self.pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s)
        return out


def warmup_cosine(step: int, steps: int, lr: float, warmup_steps: int, min_lr_frac: float) -> float:
    """Learning rate at `step`: linear warm-up over warmup_steps, then cosine decay to min_lr_frac * lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def lr_at(step: int, cfg: ModelTrainConfig) -> float:
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac)


SPLITS = {  # eval split -> (grammar split, name pool)
    "train_names": ("train", "IOI_NAMES"),
    "heldout_names": ("train", "HELDOUT_NAMES"),
    "heldout_productions": ("productions", "HELDOUT_NAMES"),
    "heldout_long": ("long", "HELDOUT_NAMES"),
}


def eval_splits(model, n: int, seed: int = 1234, family: str | None = None) -> dict[str, ioi.IOIBatch]:
    """The IOI checks: training names, and three held-out splits, all with held-out names.

    heldout_names: training productions and lengths; heldout_productions: every prompt uses a
    production never seen in training; heldout_long: S2 beyond the training positions.
    """
    out = {}
    for i, (name, (split, pool)) in enumerate(SPLITS.items()):
        if family is not None and family not in split_families(split):
            continue
        prompts = ioi.sample_prompts(n, getattr(toyworld, pool), seed + i, split, family=family)
        out[name] = ioi.make_batch(model, prompts)
    return out


def split_families(split: str) -> tuple[str, ...]:
    """Frame families a grammar split can produce (all of them, for every split)."""
    from workbench import grammar

    return grammar.FAMILIES


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


def evaluate(model, n: int = 1000, seed: int = 1234, n_family: int | None = None) -> dict:
    """IOI metrics on every split, on every frame family of every split, plus END-attention ablation.

    Per split and family: accuracy (LD > 0) overall and for ABB / BAB, mean LD, and top-1 (IO is the
    argmax over the whole vocabulary).
    """
    from workbench import grammar

    model.eval()
    res = {}
    splits = eval_splits(model, n, seed)
    for name, batch in splits.items():
        res[name] = ioi.evaluate(model, batch)
    n_family = n_family or max(100, n // 4)
    res["families"] = {}
    for family in grammar.FAMILIES:
        for name, batch in eval_splits(model, n_family, seed + 100, family).items():
            res["families"].setdefault(family, {})[name] = ioi.evaluate(model, batch)
    res["ablation"] = end_attention_ablation(model, splits["heldout_names"])
    return res


def train(cfg: ModelTrainConfig, run: Run, resume: bool = False, progress: bool = True) -> Path:
    """Train the toy model into run/model (and cfg.out); returns the model directory."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    tok_dir = build_tokenizer(run.path / "model" / "tokenizer").name_or_path
    arch = toy_config_dict(cfg.n_layers, cfg.d_model, cfg.n_heads, None, cfg.n_ctx, seed=cfg.seed)
    model = make_model(arch, tok_dir, cfg.device)  # initialised by TransformerLens from the seed
    net = FastLM.like(model)  # trained in its place: same weights, a faster forward (workbench.fast_lm)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    start = 0
    store = CheckpointStore(run.path / "checkpoints")
    if resume:
        run.clean_tmp()
    ck = store.load_latest(required=("model", "optimizer", "py_rng", "torch_rng")) if resume else None
    if ck is not None:
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        rng.setstate(ck["py_rng"])
        torch.set_rng_state(ck["torch_rng"])
        start = ck["step"]
        run.truncate_metrics(start)
    last_ckpt = ck["path"] if ck is not None else "none yet"
    enc = WordEncoder(toyworld.vocabulary(), cfg.n_ctx, truncate=True)
    pad = enc.pad
    tracker = Tracker(run, cfg.wandb_project, to_dict(cfg), tags=cfg.wandb_tags, group=cfg.wandb_group)
    splits = eval_splits(model, cfg.eval_prompts)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="toy model", disable=not progress)
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        texts = sorted((toyworld.training_text(rng, cfg.ioi_fraction, cfg.ordinal_fraction, cfg.pronoun_fraction) for _ in range(cfg.batch_size)), key=len)
        n_tokens = sum(min(len(t.split()), cfg.n_ctx - 1) for t in texts)  # predicted tokens in the step
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for i in range(0, len(texts), cfg.micro_batch):
            tokens = enc(texts[i: i + cfg.micro_batch]).to(cfg.device)  # (micro, pos), padded to its longest
            logits = net(tokens)  # (micro, pos, vocab)
            part = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=pad,
                                   reduction="sum") / n_tokens
            part.backward()
            loss += part.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}; last good checkpoint: {last_ckpt}")
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            model.load_state_dict(net.state_dict(), strict=False)
            model.eval()
            row = {"loss": loss, "lr": lr_at(step, cfg), "elapsed_s": time.time() - t0}
            for name, batch in splits.items():
                for k, v in ioi.evaluate(model, batch).items():
                    if k != "n":
                        row[f"{name}/{k}"] = v
            tracker.log(row, done, sections={k: "eval" for k in row if "/" in k})  # the IOI splits are evaluations
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc_heldout=f"{row['heldout_names/accuracy']:.2f}",
                            ld_heldout=f"{row['heldout_names/logit_diff']:.2f}")
            last_ckpt = store.save(done, {"model": net.state_dict(), "optimizer": opt.state_dict(),
                                          "py_rng": rng.getstate(), "torch_rng": torch.get_rng_state()})
    model.load_state_dict(net.state_dict(), strict=False)
    meta = {"recipe": to_dict(cfg), "train_seconds": time.time() - t0}
    save_model(model, arch, run.path / "model", meta)
    tracker.artifact(f"{run.name}-model", sorted((run.path / "model").iterdir()), metadata={"steps": cfg.steps})
    tracker.finish()
    if cfg.out:
        save_model(model, arch, cfg.out, meta)
    run.set_status("done")
    return run.path / "model"
