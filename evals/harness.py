"""``workbench ioi eval``: supervised dictionaries and SAEs on every cross-section, on three axes.

For each cross-section (from ``workbench ioi locate`` or given with ``--location``) and each
dictionary family (the supervised ``mean`` and ``mse`` dictionaries, fitted per location on the
train prompts, and each ``--sae`` family that covers all its locations):

1. approximation (:mod:`evals.approximation`): sufficiency, necessity, LD recovered, FVU, L0;
2. control (:mod:`evals.control`): counterfactual patching targets for IO, S and Pos; accuracy and
   magnitude of the supervised edit, of greedy SAE edits and of F1-guided SAE edits for each k;
3. interpretability (:mod:`evals.interpretability`): per feature and attribute value
   precision / recall / F1 at each τ, coverage, over-splitting and occlusion.

The results are plain rows (dicts) that :mod:`evals.report` writes into the run directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from evals import approximation as ap
from evals import control as ct
from evals import interpretability as it
from evals.config import EvalConfig
from evals.data import ATTRIBUTES, IOISplits, make_splits, semantic_positions
from evals.dictionary import SAEFamily, SupervisedDictionary, attribute_values, bias_of, fit_mean, fit_mse
from evals.locations import CrossSection, Location, Patcher, read_acts, run_patched
from workbench.config import require

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass
class Family:
    """A dictionary per location under one label: the supervised ones or an SAE family."""

    label: str
    kind: str  # "supervised" or "sae"
    arch: str
    dicts: dict[Location, object]
    meta: dict = field(default_factory=dict)


@dataclass
class Results:
    splits: dict
    clean: dict
    cross_sections: list[dict]
    approximation: list[dict] = field(default_factory=list)
    control: list[dict] = field(default_factory=list)
    interpretability: list[dict] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    families: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


class _Data:
    """Batches, positions and activations shared by every cross-section and dictionary."""

    def __init__(self, model, splits: IOISplits, locations: Sequence[Location]):
        from workbench.ioi import make_batch

        self.model, self.splits = model, splits
        self.train_b = make_batch(model, splits.train)
        self.eval_b = make_batch(model, splits.eval)
        self.cf_b = {a: make_batch(model, splits.counterfactual[a]) for a in ATTRIBUTES}
        self.train_pos = semantic_positions(self.train_b)
        self.eval_pos = semantic_positions(self.eval_b)
        self.cf_pos = {a: semantic_positions(b) for a, b in self.cf_b.items()}
        self.train = read_acts(model, self.train_b, self.train_pos, locations)
        self.eval = read_acts(model, self.eval_b, self.eval_pos, locations)
        self.cf = {a: read_acts(model, self.cf_b[a], self.cf_pos[a], locations) for a in ATTRIBUTES}
        self.clean = run_patched(model, self.eval_b, self.eval_pos)
        self.values = attribute_values(splits.train)
        self.patcher = Patcher(model, self.eval_b, self.eval_pos)

    def run(self, patches: dict[Location, torch.Tensor]):
        """The eval prompts with `patches`, restarting at the first patched block (clean resid cached)."""
        return self.patcher(patches)

    def value_index(self, prompts, attr: str) -> torch.Tensor:
        from evals.data import labels

        return labels(prompts, {attr: self.values[attr]})[attr].to(self.model.cfg.device)


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def evaluate(model: "HookedTransformer", cfg: EvalConfig, sections: Sequence[CrossSection],
             sae_families: Sequence[SAEFamily] = (), progress: Callable[[str], None] | None = None) -> Results:
    """Run all three axes on every cross-section; see the module docstring."""
    import time

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    splits = make_splits(model, cfg.n_train, cfg.n_eval, cfg.seed)
    require(cfg.n_train >= len(splits.pools.kept), "n_train", f"{cfg.n_train} train prompts cannot show each of the "
            f"{len(splits.pools.kept)} names as IO and as S", f"pass --n-train >= {len(splits.pools.kept)}")
    locations = sorted({loc for cs in sections for loc in cs.locations})
    data = _Data(model, splits, locations)
    from workbench.ioi import summary

    res = Results(splits.describe(), summary(data.clean.ld), [cs.to_dict() for cs in sections])
    res.timings["data_s"] = time.perf_counter() - t0
    say(f"data: {len(splits.train)} train / {len(splits.eval)} eval prompts, {len(locations)} locations, "
        f"clean accuracy {res.clean['accuracy']:.3f}, LD {res.clean['logit_diff']:.3f} ({res.timings['data_s']:.1f}s)")
    for fam in sae_families:
        res.families.append(fam.describe())
    for cs in sections:
        t1 = time.perf_counter()
        _evaluate_section(data, cfg, cs, sae_families, res)
        res.timings[cs.name] = time.perf_counter() - t1
        say(f"{cs.name}: done in {res.timings[cs.name]:.1f}s")
    res.timings["total_s"] = time.perf_counter() - t0
    return res


def _evaluate_section(data: _Data, cfg: EvalConfig, cs: CrossSection, sae_families: Sequence[SAEFamily], res: Results) -> None:
    locs = cs.locations
    train_prompts, src, clean = data.splits.train, data.splits.eval, data.clean
    means = {loc: data.train[loc].mean(0, keepdim=True).expand_as(data.eval[loc]) for loc in locs}
    abl = data.run(means)
    targets = {a: data.run({loc: data.cf[a][loc] for loc in locs}) for a in ATTRIBUTES}
    acc_none = {a: ct.edit_accuracy(clean.top, targets[a].top) for a in ATTRIBUTES}

    attrs = cfg.attributes
    families = [Family("mean", "supervised", "mean", {loc: fit_mean(data.train[loc], train_prompts, attrs) for loc in locs}),
                Family("mse", "supervised", "mse", {loc: fit_mse(data.train[loc], train_prompts, attrs) for loc in locs})]
    for fam in sae_families:
        if fam.covers(locs):
            saes = {loc: fam.for_location(loc) for loc in locs}
            archs = sorted({s.arch for s in saes.values()})
            meta = {k: v for k, v in next(iter(saes.values())).meta.items() if k in ("k", "d_sae", "corpus", "positions")}
            families.append(Family(fam.label, "sae", "/".join(archs), {loc: s.dictionary for loc, s in saes.items()}, meta))
        else:
            missing = [str(loc) for loc in locs if fam.for_location(loc) is None]
            res.skipped.append({"cross_section": cs.name, "dictionary": fam.label,
                                "reason": f"no SAE at {', '.join(missing)}"})

    sup = families[0]
    magnitude = {a: _mean(float(sup.dicts[loc].U[sup.dicts[loc].offset(a): sup.dicts[loc].offset(a) + len(sup.dicts[loc].values[a])]
                                .norm(dim=1).mean()) for loc in locs) for a in ATTRIBUTES}
    ref: dict[str, tuple[float, float]] = {}  # attr -> (w_sup, acc_sup) of the mean dictionary
    for fam in families:
        base = {"cross_section": cs.name, "dictionary": fam.label, "kind": fam.kind, "arch": fam.arch, **fam.meta}
        codes = {}
        recon = {}
        for loc in locs:
            d = fam.dicts[loc]
            if fam.kind == "supervised":
                codes[loc] = d.codes_for(src)
            else:
                codes[loc] = d.encode(data.eval[loc])
            recon[loc] = d.decode(codes[loc])
        ld_recon = data.run(recon)
        ld_int = data.run({loc: means[loc] + data.eval[loc] - recon[loc] for loc in locs})
        res.approximation.append({
            **base, "locations": [str(loc) for loc in locs],
            "sufficiency": ap.sufficiency(clean.ld, ld_recon.ld),
            "necessity": ap.necessity(clean.ld, abl.ld, ld_int.ld),
            "ld_recovered": ap.ld_recovered(clean.ld, abl.ld, ld_recon.ld),
            "ld_clean": clean.mean_ld, "ld_ablated": abl.mean_ld, "ld_reconstructed": ld_recon.mean_ld,
            "ld_without_reconstruction": ld_int.mean_ld,
            "accuracy_reconstructed": float((ld_recon.ld > 0).float().mean()),
            "fvu": _mean(ap.fvu(data.eval[loc], recon[loc]) for loc in locs),
            "l0": _mean(ap.l0(codes[loc]) for loc in locs),
            "shrinkage": _mean(ap.shrinkage(data.eval[loc], recon[loc]) for loc in locs),
            "dead_fraction": _mean(ap.dead_fraction(codes[loc]) for loc in locs),
            "n_features": int(_mean(fam.dicts[loc].features.shape[0] for loc in locs)),
        })
        f1_edit_tables = _interpretability(data, cfg, cs, fam, base, res, magnitude, acc_none)
        for attr in ATTRIBUTES:
            cf_prompts = data.splits.counterfactual[attr]
            row0 = {**base, "attribute": attr, "acc_none": acc_none[attr], "target_changed": 1 - acc_none[attr]}
            if fam.kind == "supervised":
                edited, w = {}, []
                for loc in locs:
                    d: SupervisedDictionary = fam.dicts[loc]
                    edited[loc] = d.edit(data.eval[loc], src, cf_prompts, attr)
                    weights = ct.feature_weights(codes[loc], d.U, d.center)
                    block = torch.zeros_like(weights, dtype=torch.bool)
                    block[:, d.offset(attr): d.offset(attr) + len(d.values[attr])] = True
                    w.append(ct.edit_magnitude(weights, block & (codes[loc] > 0)))
                acc = ct.edit_accuracy(data.run(edited).top, targets[attr].top)
                mag = _mean(w)
                if fam.label == "mean":
                    ref[attr] = (mag, acc)
                x, y = ct.normalized_xy(mag, acc, *ref.get(attr, (mag, acc)), acc_none[attr])
                res.control.append({**row0, "method": "supervised", "k": None, "min_f1": None, "accuracy": acc, "magnitude": mag, "x": x, "y": y})
                continue
            v_src = data.value_index(src, attr)
            v_cf = data.value_index(cf_prompts, attr)
            cf_codes = {loc: fam.dicts[loc].encode(data.cf[attr][loc]) for loc in locs}
            runs = [("greedy", k, 0.0) for k in cfg.ks] + [("f1", k, 0.0) for k in cfg.ks]
            runs += [("f1", max(cfg.ks), t) for t in ct.F1_CURVE]
            for method, k, min_f1 in runs:
                edited, w = {}, []
                for loc in locs:
                    d = fam.dicts[loc]
                    feats = d.features
                    if method == "greedy":
                        delta, removed = ct.greedy_edit(codes[loc], cf_codes[loc], feats, data.cf[attr][loc] - data.eval[loc], k)
                    else:
                        delta, removed, _ = ct.f1_edit(codes[loc], cf_codes[loc], feats, f1_edit_tables[loc][attr], v_src, v_cf, k, min_f1)
                    edited[loc] = data.eval[loc] + delta
                    w.append(ct.edit_magnitude(ct.feature_weights(codes[loc], feats, bias_of(d)), removed & (codes[loc] > 0)))
                acc = ct.edit_accuracy(data.run(edited).top, targets[attr].top)
                mag = _mean(w)
                x, y = ct.normalized_xy(mag, acc, *ref[attr], acc_none[attr])
                res.control.append({**row0, "method": method, "k": k, "min_f1": min_f1, "accuracy": acc, "magnitude": mag, "x": x, "y": y})


def _interpretability(data: _Data, cfg: EvalConfig, cs: CrossSection, fam: Family, base: dict, res: Results,
                      magnitude: dict[str, float], acc_none: dict[str, float]) -> dict[Location, dict[str, torch.Tensor]]:
    """F1 tables on the train prompts; rows for the summary, the per-feature table and the diagnostics.

    Returns, per location and attribute, the (F, n_values) F1 of "code > 0" used by F1-guided edits.
    """
    edit_f1: dict[Location, dict[str, torch.Tensor]] = {}
    prompts = data.splits.train
    for loc in cs.locations:
        d = fam.dicts[loc]
        codes = d.encode(data.train[loc]).float()
        v_idx = {a: data.value_index(prompts, a) for a in ATTRIBUTES}
        masks = {a: it.value_masks(v_idx[a], len(data.values[a])).to(codes) for a in ATTRIBUTES}
        edit_f1[loc] = {a: it.precision_recall_f1(codes > 0, masks[a])[2] for a in ATTRIBUTES}
        cov_first = {}
        for tau in cfg.taus:
            active = it.active_pattern(codes, tau)
            for a in ATTRIBUTES:
                p, r, f1 = it.precision_recall_f1(active, masks[a])
                best, best_idx = it.best_f1_per_value(f1)
                cov = it.coverage(f1, cfg.f1_threshold)
                if tau == cfg.taus[0]:
                    cov_first[a] = cov
                res.interpretability.append({
                    **base, "location": str(loc), "attribute": a, "tau": tau, "n_values": len(data.values[a]),
                    "mean_best_f1": float(best.mean()), "min_best_f1": float(best.min()), "coverage": cov,
                    "n_distinct_best_features": int(best_idx[best > 0].unique().numel()),
                })
                if fam.kind == "sae" or tau == cfg.taus[0]:
                    f1z = torch.nan_to_num(f1, nan=0.0)
                    fb, vb = f1z.max(1)
                    for j in (fb > 0).nonzero().squeeze(1).tolist():
                        v = int(vb[j])
                        res.features.append({"cross_section": cs.name, "dictionary": fam.label, "location": str(loc),
                                             "tau": tau, "feature": j, "attribute": a, "value": data.values[a][v],
                                             "precision": float(p[j, v]), "recall": float(r[j, v]), "f1": float(fb[j])})
                if a == "Pos":
                    split = it.over_splitting(p, r)
                    res.diagnostics.append({**base, "location": str(loc), "tau": tau, "diagnostic": "over_splitting",
                                            "attribute": "Pos", "values": data.values["Pos"], **split})
        occ = it.occlusion(magnitude, cov_first, {a: 1 - acc_none[a] for a in ATTRIBUTES})
        res.diagnostics.append({**base, "location": str(loc), "tau": cfg.taus[0], "diagnostic": "occlusion",
                                "attributes": occ, "any_occluded": any(v["occluded"] for v in occ.values())})
    return edit_f1
