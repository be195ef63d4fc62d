"""Locations, cross-sections, and the two model calls the harness needs: read and patch.

A :class:`Location` is a model component at a semantic position: a TransformerLens hook name used
verbatim (``blocks.1.attn.hook_q``), an optional head index (for hooks with a head axis; ``None``
means all heads concatenated, or a hook without heads such as ``blocks.1.hook_resid_pre``) and one
of the positions IO, S1, S2, END (:data:`evals.data.POSITIONS`). Written ``hook[head]@POS``, e.g.
``blocks.1.attn.hook_q[2]@END``.

A :class:`CrossSection` is a named group of locations edited together (the paper's "cross-section",
e.g. all name-mover queries at END). The activation of a batch at a location is ``(batch, d)``
with ``d = d_head`` for one head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import torch

from workbench.errors import ConfigError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from workbench.ioi import IOIBatch

_LOC = re.compile(r"^(?P<hook>[A-Za-z0-9_.]+)(\[(?P<head>\d+)\])?@(?P<pos>IO|S1|S2|END)$")


@dataclass(frozen=True, order=True)
class Location:
    hook: str
    head: int | None
    pos: str

    def __str__(self) -> str:
        head = f"[{self.head}]" if self.head is not None else ""
        return f"{self.hook}{head}@{self.pos}"

    @classmethod
    def parse(cls, text: str) -> "Location":
        m = _LOC.match(text.strip())
        if m is None:
            raise ConfigError(f"location: cannot parse {text!r}; write hook[head]@POS, e.g. blocks.1.attn.hook_q[2]@END "
                              "(POS one of IO, S1, S2, END; [head] optional)")
        head = m.group("head")
        return cls(m.group("hook"), int(head) if head is not None else None, m.group("pos"))

    @property
    def layer(self) -> int | None:
        m = re.match(r"blocks\.(\d+)\.", self.hook)
        return int(m.group(1)) if m else None


@dataclass
class CrossSection:
    """Locations edited together, with a name (used in file names and the app) and a description."""

    name: str
    locations: list[Location]
    description: str = ""
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "locations": [str(loc) for loc in self.locations],
                "description": self.description, "evidence": self.evidence}

    @classmethod
    def from_dict(cls, d: dict) -> "CrossSection":
        return cls(d["name"], [Location.parse(s) for s in d["locations"]], d.get("description", ""), d.get("evidence", {}))


def check_locations(model: "HookedTransformer", locations: Iterable[Location]) -> None:
    """Raise ModelError / ConfigError for an unknown hook or a head index out of range."""
    from workbench.models import check_hook

    for loc in locations:
        check_hook(model, loc.hook)
        if loc.head is not None and not 0 <= loc.head < model.cfg.n_heads:
            raise ConfigError(f"location {loc}: head {loc.head} out of range; the model has {model.cfg.n_heads} heads")


def _stop_layer(locations: Iterable[Location]) -> int | None:
    layers = [loc.layer for loc in locations]
    return None if any(layer is None for layer in layers) else max(layers) + 1


def _select(act: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, head: int | None) -> torch.Tensor:
    """act (batch, pos, d) or (batch, pos, head, d_head) -> (batch, d) at each row's position."""
    a = act[rows, pos]
    if a.ndim == 3:
        a = a[:, head] if head is not None else a.flatten(1)
    return a


def _chunks(n: int, chunk: int):
    for i in range(0, n, chunk):
        yield slice(i, min(n, i + chunk))


@torch.no_grad()
def read_acts(model: "HookedTransformer", batch: "IOIBatch", positions: dict[str, torch.Tensor],
              locations: Iterable[Location], chunk: int = 256) -> dict[Location, torch.Tensor]:
    """Activations at each location: {location: (batch, d)} (float32, on the model's device)."""
    locations = list(dict.fromkeys(locations))
    parts: dict[Location, list[torch.Tensor]] = {loc: [] for loc in locations}
    by_hook: dict[str, list[Location]] = {}
    for loc in locations:
        by_hook.setdefault(loc.hook, []).append(loc)
    for sl in _chunks(len(batch), chunk):
        rows = torch.arange(sl.stop - sl.start, device=batch.tokens.device)

        def grab(act, hook, locs=None):
            for loc in by_hook[hook.name]:
                parts[loc].append(_select(act, rows, positions[loc.pos][sl], loc.head).float().clone())
            return act

        model.run_with_hooks(batch.tokens[sl], fwd_hooks=[(h, grab) for h in by_hook],
                             stop_at_layer=_stop_layer(locations))
    return {loc: torch.cat(v) for loc, v in parts.items()}


@dataclass
class EndOutput:
    """What a (patched) run says at END: logit difference and the argmax token, per prompt."""

    ld: torch.Tensor  # (batch,) logit(IO) - logit(S)
    top: torch.Tensor  # (batch,) argmax over the full vocabulary

    @property
    def mean_ld(self) -> float:
        return float(self.ld.mean())


