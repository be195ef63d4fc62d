"""IOI prompts as model inputs, and the logit-difference metric.

An :class:`IOIBatch` holds right-padded tokens plus, per prompt, the END position (the last prompt
token, where the answer is predicted) and the token ids of IO and S. Works with any tokenizer whose
names are single tokens (the toy one and GPT-2's, with a leading space).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from workbench import toyworld
from workbench.models import encode

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class IOIBatch:
    prompts: list[toyworld.IOIPrompt]
    tokens: torch.Tensor  # (batch, pos)
    end: torch.Tensor  # (batch,) index of the last prompt token
    io_id: torch.Tensor  # (batch,)
    s_id: torch.Tensor  # (batch,)
    s2_id: torch.Tensor  # (batch,) the token that says S2: s_id, or "former" / "latter" (grammar.S2_FORMS)

    def __len__(self) -> int:
        return len(self.prompts)


def name_token_id(model: "HookedTransformer", name: str) -> int:
    """Token id of a name as the answer (GPT-2 style tokenizers need the leading space)."""
    tok = model.tokenizer
    ids = tok.encode(name, add_special_tokens=False)
    if getattr(model.cfg, "model_name", "") != "toy-ioi":
        ids = tok.encode(" " + name, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"name {name!r} is not a single token for this tokenizer ({len(ids)} tokens); drop it from the pool")
    return ids[0]


def make_batch(model: "HookedTransformer", prompts: Sequence[toyworld.IOIPrompt],
               texts: Sequence[str] | None = None) -> IOIBatch:
    """Tokens and END / IO / S ids of the prompts; ``texts`` overrides their text (e.g. ABC prompts)."""
    prompts = list(prompts)
    tokens = encode(model, list(texts) if texts is not None else [p.text for p in prompts])
    pad = model.tokenizer.pad_token_id
    if pad is None:
        lengths = torch.tensor([len(model.to_tokens(t)[0]) for t in (texts or [p.text for p in prompts])])
    else:  # right padding: END = last non-pad token (position 0 counts even if BOS == pad)
        not_pad = tokens != pad
        not_pad[:, 0] = True
        lengths = not_pad.sum(1)
    ids: dict[str, int] = {}  # a name's id, tokenized once per batch rather than once per prompt

    def tid(name: str) -> int:
        if name not in ids:
            ids[name] = name_token_id(model, name)
        return ids[name]

    io = torch.tensor([tid(p.io) for p in prompts])
    s_ids = [tid(p.s) for p in prompts]
    s2 = torch.tensor([sid if p.s2_form == "name" else tid(p.s2_text().split()[-1])  # former / latter
                       for p, sid in zip(prompts, s_ids)])
    s = torch.tensor(s_ids)
    dev = tokens.device
    return IOIBatch(prompts, tokens, (lengths - 1).to(dev), io.to(dev), s.to(dev), s2.to(dev))


def sample_prompts(n: int, names: Sequence[str], seed: int, split: str = "train",
                   balanced: bool = True, family: str | None = None) -> list[toyworld.IOIPrompt]:
    """n prompts of a grammar split over `names`; ABB/BAB alternate when balanced (seeded)."""
    rng = random.Random(seed)
    return [toyworld.make_ioi_prompt(rng, list(names), split, pos=("ABB", "BAB")[i % 2] if balanced else None, family=family)
            for i in range(n)]


def end_logits(logits: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """(batch, pos, vocab) -> (batch, vocab) at each prompt's END position."""
    return logits[torch.arange(len(end), device=logits.device), end]


def logit_diff(logits: torch.Tensor, batch: IOIBatch) -> torch.Tensor:
    """LD = logit(IO) - logit(S) at END, per prompt: (batch,)."""
    e = end_logits(logits, batch.end)
    idx = torch.arange(len(batch), device=e.device)
    return e[idx, batch.io_id] - e[idx, batch.s_id]


@torch.no_grad()
def run_end_logits(model: "HookedTransformer", batch: IOIBatch, fwd_hooks: list | None = None,
                   chunk: int = 512) -> torch.Tensor:
    """(batch, vocab) logits at END, optionally with hooks; chunked to bound memory."""
    out = []
    for i in range(0, len(batch), chunk):
        sl = slice(i, i + chunk)
        sub = IOIBatch(batch.prompts[sl], batch.tokens[sl], batch.end[sl], batch.io_id[sl], batch.s_id[sl],
                       batch.s2_id[sl])
        hooks = [(name, _bind(fn, sub)) for name, fn in (fwd_hooks or [])]
        logits = model.run_with_hooks(sub.tokens, fwd_hooks=hooks) if hooks else model(sub.tokens)
        out.append(end_logits(logits, sub.end))
    return torch.cat(out)


