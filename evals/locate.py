"""Location discovery: which heads and positions carry the IOI computation, for any model.

For GPT-2 the IOI circuit is known (Wang et al. 2022): name movers 9.6, 9.9, 10.0 write the answer
at END; S-inhibition heads 7.3, 7.9, 8.6, 8.10 move "which name is S" to END; induction and
duplicate-token heads act at S2. For any other TransformerLens model this module finds the
equivalents on eval prompts (N prompts, seeded):

- direct logit attribution (DLA) of each head's output at END onto ``W_U[IO] - W_U[S]`` (through
  the final LayerNorm's scale, as TransformerLens' ``apply_ln_to_stack``);
- attention from END to the IO, S1 and S2 tokens;
- mean ablation of each head's ``hook_z`` at END: fractional LD drop ``(LD - LD_abl) / LD``;
- activation patching: each head's ``hook_z`` at each position (IO, S1, S2, END), and q / k / v of the
  strongest heads, taken from the "ABC" counterfactual (S2 replaced by a third name, which removes
  the duplicated-name signal); effect = fractional LD drop;
- residual stream patching (``blocks.L.hook_resid_pre``) at each position, for context.

Heads are given roles: ``name-movers`` (high positive DLA at END, at least MIN_DLA_SHARE of the
clean LD, and a significant effect there: the heads that write the answer, whether by copying IO or by
suppressing the S2 name they attend to; ``attends`` records where END looks),
``negative-name-movers`` (strongly negative DLA), ``s-inhibition`` (matter at END through later
heads rather than directly), and per position ``s2-heads`` / ``io-heads`` / ``s1-heads``. Each
role x hook kind x position with a significant group effect (all members patched together) becomes
a named cross-section, e.g. ``name-movers-q`` = the name movers' queries at END.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

from evals.data import ATTRIBUTES, POSITIONS, make_splits, semantic_positions
from evals.locations import CrossSection, Location, Patcher, read_acts, run_patched
from evals.config import LocateConfig

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

MEMBER_EFFECT = 0.02  # a head's own counterfactual effect needed to join an attribute's carrier group
MIN_DLA_SHARE = 0.1  # a name mover's direct logit attribution is at least this fraction of the clean LD
PAPER_HEADS = {"name-movers": [(9, 6), (9, 9), (10, 0)], "s-inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)]}


def abc_counterfactual(prompts, pool, seed: int) -> list[str]:
    """The text of each prompt with its S2 token replaced by a third name C from `pool` (the "ABC" distribution);
    an ordinal prompt's "the former" / "the latter" becomes "the C" (same length, no pointer to A or B)."""
    rng = random.Random(seed)
    out = []
    for p in prompts:
        c = rng.choice([n for n in pool if n not in (p.io, p.s)])
        out.append(p.render(s2=c if p.s2_form == "name" else f"the {c}"))
    return out


def _frac_drop(ld_clean: float, ld: float) -> float:
    return (ld_clean - ld) / ld_clean if abs(ld_clean) > 1e-9 else 0.0


@torch.no_grad()
def head_stats(model: "HookedTransformer", batch, pos: dict[str, torch.Tensor]) -> list[dict]:
    """Per head: DLA at END (mean over prompts) and attention from END to IO / S1 / S2."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = lambda n: n.endswith("attn.hook_z") or n.endswith("attn.hook_pattern") or n == "ln_final.hook_scale"  # noqa: E731
    _, cache = model.run_with_cache(batch.tokens, names_filter=names)
    rows = torch.arange(len(batch), device=batch.tokens.device)
    direction = model.W_U[:, batch.io_id] - model.W_U[:, batch.s_id]  # (d_model, N)
    scale = cache["ln_final.hook_scale"][rows, batch.end]  # (N, 1)
    ln_w = getattr(model.ln_final, "w", None)
    center = model.cfg.normalization_type in ("LN", "LNPre")
    out = []
    for layer in range(L):
        z = cache[f"blocks.{layer}.attn.hook_z"][rows, batch.end]  # (N, H, d_head)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][rows, :, batch.end]  # (N, H, key_pos)
        for h in range(H):
            o = z[:, h] @ model.W_O[layer, h]  # (N, d_model)
            if center:
                o = o - o.mean(-1, keepdim=True)
            o = o / scale
            if ln_w is not None:
                o = o * ln_w
            dla = (o * direction.T).sum(-1)
            att = {k: float(pattern[rows, h, pos[k]].mean()) for k in ("IO", "S1", "S2")}
            out.append({"layer": layer, "head": h, "dla": float(dla.mean()),
                        "attn_io": att["IO"], "attn_s1": att["S1"], "attn_s2": att["S2"]})
    return out


def mean_ablate(acts: dict[Location, torch.Tensor]) -> dict[Location, torch.Tensor]:
    """Each location's activations replaced by their mean over prompts."""
    return {loc: a.mean(0, keepdim=True).expand_as(a) for loc, a in acts.items()}