def _ln_affine(model: "HookedTransformer", x: torch.Tensor) -> torch.Tensor:
    """ln_final's elementwise affine (hook_normalized is taken before it; LNPre has none)."""
    w, b = getattr(model.ln_final, "w", None), getattr(model.ln_final, "b", None)
    x = x * w if w is not None else x
    return x + b if b is not None else x


@torch.no_grad()
def resid_pre(model: "HookedTransformer", batch: "IOIBatch", layer: int, chunk: int = 256) -> torch.Tensor:
    """(batch, pos, d_model) clean residual stream entering block `layer` (to restart runs there)."""
    out = []
    for sl in _chunks(len(batch), chunk):
        out.append(model(batch.tokens[sl], stop_at_layer=layer))
    return torch.cat(out)


def first_layer(locations: Iterable[Location]) -> int:
    """The earliest block a set of locations touches (0 if one is outside the blocks)."""
    layers = [loc.layer for loc in locations]
    return 0 if not layers or any(layer is None for layer in layers) else min(layers)


def _patcher(by_hook: dict[str, list[Location]], patches: dict[Location, torch.Tensor], pos_of, sl: slice, rows: torch.Tensor):
    """A forward hook writing patches[loc][sl] at each row's position pos_of(loc) (and head) of its hook."""

    def patch(act, hook):
        act = act.clone()
        for loc in by_hook[hook.name]:
            val = patches[loc][sl].to(act.dtype)
            p = pos_of(loc)
            if act.ndim == 4:
                if loc.head is not None:
                    act[rows, p, loc.head] = val
                else:
                    act[rows, p] = val.view(len(rows), act.shape[2], act.shape[3])
            else:
                act[rows, p] = val
        return act

    return patch


def _by_hook(patches) -> dict[str, list[Location]]:
    out: dict[str, list[Location]] = {}
    for loc in patches:
        out.setdefault(loc.hook, []).append(loc)
    return out


