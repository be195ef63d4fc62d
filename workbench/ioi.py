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


def make_batch(model: "HookedTransformer", prompts: Sequence[toyworld.IOIPrompt]) -> IOIBatch:
    prompts = list(prompts)
    tokens = encode(model, [p.text for p in prompts])
    pad = model.tokenizer.pad_token_id
    if pad is None:
        lengths = torch.tensor([len(model.to_tokens(p.text)[0]) for p in prompts])
    else:  # right padding: END = last non-pad token (position 0 counts even if BOS == pad)
        not_pad = tokens != pad
        not_pad[:, 0] = True
        lengths = not_pad.sum(1)
    io = torch.tensor([name_token_id(model, p.io) for p in prompts])
    s = torch.tensor([name_token_id(model, p.s) for p in prompts])
    dev = tokens.device
    return IOIBatch(prompts, tokens, (lengths - 1).to(dev), io.to(dev), s.to(dev))


def sample_prompts(n: int, names: Sequence[str], seed: int, template_ids: Sequence[int] | None = None,
                   balanced: bool = True) -> list[toyworld.IOIPrompt]:
    """n prompts over `names`; ABB/BAB alternate when balanced; templates cycle through template_ids."""
    rng = random.Random(seed)
    template_ids = list(template_ids) if template_ids is not None else list(range(len(toyworld.TEMPLATES)))
    out = []
    for i in range(n):
        pos = ("ABB", "BAB")[i % 2] if balanced else None
        out.append(toyworld.make_ioi_prompt(rng, list(names), pos=pos, template_id=template_ids[i % len(template_ids)]))
    return out


def end_logits(logits: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """(batch, pos, vocab) -> (batch, vocab) at each prompt's END position."""
    return logits[torch.arange(len(end), device=logits.device), end]


def logit_diff(logits: torch.Tensor, batch: IOIBatch) -> torch.Tensor:
    """LD = logit(IO) - logit(S) at END, per prompt: (batch,)."""
    e = end_logits(logits, batch.end)
    idx = torch.arange(len(batch), device=e.device)
    return e[idx, batch.io_id] - e[idx, batch.s_id]


@torch.no_grad()
def run_logit_diff(model: "HookedTransformer", batch: IOIBatch, fwd_hooks: list | None = None,
                   chunk: int = 512) -> torch.Tensor:
    """Per-prompt logit difference, optionally with hooks; chunked to bound memory."""
    out = []
    for i in range(0, len(batch), chunk):
        sl = slice(i, i + chunk)
        sub = IOIBatch(batch.prompts[sl], batch.tokens[sl], batch.end[sl], batch.io_id[sl], batch.s_id[sl])
        hooks = [(name, _bind(fn, sub)) for name, fn in (fwd_hooks or [])]
        logits = model.run_with_hooks(sub.tokens, fwd_hooks=hooks) if hooks else model(sub.tokens)
        out.append(logit_diff(logits, sub))
    return torch.cat(out)


def _bind(fn: Callable, batch: IOIBatch) -> Callable:
    """Hooks here take (act, hook, batch) so they know END positions; bind the batch."""
    return lambda act, hook: fn(act, hook, batch)


def summary(ld: torch.Tensor) -> dict:
    return {"accuracy": float((ld > 0).float().mean()), "logit_diff": float(ld.mean()), "n": len(ld)}