@torch.no_grad()
def locate(model: "HookedTransformer", cfg: LocateConfig, progress=None) -> dict:
    """Run discovery; returns the content of ``locations.json`` (see :mod:`evals.report`)."""
    from workbench.ioi import make_batch, summary

    say = progress or (lambda msg: None)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    splits = make_splits(model, n_train=2, n_eval=cfg.n_prompts, seed=cfg.seed, s2=cfg.s2)
    prompts = splits.eval
    batch = make_batch(model, prompts)
    pos = semantic_positions(batch)
    corrupt = make_batch(model, prompts, texts=abc_counterfactual(prompts, splits.pools.counterfactual, cfg.seed + 3))
    clean = run_patched(model, batch, pos)
    run = Patcher(model, batch, pos)  # patched runs restart at the first patched block
    ld0 = clean.mean_ld
    say(f"clean: accuracy {float((clean.ld > 0).float().mean()):.3f}, mean LD {ld0:.3f} on {len(batch)} prompts")

    heads = head_stats(model, batch, pos)
    # mean ablation of each head at END and z patching at every position
    z_locs = [Location(f"blocks.{layer}.attn.hook_z", h, p) for layer in range(L) for h in range(H) for p in POSITIONS]
    z_clean = read_acts(model, batch, pos, z_locs)
    z_corrupt = read_acts(model, corrupt, pos, z_locs)
    effects: dict[Location, float] = {}
    for hs in heads:
        end = Location(f"blocks.{hs['layer']}.attn.hook_z", hs["head"], "END")
        hs["ablate_end"] = _frac_drop(ld0, run(mean_ablate({end: z_clean[end]})).mean_ld)
    for loc in z_locs:
        effects[loc] = _frac_drop(ld0, run({loc: z_corrupt[loc]}).mean_ld)
    for hs in heads:
        hs["patch_z"] = {p: effects[Location(f"blocks.{hs['layer']}.attn.hook_z", hs["head"], p)] for p in POSITIONS}
    say(f"patched hook_z of {L * H} heads at {len(POSITIONS)} positions")

    # which attribute each head carries: patch each attribute's counterfactual into one head
    cf = _Counterfactuals(model, splits, clean)
    z_cf = {a: read_acts(model, cf.batch[a], cf.pos[a], z_locs) for a in ATTRIBUTES}
    attr_effect: dict[Location, dict[str, float]] = {}
    for loc in z_locs:
        attr_effect[loc] = {a: cf.changed(run({loc: z_cf[a][loc]})) for a in ATTRIBUTES}
    for hs in heads:
        end = Location(f"blocks.{hs['layer']}.attn.hook_z", hs["head"], "END")
        hs["io_moved"] = cf.io_moved(run({end: z_cf["IO"][end]}))
        hs["changed"] = {p: attr_effect[Location(end.hook, end.head, p)] for p in POSITIONS}
    say("patched each head with the IO, S and Pos counterfactuals")

    # q/k/v of the strongest heads
    strength = {(hs["layer"], hs["head"]): max([abs(v) for v in hs["patch_z"].values()] + [abs(hs["ablate_end"])]) for hs in heads}
    top = sorted(strength, key=strength.get, reverse=True)[: cfg.qkv_heads]
    qkv_locs = [Location(f"blocks.{layer}.attn.hook_{k}", h, p) for layer, h in top for k in "qkv" for p in POSITIONS]
    qkv_corrupt = read_acts(model, corrupt, pos, qkv_locs)
    for loc in qkv_locs:
        effects[loc] = _frac_drop(ld0, run({loc: qkv_corrupt[loc]}).mean_ld)
    resid_locs = [Location(f"blocks.{layer}.hook_resid_pre", None, p) for layer in range(L) for p in POSITIONS]
    resid_corrupt = read_acts(model, corrupt, pos, resid_locs)
    for loc in resid_locs:
        effects[loc] = _frac_drop(ld0, run({loc: resid_corrupt[loc]}).mean_ld)
    say(f"patched q/k/v of {len(top)} heads and the residual stream")

    # roles (a head writes the answer only if its direct effect is a real share of LD: where the MLPs
    # write it, as in toy-ioi v2, the largest head DLA is ~2% of LD and no head is a name mover)
    dla_max = max([hs["dla"] for hs in heads] + [1e-9])
    dla_min = min([hs["dla"] for hs in heads] + [-1e-9])
    for hs in heads:
        end_effect = max(hs["ablate_end"], hs["patch_z"]["END"])
        hs["attends"] = max(("IO", "S1", "S2"), key=lambda k: hs[f"attn_{k.lower()}"])
        if hs["dla"] >= max(0.3 * dla_max, MIN_DLA_SHARE * abs(ld0)) and end_effect >= cfg.min_effect:
            hs["role"] = "name-movers"
        elif hs["dla"] <= 0.3 * dla_min and dla_min < -0.1 * dla_max and abs(end_effect) >= cfg.min_effect:
            hs["role"] = "negative-name-movers"
        elif end_effect >= cfg.min_effect:
            hs["role"] = "s-inhibition"
        else:
            hs["role"] = None
    role_of = {(hs["layer"], hs["head"]): hs["role"] for hs in heads}

    # candidate cross-sections: role x kind x position, members = significant locations
    groups: dict[tuple[str, str, str], list[Location]] = {}
    for loc, eff in effects.items():
        if loc.head is None or eff < cfg.min_effect:
            continue
        role = role_of.get((loc.layer, loc.head)) or (f"{loc.pos.lower()}-heads" if loc.pos != "END" else None)
        if role is None:
            continue
        groups.setdefault((role, _kind(loc), loc.pos), []).append(loc)
    # name movers' queries are the paper's first cross-section: keep them even if each head alone is small
    nm = [(layer, h) for (layer, h), r in role_of.items() if r == "name-movers"]
    for kind in ("q", "z"):
        if nm:
            groups.setdefault(("name-movers", kind, "END"), [Location(f"blocks.{layer}.attn.hook_{kind}", h, "END") for layer, h in nm])
    # for each attribute, the heads (hook_z) that carry it, at the position where one head matters most
    for a in ATTRIBUTES:
        best = max(z_locs, key=lambda loc: attr_effect[loc][a])
        if attr_effect[best][a] >= MEMBER_EFFECT:
            group = _carrier_group(run, cf, z_cf[a], [loc for loc in z_locs if loc.pos == best.pos], attr_effect, a)
            groups.setdefault((f"{a.lower()}-carriers", "z", best.pos), group)
    sections = []
    for (role, kind, p), locs in groups.items():
        locs = sorted(set(locs))
        acts_clean = read_acts(model, batch, pos, locs)
        acts_corrupt = read_acts(model, corrupt, pos, locs)
        patch = _frac_drop(ld0, run(acts_corrupt).mean_ld)
        ablate = _frac_drop(ld0, run(mean_ablate(acts_clean)).mean_ld)
        outs = {a: run(read_acts(model, cf.batch[a], cf.pos[a], locs)) for a in ATTRIBUTES}
        changed = {a: cf.changed(out) for a, out in outs.items()}
        if max(patch, ablate, *changed.values()) < cfg.min_effect:
            continue
        name = f"{role}-{kind}" + ("" if p == "END" or role == f"{p.lower()}-heads" else f"-{p.lower()}")
        sections.append(CrossSection(name, locs, _describe(role, locs),
                                     {"patch_abc": patch, "mean_ablation": ablate, "role": role, "target_changed": changed,
                                      "io_moved": cf.io_moved(outs["IO"])}))
    sections = _keep(sections, cfg.max_cross_sections)
    say(f"{len(sections)} cross-sections: {', '.join(c.name for c in sections)}")

    ranked = sorted(effects.items(), key=lambda kv: -abs(kv[1]))
    result = {
        "model": cfg.model, "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "clean": summary(clean.ld), "names_dropped": splits.pools.dropped,
        "heads": heads,
        "locations": [{"location": str(loc), "hook": loc.hook, "head": loc.head, "pos": loc.pos,
                       "kind": _kind(loc), "patch_abc": eff} for loc, eff in ranked],
        "cross_sections": [c.to_dict() for c in sections],
    }
    if getattr(model.cfg, "model_name", "") == "gpt2" and L == 12:
        result["paper_heads"] = {role: {f"{layer}.{h}": role_of.get((layer, h)) for layer, h in hs} for role, hs in PAPER_HEADS.items()}
    return result