def _end_output(end: torch.Tensor, batch: "IOIBatch", sl: slice, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ld, argmax) of END logits (n, vocab)."""
    return end[rows, batch.io_id[sl]] - end[rows, batch.s_id[sl]], end.argmax(-1)


@torch.no_grad()
def run_patched(model: "HookedTransformer", batch: "IOIBatch", positions: dict[str, torch.Tensor],
                patches: dict[Location, torch.Tensor] | None = None, chunk: int = 256,
                resid: dict[int, torch.Tensor] | None = None) -> EndOutput:
    """Run the model with each location's activation replaced by ``patches[loc]`` (batch, d).

    Only the patched (row, position[, head]) entries change; everything else is the clean run.
    ``resid`` (optional): {layer: clean resid_pre (batch, pos, d_model)}; when it holds the first
    patched layer the run restarts there instead of recomputing the clean blocks below. Logits are
    computed at END only (the unembedding of every position costs a lot for GPT-2's vocabulary).
    """
    patches = patches or {}
    by_hook = _by_hook(patches)
    start = first_layer(patches) if patches else 0
    start = start if resid is not None and start in resid and start > 0 else None
    end_only = model.cfg.normalization_type is not None and getattr(model.cfg, "output_logits_soft_cap", -1) <= 0
    lds, tops = [], []
    for sl in _chunks(len(batch), chunk):
        rows = torch.arange(sl.stop - sl.start, device=batch.tokens.device)
        ends = batch.end[sl]
        store = {}

        def grab_final(act, hook):
            store["x"] = act[rows, ends]

        patch = _patcher(by_hook, patches, lambda loc: positions[loc.pos][sl], sl, rows)
        hooks = [(h, patch) for h in by_hook]
        if end_only:
            hooks.append(("ln_final.hook_normalized", grab_final))
        inp = resid[start][sl] if start is not None else batch.tokens[sl]
        logits = model.run_with_hooks(inp, fwd_hooks=hooks, start_at_layer=start,
                                      return_type=None if end_only else "logits")
        end = model.unembed(_ln_affine(model, store["x"])[:, None])[:, 0] if end_only else logits[rows, ends]  # (n, vocab)
        ld, top = _end_output(end, batch, sl, rows)
        lds.append(ld)
        tops.append(top)
    return EndOutput(torch.cat(lds).float(), torch.cat(tops))


def end_only_ok(model: "HookedTransformer", patches: dict[Location, torch.Tensor]) -> bool:
    """Whether patched runs can recompute END alone (``Patcher``'s fast path): every patch is at END (the last
    token read: nothing before it changes, in a causal model) and attention does not depend on absolute
    positions beyond the embedding (learned or sinusoidal positions; not rotary, ALiBi or shortformer)."""
    cfg = model.cfg
    return (bool(patches) and all(loc.pos == "END" and loc.layer is not None for loc in patches)
            and cfg.positional_embedding_type == "standard" and not getattr(cfg, "use_logn_attn", False)
            and not getattr(cfg, "use_attn_in", False) and not getattr(cfg, "use_split_qkv_input", False))


class _CleanStates:
    """One clean run's keys and values at every block (batch, pos, head, d_head) and residual stream entering
    every block at END (batch, d_model): what a run that recomputes only END needs from the positions before it."""

    def __init__(self, model: "HookedTransformer", batch: "IOIBatch", ends: torch.Tensor, chunk: int = 256):
        n_layers = model.cfg.n_layers
        self.k: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.v: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.resid_end: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        for sl in _chunks(len(batch), chunk):
            rows = torch.arange(sl.stop - sl.start, device=batch.tokens.device)

            def keep(act, hook):
                layer, name = int(hook.name.split(".")[1]), hook.name.rsplit(".", 1)[-1]
                if name == "hook_resid_pre":
                    self.resid_end[layer].append(act[rows, ends[sl]].clone())
                else:
                    (self.k if name == "hook_k" else self.v)[layer].append(act.clone())
                return act

            names = lambda h: h.endswith(("attn.hook_k", "attn.hook_v")) or (h.startswith("blocks.") and h.endswith("hook_resid_pre"))
            with torch.no_grad():
                model.run_with_hooks(batch.tokens[sl], fwd_hooks=[(names, keep)], return_type=None)
        self.chunk = chunk


@torch.no_grad()
def run_patched_at_end(model: "HookedTransformer", batch: "IOIBatch", patches: dict[Location, torch.Tensor],
                       ends: torch.Tensor, states: _CleanStates) -> EndOutput:
    """``run_patched`` for patches at END only, recomputing the END token alone from the first patched block.

    In a causal model a change at END touches no earlier position, so each block's attention at END reads
    the clean keys and values of the positions before END (``states``, masked beyond each prompt's END) and
    END's own, recomputed. Hooks fire on the one-token activations, so patches land at index 0. Equal to
    ``run_patched`` up to float rounding (tests/evals/test_locations.py); one token per prompt instead of all.
    """
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry

    by_hook = _by_hook(patches)
    start = first_layer(patches)
    lds, tops = [], []
    for i, sl in enumerate(_chunks(len(batch), states.chunk)):
        n = sl.stop - sl.start
        rows = torch.arange(n, device=batch.tokens.device)
        n_pos = states.k[start][i].shape[1]
        before = torch.arange(n_pos, device=ends.device)[None] < ends[sl, None]  # (n, pos): positions before END
        mask = torch.cat([before, torch.ones(n, 1, dtype=torch.bool, device=ends.device)], 1).long()  # (n, pos + 1)
        kv = [None] * model.cfg.n_layers
        for layer in range(start, model.cfg.n_layers):
            kv[layer] = Entry(states.k[layer][i], states.v[layer][i], frozen=True)
        zero = torch.zeros(n, dtype=torch.long, device=batch.tokens.device)
        patch = _patcher(by_hook, patches, lambda loc: zero, sl, rows)
        x = states.resid_end[start][i][:, None]  # (n, 1, d_model): the residual entering the first patched block
        logits = model.run_with_hooks(x, fwd_hooks=[(h, patch) for h in by_hook], start_at_layer=start,
                                      past_kv_cache=kv, attention_mask=mask)
        ld, top = _end_output(logits[:, 0], batch, sl, rows)
        lds.append(ld)
        tops.append(top)
    return EndOutput(torch.cat(lds).float(), torch.cat(tops))


class Patcher:
    """``run_patched`` on one batch, restarting each run at its first patched block.

    Caches the clean ``resid_pre`` of each block it restarts at (one (batch, pos, d_model) tensor per
    block), so a patch in block L costs the blocks from L on only. Patches at END only (most of the
    harness's) take the fast path: from block L on, END alone is recomputed against the clean keys and
    values of one clean run (``run_patched_at_end``). ``fast=False`` turns that off.
    """

    def __init__(self, model: "HookedTransformer", batch: "IOIBatch", positions: dict[str, torch.Tensor], fast: bool = True):
        self.model, self.batch, self.positions, self.fast = model, batch, positions, fast
        self.resid: dict[int, torch.Tensor] = {}
        self.states: _CleanStates | None = None

    def __call__(self, patches: dict[Location, torch.Tensor] | None = None) -> EndOutput:
        if self.fast and end_only_ok(self.model, patches or {}) and torch.equal(self.positions["END"], self.batch.end):
            if self.states is None:
                self.states = _CleanStates(self.model, self.batch, self.batch.end)
            return run_patched_at_end(self.model, self.batch, patches, self.batch.end, self.states)
        layer = first_layer(patches or {})
        if layer > 0 and layer not in self.resid:
            self.resid[layer] = resid_pre(self.model, self.batch, layer)
        return run_patched(self.model, self.batch, self.positions, patches, resid=self.resid)
