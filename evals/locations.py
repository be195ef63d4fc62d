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


def _by_hook(locations: Iterable[Location]) -> dict[str, list[Location]]:
    out: dict[str, list[Location]] = {}
    for loc in locations:
        out.setdefault(loc.hook, []).append(loc)
    return out


@torch.no_grad()
def read_acts(model: "HookedTransformer", batch: "IOIBatch", positions: dict[str, torch.Tensor],
              locations: Iterable[Location], chunk: int = 256) -> dict[Location, torch.Tensor]:
    """Activations at each location: {location: (batch, d)} (float32, on the model's device)."""
    locations = list(dict.fromkeys(locations))
    parts: dict[Location, list[torch.Tensor]] = {loc: [] for loc in locations}
    by_hook = _by_hook(locations)
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


def _patcher(by_hook: dict[str, list[Location]], patches: dict[Location, torch.Tensor], pos_of, sl: "slice | torch.Tensor",
             rows: torch.Tensor):
    """A forward hook writing patches[loc][sl] (sl: a slice or indices of the batch) at each row's position pos_of(loc)
    (and head) of its hook."""

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


def _unembed_end_only(model: "HookedTransformer") -> bool:
    """Whether END's logits can be taken by unembedding ln_final's output at END alone (no soft cap after it)."""
    return model.cfg.normalization_type is not None and getattr(model.cfg, "output_logits_soft_cap", -1) <= 0