class _Counterfactuals:
    """The eval prompts' IO / S / Pos counterfactual batches, and what a patched run did with them."""

    def __init__(self, model, splits, clean):
        from workbench.ioi import make_batch

        self.clean = clean
        self.batch = {a: make_batch(model, splits.counterfactual[a]) for a in ATTRIBUTES}
        self.pos = {a: semantic_positions(b) for a, b in self.batch.items()}

    def changed(self, out) -> float:
        """Fraction of prompts whose argmax token the patch changed (the harness's ``target_changed``)."""
        return float((out.top != self.clean.top).float().mean())

    def io_moved(self, out) -> float:
        """Fraction of prompts whose argmax became the counterfactual's new IO."""
        return float((out.top == self.batch["IO"].io_id.to(out.top.device)).float().mean())


def _carrier_group(run, cf, acts_cf, candidates, attr_effect, attr: str, max_size: int = 8) -> list:
    """Heads that carry ``attr`` together: greedy forward selection on the group's counterfactual effect.

    Redundant heads each change few predictions alone (the others still carry the attribute), so
    heads are added one at a time, each time the one whose addition changes the most predictions,
    while that adds at least MEMBER_EFFECT.
    """
    group: list = []
    effect = 0.0
    candidates = sorted(candidates, key=lambda loc: -attr_effect[loc][attr])
    while candidates and len(group) < max_size:
        scores = {loc: cf.changed(run({g: acts_cf[g] for g in group + [loc]})) for loc in candidates}
        best = max(scores, key=scores.get)
        if scores[best] - effect < MEMBER_EFFECT:
            break
        group.append(best)
        candidates.remove(best)
        effect = scores[best]
    return group