def run_logit_diff(model: "HookedTransformer", batch: IOIBatch, fwd_hooks: list | None = None,
                   chunk: int = 512) -> torch.Tensor:
    """Per-prompt logit difference (batch,), optionally with hooks."""
    e = run_end_logits(model, batch, fwd_hooks, chunk)
    idx = torch.arange(len(batch), device=e.device)
    return e[idx, batch.io_id] - e[idx, batch.s_id]


def _bind(fn: Callable, batch: IOIBatch) -> Callable:
    """Hooks here take (act, hook, batch) so they know END positions; bind the batch."""
    return lambda act, hook: fn(act, hook, batch)


def summary(ld: torch.Tensor, batch: IOIBatch | None = None, top: torch.Tensor | None = None) -> dict:
    """Accuracy (LD > 0) and mean LD; with the batch, accuracy per Pos; with the argmax tokens, top-1.

    top-1 accuracy counts a prompt when IO is the argmax over the whole vocabulary (the paper's
    accuracy); LD > 0 only compares IO with S.
    """
    out = {"accuracy": float((ld > 0).float().mean()), "logit_diff": float(ld.mean()), "n": len(ld)}
    if batch is not None:
        for pos in ("ABB", "BAB"):
            m = torch.tensor([p.pos == pos for p in batch.prompts], device=ld.device)
            if m.any():
                out[f"accuracy_{pos}"] = float((ld[m] > 0).float().mean())
        if top is not None:
            out["top1"] = float((top == batch.io_id.to(top.device)).float().mean())
    return out


def evaluate(model: "HookedTransformer", batch: IOIBatch, fwd_hooks: list | None = None) -> dict:
    """:func:`summary` of one batch with everything: accuracy, per-Pos accuracy, LD, top-1."""
    e = run_end_logits(model, batch, fwd_hooks)
    idx = torch.arange(len(batch), device=e.device)
    return summary(e[idx, batch.io_id] - e[idx, batch.s_id], batch, e.argmax(-1))


def score_prompt(model: "HookedTransformer", text: str, io: str | None = None, s: str | None = None,
                 top: int = 5) -> dict:
    """Score one IOI prompt the user wrote: LD, whether IO is the top-1 token, the top predictions.

    IO and S are found in the text when not given: the toy world's names, one of them once (IO) and
    one twice (S). A prompt that cannot be scored raises ValueError saying why.
    """
    from workbench.errors import ModelError

    words = text.split()
    batch_tokens = encode(model, [text])  # unknown words fail here, with the closest vocabulary entries
    if batch_tokens.shape[1] > model.cfg.n_ctx:
        raise ModelError(f"the prompt has {batch_tokens.shape[1]} tokens but the model's context is {model.cfg.n_ctx}; shorten it")
    if io is None or s is None:
        names = [w for w in words if w in set(toyworld.NAMES)]
        counts = {n: names.count(n) for n in dict.fromkeys(names)}
        once = [n for n, c in counts.items() if c == 1]
        twice = [n for n, c in counts.items() if c == 2]
        if len(counts) != 2 or len(once) != 1 or len(twice) != 1:
            raise ModelError(f"cannot tell IO and S apart in {text!r}: an IOI prompt names two people, IO once and S "
                             f"twice (found {counts or 'no names'}); pass --io and --s")
        io, s = io or once[0], s or twice[0]
    p = toyworld.IOIPrompt(frame=text.replace("{", "{{").replace("}", "}}"), io=io, s=s, pos="ABB", family="user")
    batch = make_batch(model, [p])
    e = run_end_logits(model, batch)[0]  # (vocab,)
    probs = e.softmax(-1)
    best = probs.topk(top)
    return {"prompt": text, "io": io, "s": s, "logit_diff": float(e[batch.io_id[0]] - e[batch.s_id[0]]),
            "top1": bool(int(e.argmax()) == int(batch.io_id[0])), "p_io": float(probs[batch.io_id[0]]),
            "top": [(model.tokenizer.convert_ids_to_tokens(int(i)), float(v)) for v, i in zip(best.values, best.indices)]}