def _end_output(end: torch.Tensor, batch: "IOIBatch", sl: "slice | torch.Tensor", rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    end_only = _unembed_end_only(model)
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


def fast_path_ok(model: "HookedTransformer", patches: dict[Location, torch.Tensor]) -> bool:
    """Whether patched runs can skip the positions before the first patched one (``Patcher``'s fast paths): every
    patch is inside a block, and attention does not depend on absolute positions beyond the embedding (learned or
    sinusoidal positions; not rotary, ALiBi or shortformer), so the clean keys and values of earlier positions
    can be reused as they are."""
    cfg = model.cfg
    return (bool(patches) and all(loc.layer is not None for loc in patches)
            and cfg.positional_embedding_type == "standard" and not getattr(cfg, "use_logn_attn", False)
            and not getattr(cfg, "use_attn_in", False) and not getattr(cfg, "use_split_qkv_input", False))


def end_only_ok(model: "HookedTransformer", patches: dict[Location, torch.Tensor]) -> bool:
    """Whether patched runs can recompute END alone: the fast path, with every patch at END (the last token read:
    in a causal model nothing before it changes)."""
    return fast_path_ok(model, patches) and all(loc.pos == "END" for loc in patches)


class _CleanStates:
    """One clean run's keys and values (batch, pos, head, d_head) and residual stream entering every block
    (batch, pos, d_model): what a run that recomputes only the positions from the first patched one on needs."""

    def __init__(self, model: "HookedTransformer", batch: "IOIBatch", chunk: int = 256):
        n_layers = model.cfg.n_layers
        parts: dict[str, list[list[torch.Tensor]]] = {n: [[] for _ in range(n_layers)] for n in ("hook_k", "hook_v", "hook_resid_pre")}

        def keep(act, hook):
            parts[hook.name.rsplit(".", 1)[-1]][int(hook.name.split(".")[1])].append(act.clone())
            return act

        names = lambda h: h.startswith("blocks.") and h.endswith(("attn.hook_k", "attn.hook_v", "hook_resid_pre"))
        for sl in _chunks(len(batch), chunk):
            with torch.no_grad():
                model.run_with_hooks(batch.tokens[sl], fwd_hooks=[(names, keep)], return_type=None)
        self.k, self.v, self.resid = ([torch.cat(x) for x in parts[n]] for n in ("hook_k", "hook_v", "hook_resid_pre"))
        self.chunk = chunk


def _kv(model: "HookedTransformer", states: _CleanStates, start: int, rows, upto=None) -> list:
    """Frozen key/value cache entries of blocks start.. for the given rows (positions < upto, or all)."""
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as Entry

    kv = [None] * model.cfg.n_layers
    for layer in range(start, model.cfg.n_layers):
        k, v = states.k[layer][rows], states.v[layer][rows]
        kv[layer] = Entry(k[:, :upto], v[:, :upto], frozen=True)
    return kv


@torch.no_grad()
def run_patched_at_end(model: "HookedTransformer", batch: "IOIBatch", patches: dict[Location, torch.Tensor],
                       states: _CleanStates) -> EndOutput:
    """``run_patched`` for patches at END only, recomputing the END token alone from the first patched block.

    In a causal model a change at END touches no earlier position, so each block's attention at END reads
    the clean keys and values of the positions before END (``states``, masked from each prompt's END on) and
    END's own, recomputed. Hooks fire on the one-token activations, so patches land at index 0. Equal to
    ``run_patched`` up to float rounding (tests/evals/test_locations.py); one token per prompt instead of all.
    """
    by_hook = _by_hook(patches)
    start = first_layer(patches)
    lds, tops = [], []
    for sl in _chunks(len(batch), states.chunk):
        n = sl.stop - sl.start
        rows = torch.arange(n, device=batch.tokens.device)
        ends = batch.end[sl]
        n_pos = states.k[start].shape[1]
        before = torch.arange(n_pos, device=ends.device)[None] < ends[:, None]  # (n, pos): positions before END
        mask = torch.cat([before, torch.ones(n, 1, dtype=torch.bool, device=ends.device)], 1).long()  # (n, pos + 1)
        zero = torch.zeros(n, dtype=torch.long, device=batch.tokens.device)
        patch = _patcher(by_hook, patches, lambda loc: zero, sl, rows)
        x = states.resid[start][sl][rows, ends][:, None]  # (n, 1, d_model): the residual entering the first patched block
        logits = model.run_with_hooks(x, fwd_hooks=[(h, patch) for h in by_hook], start_at_layer=start,
                                      past_kv_cache=_kv(model, states, start, sl), attention_mask=mask)
        ld, top = _end_output(logits[:, 0], batch, sl, rows)
        lds.append(ld)
        tops.append(top)
    return EndOutput(torch.cat(lds).float(), torch.cat(tops))


@torch.no_grad()
def run_patched_suffix(model: "HookedTransformer", batch: "IOIBatch", positions: dict[str, torch.Tensor],
                       patches: dict[Location, torch.Tensor], states: _CleanStates) -> EndOutput:
    """``run_patched`` recomputing, from the first patched block, only the positions from the first patched one on.

    Prompts are grouped by their first patched position (sorted, in chunks of at most 64); a chunk recomputes
    from its smallest one, p0, to its last END, reading the clean keys and values of the positions before p0
    (``states``), which no patch changes in a causal model (nor does anything after END reach END). Equal to
    ``run_patched`` up to float rounding (tests/evals/test_locations.py).
    """
    by_hook = _by_hook(patches)
    start = first_layer(patches)
    end_only = _unembed_end_only(model)
    first = torch.stack([positions[loc.pos] for loc in patches]).min(0).values  # (batch,)
    order = torch.argsort(first, stable=True)
    ld_out = torch.empty(len(batch), device=batch.tokens.device)
    top_out = torch.empty(len(batch), dtype=torch.long, device=batch.tokens.device)
    for sl in _chunks(len(batch), min(states.chunk, 64)):  # small groups: p0 close to each prompt's first patch
        idx = order[sl]
        n, p0, p1 = len(idx), int(first[idx].min()), int(batch.end[idx].max()) + 1  # positions p0..p1-1 are recomputed
        rows = torch.arange(n, device=batch.tokens.device)
        ends = batch.end[idx] - p0
        store = {}

        def grab_final(act, hook):
            store["x"] = act[rows, ends]

        patch = _patcher(by_hook, patches, lambda loc: positions[loc.pos][idx] - p0, idx, rows)
        hooks = [(h, patch) for h in by_hook] + ([("ln_final.hook_normalized", grab_final)] if end_only else [])
        logits = model.run_with_hooks(states.resid[start][idx, p0:p1], fwd_hooks=hooks, start_at_layer=start,
                                      past_kv_cache=_kv(model, states, start, idx, p0) if p0 else None,
                                      return_type=None if end_only else "logits")
        end = model.unembed(_ln_affine(model, store["x"])[:, None])[:, 0] if end_only else logits[rows, ends]  # (n, vocab)
        ld_out[idx], top_out[idx] = _end_output(end, batch, idx, rows)
    return EndOutput(ld_out.float(), top_out)


class Patcher:
    """``run_patched`` on one batch, restarting each run at its first patched block.

    Caches the clean ``resid_pre`` of each block it restarts at (one (batch, pos, d_model) tensor per
    block), so a patch in block L costs the blocks from L on only. With the fast paths (``fast``, the default,
    where ``fast_path_ok``) one clean run's keys, values and residuals are kept instead, and only the
    positions a patch can change are recomputed: END alone when every patch is at END
    (``run_patched_at_end``), else the positions from the first patched one on (``run_patched_suffix``).
    """

    def __init__(self, model: "HookedTransformer", batch: "IOIBatch", positions: dict[str, torch.Tensor], fast: bool = True):
        self.model, self.batch, self.positions, self.fast = model, batch, positions, fast
        self.resid: dict[int, torch.Tensor] = {}
        self.states: _CleanStates | None = None

    def __call__(self, patches: dict[Location, torch.Tensor] | None = None) -> EndOutput:
        if self.fast and fast_path_ok(self.model, patches or {}):
            if self.states is None:
                self.states = _CleanStates(self.model, self.batch)
            if end_only_ok(self.model, patches) and torch.equal(self.positions["END"], self.batch.end):
                return run_patched_at_end(self.model, self.batch, patches, self.states)
            return run_patched_suffix(self.model, self.batch, self.positions, patches, self.states)
        layer = first_layer(patches or {})
        if layer > 0 and layer not in self.resid:
            self.resid[layer] = resid_pre(self.model, self.batch, layer)
        return run_patched(self.model, self.batch, self.positions, patches, resid=self.resid)