def _keep(sections: list[CrossSection], n: int) -> list[CrossSection]:
    """The n strongest cross-sections by LD effect, always including the best carrier of each attribute."""
    by_effect = sorted(sections, key=lambda c: -max(c.evidence["patch_abc"], c.evidence["mean_ablation"]))
    must = []
    for a in ATTRIBUTES:
        best = max(sections, key=lambda c: c.evidence["target_changed"][a], default=None)
        if best is not None and best not in must and best.evidence["target_changed"][a] > 0:
            must.append(best)
    rest = [c for c in by_effect if c not in must]
    return sorted(must + rest[: max(0, n - len(must))], key=by_effect.index)


def _kind(loc: Location) -> str:
    return loc.hook.rsplit("hook_", 1)[1]


def _describe(role: str, locs: list[Location]) -> str:
    heads = ", ".join(f"{loc.layer}.{loc.head}" for loc in locs)
    kind = _kind(locs[0])
    what = {"q": "queries", "k": "keys", "v": "values", "z": "outputs (z)"}.get(kind, kind)
    text = {"name-movers": "heads writing the answer (high DLA at END)",
            "negative-name-movers": "heads writing against the answer",
            "s-inhibition": "heads that move S information to END",
            "io-carriers": "heads whose output carries the IO name (its counterfactual moves the prediction)",
            "s-carriers": "heads whose output carries which name is S",
            "pos-carriers": "heads whose output carries the order of the names (Pos)",
            }.get(role, f"heads that matter at {locs[0].pos}")
    return f"{text}: {what} of {heads} at {locs[0].pos}"


def format_locate(res: dict) -> str:
    """A short human-readable report of a locate result."""
    lines = [f"model {res['model']}: clean accuracy {res['clean']['accuracy']:.3f}, mean LD {res['clean']['logit_diff']:.3f}"]
    if res.get("names_dropped"):
        lines.append(f"names dropped (not single tokens): {', '.join(res['names_dropped'])}")
    lines.append("head   DLA    attn IO/S1/S2     ablate@END  patch z IO/S1/S2/END     IO moved  role")
    for hs in sorted(res["heads"], key=lambda h: -abs(h["ablate_end"])):
        pz = hs["patch_z"]
        lines.append(f"{hs['layer']}.{hs['head']:<3} {hs['dla']:6.2f}  {hs['attn_io']:.2f}/{hs['attn_s1']:.2f}/{hs['attn_s2']:.2f}  "
                     f"{hs['ablate_end']:9.2f}   {pz['IO']:5.2f}/{pz['S1']:5.2f}/{pz['S2']:5.2f}/{pz['END']:5.2f}   "
                     f"{hs.get('io_moved', float('nan')):7.2f}  {hs['role'] or ''}")
    lines.append("top locations (ABC patching, fractional LD drop):")
    for r in res["locations"][:10]:
        lines.append(f"  {r['location']:<36} {r['patch_abc']:6.2f}")
    lines.append("cross-sections:")
    for c in res["cross_sections"]:
        ev = c["evidence"]
        tc = ev.get("target_changed", {})
        changed = " ".join(f"{a} {v:.2f}" for a, v in tc.items())
        lines.append(f"  {c['name']:<24} patch {ev['patch_abc']:.2f} ablate {ev['mean_ablation']:.2f}  changed by cf: {changed}  "
                     f"IO moved {ev.get('io_moved', float('nan')):.2f}  "
                     f"{', '.join(c['locations'])}")
    if "paper_heads" in res:
        lines.append(f"paper heads (gpt2): {res['paper_heads']}")
    return "\n".join(lines)
