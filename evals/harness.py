"""``workbench ioi eval``: supervised dictionaries and SAEs on every cross-section, on three axes.

For each cross-section (from ``workbench ioi locate`` or given with ``--location``) and each
dictionary family (the supervised ``mean`` and ``mse`` dictionaries, fitted per location on the
fit prompts (:mod:`evals.data`), and each ``--sae`` family that covers all its locations):

1. approximation (:mod:`evals.approximation`): sufficiency, necessity, LD recovered (absolute, as the
   authors compute it, and signed), FVU, L0, accuracy (LD > 0 and top-1) with the reconstruction;
2. interpretable features: the same with only the features whose best interpretation scores
   F1 >= t (t = 0.5, 0.6, 0.8), next to the full reconstruction (SAE families);
3. control (:mod:`evals.control`): counterfactual patching targets for IO, S and Pos; accuracy and
   magnitude of the supervised edit, of greedy SAE edits and of F1-guided SAE edits per edit size;
4. interpretability (:mod:`evals.interpretation`): every feature scored on the interpretation space
   (active = code > 0); per attribute the best feature's F1 and coverage at each F1 threshold (a
   supervised dictionary's codes here are its read-out of the train prompts, which it was not fitted on:
   it is fitted on the fit prompts (``--n-fit``), or with ``--n-fit 0`` on the train prompts, each read
   by the dictionary fitted on all the others (:func:`evals.dictionary.loo_encode`); how far above
   chance it reads each attribute is in ``read_z``, ``above_chance``);
5. routed SAEs: which experts carry the IO, S and Pos values (precision and recall of the expert
   assignment against each attribute value, :func:`routing.metrics.expert_assignment`);
6. diagnostics: occlusion and over-splitting (:mod:`evals.interpretability`) and the frozen-decoder
   comparison (:mod:`evals.frozen_decoder`, SAE families).

Every number carries a bootstrap standard error (column ``<name>_se``; :mod:`evals.bootstrap`):
eval prompts are resampled for the numbers measured on them, train prompts for the F1 numbers. The
supervised dictionaries' F1 numbers also get their fit's noise from ``--n-refit`` refits (:mod:`evals.refit`), and
the SAEs' interpretable-feature numbers the noise of choosing those features (chosen again on resampled train prompts).
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
from evals import interpretation as ip
from evals.bootstrap import Resampler, wmean
from evals.config import EvalConfig
from evals.data import ATTRIBUTES, EXTRA_ATTRIBUTES, IOISplits, make_splits, semantic_positions
from evals.dictionary import (READ_Z, SAEFamily, SupervisedDictionary, attribute_values, bias_of, fit_centred_on, loo_encode,
                              read_z)
from evals.frozen_decoder import frozen_decoder
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
    interpretable: list[dict] = field(default_factory=list)
    control: list[dict] = field(default_factory=list)
    interpretability: list[dict] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    diagnostics_table: list[dict] = field(default_factory=list)
    experts: list[dict] = field(default_factory=list)
    families: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


class _Data:
    """Batches, positions, activations and resamplers shared by every cross-section and dictionary."""

    def __init__(self, model, cfg: EvalConfig, splits: IOISplits, locations: Sequence[Location]):
        from workbench.ioi import make_batch

        self.model, self.splits = model, splits
        self.train_b = make_batch(model, splits.train)
        self.eval_b = make_batch(model, splits.eval)
        self.cf_b = {a: make_batch(model, splits.counterfactual[a]) for a in ATTRIBUTES}
        self.train_pos = semantic_positions(self.train_b)
        self.eval_pos = semantic_positions(self.eval_b)
        self.cf_pos = {a: semantic_positions(b) for a, b in self.cf_b.items()}
        self.train = read_acts(model, self.train_b, self.train_pos, locations)
        if splits.fit is None:  # the dictionaries are fitted on the train prompts (read leave-one-out)
            self.fit = self.train
        else:
            fit_b = make_batch(model, splits.fit)
            self.fit = read_acts(model, fit_b, semantic_positions(fit_b), locations)
        self.eval = read_acts(model, self.eval_b, self.eval_pos, locations)
        self.cf = {a: read_acts(model, self.cf_b[a], self.cf_pos[a], locations) for a in ATTRIBUTES}
        self.clean = run_patched(model, self.eval_b, self.eval_pos)
        self.values = attribute_values(splits.train)
        self.kinds, self.kinds_skipped = ip.build_kinds(splits.train, cfg.interpretations)
        self.patcher = Patcher(model, self.eval_b, self.eval_pos)
        dev = model.cfg.device
        self.boot_eval = Resampler.make(len(splits.eval), cfg.n_boot, cfg.seed + 3, dev)
        self.boot_train = Resampler.make(len(splits.train), cfg.n_boot, cfg.seed + 4, dev)

    def run(self, patches: dict[Location, torch.Tensor]):
        """The eval prompts with `patches`, restarting at the first patched block (clean resid cached)."""
        return self.patcher(patches)

    def top1(self, out) -> torch.Tensor:
        """(N,) 0/1: the run's argmax at END is the IO token (the paper's top-1 accuracy)."""
        return (out.top == self.eval_b.io_id).float()

    def value_index(self, prompts, attr: str) -> torch.Tensor:
        from evals.data import labels

        return labels(prompts, {attr: self.values[attr]})[attr].to(self.model.cfg.device)


def _nanmean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _put(row: dict, name: str, boot: Resampler, fn: Callable, *args) -> None:
    """row[name] = fn(*args) on the full sample, row[name_se] = its bootstrap standard error."""
    row[name], row[f"{name}_se"] = boot.stat(fn, *args)


def _loc_mean(fn: Callable, per_loc: Sequence[tuple]) -> Callable:
    """A metric averaged over the locations of a cross-section, keeping the bootstrap ``w`` argument."""
    def f(w=None):
        return torch.stack([torch.as_tensor(fn(*args, w=w), dtype=torch.float32) for args in per_loc]).mean(0)
    return f


def evaluate(model: "HookedTransformer", cfg: EvalConfig, sections: Sequence[CrossSection],
             sae_families: Sequence[SAEFamily] = (), progress: Callable[[str], None] | None = None) -> Results:
    """Run all axes on every cross-section; see the module docstring."""
    import time

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    splits = make_splits(model, cfg.n_train, cfg.n_eval, cfg.seed, eval_split=cfg.eval_split, s2=cfg.s2, n_fit=cfg.n_fit)
    require(cfg.n_train >= len(splits.pools.kept), "n_train", f"{cfg.n_train} train prompts cannot show each of the "
            f"{len(splits.pools.kept)} names as IO and as S", f"pass --n-train >= {len(splits.pools.kept)}")
    locations = sorted({loc for cs in sections for loc in cs.locations})
    data = _Data(model, cfg, splits, locations)
    boot = data.boot_eval
    clean = {"n": len(splits.eval)}
    _put(clean, "accuracy", boot, ap.mean_of, (data.clean.ld > 0).float())
    _put(clean, "top1_accuracy", boot, ap.mean_of, data.top1(data.clean))
    _put(clean, "logit_diff", boot, ap.mean_of, data.clean.ld)
    res = Results(splits.describe(), clean, [cs.to_dict() for cs in sections])
    res.settings = {"n_boot": cfg.n_boot, "n_refit": cfg.n_refit, "f1_thresholds": cfg.f1_thresholds, "active_fraction": cfg.active_fraction,
                    "activation_rule": _rule(cfg), "ks": cfg.ks, "interpretations": [k.name for k in data.kinds],
                    "interpretations_skipped": data.kinds_skipped, "ablation_mean": "eval prompts"}
    res.timings["data_s"] = time.perf_counter() - t0
    say(f"data: {len(splits.train)} train / {len(splits.eval)} eval / {len(splits.fit_prompts)} fit prompts, {len(locations)} locations, "
        f"clean accuracy {clean['accuracy']:.3f} (top-1 {clean['top1_accuracy']:.3f}), LD {clean['logit_diff']:.3f} "
        f"({res.timings['data_s']:.1f}s)")
    for fam in sae_families:
        res.families.append(fam.describe())
    for cs in sections:
        t1 = time.perf_counter()
        _evaluate_section(data, cfg, cs, sae_families, res)
        res.timings[cs.name] = time.perf_counter() - t1
        say(f"{cs.name}: done in {res.timings[cs.name]:.1f}s")
    if cfg.n_refit:
        t1 = time.perf_counter()
        n = _fit_noise(data, cfg, sections, res, say)
        res.timings["refit_s"] = time.perf_counter() - t1
        say(f"fit noise: {cfg.n_refit} refits of the supervised dictionaries, {n} numbers' ± widened "
            f"({res.timings['refit_s']:.1f}s)")
    res.timings["total_s"] = time.perf_counter() - t0
    return res


def _rule(cfg: EvalConfig) -> str:
    return "code > 0 (the paper's)" if cfg.active_fraction <= 0 else f"code > {cfg.active_fraction:g} x max (not the paper's)"


def _families(data: _Data, cfg: EvalConfig, cs: CrossSection, sae_families: Sequence[SAEFamily], res: Results) -> list[Family]:
    locs, attrs = cs.locations, cfg.attributes
    families = [Family(kind, "supervised", kind, {loc: _fit_supervised(data, kind, loc, attrs) for loc in locs}) for kind in ("mean", "mse")]
    for fam in sae_families:
        if fam.covers(locs):
            saes = {loc: fam.for_location(loc) for loc in locs}
            archs = sorted({s.arch for s in saes.values()})
            meta = {k: v for k, v in next(iter(saes.values())).meta.items() if k in ("k", "d_sae", "corpus", "positions")}
            families.append(Family(fam.label, "sae", "/".join(archs), {loc: s.dictionary for loc, s in saes.items()}, meta))
        else:
            missing = [str(loc) for loc in locs if fam.for_location(loc) is None]
            res.skipped.append({"cross_section": cs.name, "dictionary": fam.label, "reason": f"no SAE at {', '.join(missing)}"})
    return families


def _evaluate_section(data: _Data, cfg: EvalConfig, cs: CrossSection, sae_families: Sequence[SAEFamily], res: Results) -> None:
    locs = cs.locations
    src, clean, boot = data.splits.eval, data.clean, data.boot_eval
    means = {loc: data.eval[loc].mean(0, keepdim=True).expand_as(data.eval[loc]) for loc in locs}  # eval mean (authors)
    abl = data.run(means)
    targets = {a: data.run({loc: data.cf[a][loc] for loc in locs}) for a in ATTRIBUTES}
    none_match = {a: (clean.top == targets[a].top).float() for a in ATTRIBUTES}  # (N,) not editing already agrees
    families = _families(data, cfg, cs, sae_families, res)
    sup: Family = families[0]
    magnitude = {a: _nanmean(float(sup.dicts[loc].U[sup.dicts[loc].offset(a): sup.dicts[loc].offset(a) + len(sup.dicts[loc].values[a])]
                                   .norm(dim=1).mean()) for loc in locs) for a in ATTRIBUTES}
    ref: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # attr -> per-prompt (removed weight, match) of the mean dictionary's edit

    for fam in families:
        base = {"cross_section": cs.name, "dictionary": fam.label, "kind": fam.kind, "arch": fam.arch, **fam.meta}
        codes, recon = {}, {}
        for loc in locs:
            d = fam.dicts[loc]
            codes[loc] = d.codes_for(src) if fam.kind == "supervised" else d.encode(data.eval[loc])
            recon[loc] = d.decode(codes[loc])
        ld_recon = data.run(recon)
        ld_int = data.run({loc: means[loc] + data.eval[loc] - recon[loc] for loc in locs})
        row = {**base, "locations": [str(loc) for loc in locs]}
        _approximation_row(row, boot, clean, abl, ld_recon, ld_int, data)
        for name, fn in (("fvu", ap.fvu), ("shrinkage", ap.shrinkage)):
            _put(row, name, boot, _loc_mean(fn, [(data.eval[loc], recon[loc]) for loc in locs]))
        _put(row, "l0", boot, _loc_mean(ap.l0, [(codes[loc],) for loc in locs]))
        row["dead_fraction"] = _nanmean(ap.dead_fraction(codes[loc]) for loc in locs)
        row["n_features"] = int(_nanmean(fam.dicts[loc].features.shape[0] for loc in locs))
        res.approximation.append(row)

        if fam.kind == "sae":
            _experts(data, cs, fam, base, res)
        scores, edit_f1 = _interpretability(data, cfg, cs, fam, base, res)
        _diagnostics(data, cfg, cs, fam, base, res, scores, codes, magnitude, none_match)
        if fam.kind == "sae":
            _interpretable_features(data, cfg, fam, base, res, scores, codes, means, abl, row)
        for attr in ATTRIBUTES:
            _control(data, cfg, fam, base, res, attr, codes, edit_f1, targets[attr], none_match[attr], ref)


def _approximation_row(row: dict, boot: Resampler, clean, abl, ld_recon, ld_int, data: _Data) -> None:
    _put(row, "sufficiency", boot, ap.sufficiency, clean.ld, ld_recon.ld)
    _put(row, "necessity", boot, ap.necessity, clean.ld, abl.ld, ld_int.ld)
    _put(row, "ablation_effect", boot, ap.ablation_effect, clean.ld, abl.ld)
    row["necessity_informative"] = bool(row["ablation_effect"] >= ap.MIN_ABLATION_EFFECT)
    _put(row, "ld_recovered", boot, ap.ld_recovered, clean.ld, abl.ld, ld_recon.ld)
    _put(row, "ld_recovered_signed", boot, ap.ld_recovered_signed, clean.ld, abl.ld, ld_recon.ld)
    for name, x in (("ld_clean", clean.ld), ("ld_ablated", abl.ld), ("ld_reconstructed", ld_recon.ld),
                    ("ld_without_reconstruction", ld_int.ld), ("accuracy_reconstructed", (ld_recon.ld > 0).float()),
                    ("top1_reconstructed", data.top1(ld_recon))):
        _put(row, name, boot, ap.mean_of, x)


def _interpretable_features(data: _Data, cfg: EvalConfig, fam: Family, base: dict, res: Results, scores: dict,
                            codes: dict, means: dict, abl, full: dict) -> None:
    """Sufficiency / necessity / LD recovered of the reconstruction from the interpretable features only.

    Which features are interpretable is chosen on the train prompts, and the eval bootstrap holds that choice
    fixed; with ``--n-refit`` R the choice is made again on R resamples of the train prompts and the numbers'
    spread over those choices goes into their ± (``<name>_se_fit``, as for the supervised refits)."""
    from evals import refit

    boot, clean = data.boot_eval, data.clean
    w = data.boot_train.w
    w_sel = None if w is None or not cfg.n_refit else w[: cfg.n_refit]  # (R, N) one slice: the scores' F1 is cached per weights

    def metrics(keep: dict) -> dict:
        """name -> (metric function, its arguments) for the reconstruction from the features in ``keep`` (eval prompts)."""
        part = {loc: ap.keep_features(codes[loc], fam.dicts[loc].features, bias_of(fam.dicts[loc]), keep[loc]) for loc in codes}
        ld_part = data.run(part)
        ld_rest = data.run({loc: means[loc] + data.eval[loc] - part[loc] for loc in codes})
        return {"l0_interpretable": (_loc_mean(lambda c, k, w=None: ap.l0(c * k.to(c), w), [(codes[loc], keep[loc]) for loc in codes]),),
                "sufficiency": (ap.sufficiency, clean.ld, ld_part.ld),
                "necessity": (ap.necessity, clean.ld, abl.ld, ld_rest.ld),
                "ld_recovered": (ap.ld_recovered, clean.ld, abl.ld, ld_part.ld),
                "ld_recovered_signed": (ap.ld_recovered_signed, clean.ld, abl.ld, ld_part.ld),
                "top1_reconstructed": (ap.mean_of, data.top1(ld_part))}

    for t in cfg.f1_thresholds:
        keep = {loc: scores[loc].interpretable(t) for loc in codes}
        got = metrics(keep)
        row = {**base, "f1_threshold": t,
               "n_interpretable": _nanmean(float(k.sum()) for k in keep.values()),
               "n_active": _nanmean(float(scores[loc].n_active()) for loc in codes)}
        _put(row, "interpretable_fraction", data.boot_train,
             _loc_mean(lambda s, w=None: s.interpretable_fraction(t, w), [(scores[loc],) for loc in codes]))
        for name, (fn, *args) in got.items():
            _put(row, name, boot, fn, *args)
        if w_sel is not None:  # the choice of features made again on resampled train prompts
            under = {loc: scores[loc].interpretable_under(t, w_sel) for loc in codes}  # (R, F) each
            seen = {_choice(keep): got}  # a choice met before (the full-sample one included) reuses its runs
            draws = []
            for r in range(len(w_sel)):
                keep_r = {loc: under[loc][r] for loc in codes}
                key = _choice(keep_r)
                if key not in seen:
                    seen[key] = metrics(keep_r)
                draws.append([{name: float(fn(*args)) for name, (fn, *args) in seen[key].items()}])
            refit.add_fit_noise([row], draws, tuple(got), fields=())
        for k in ("sufficiency", "necessity", "ld_recovered", "ld_recovered_signed", "l0"):
            row[f"{k}_full"], row[f"{k}_full_se"] = full[k], full[f"{k}_se"]
        res.interpretable.append(row)


def _choice(keep: dict) -> tuple:
    """A hashable form of a choice of features per location ({location: (F,) bool})."""
    return tuple((loc, bytes(k.cpu().numpy())) for loc, k in keep.items())


def _control(data: _Data, cfg: EvalConfig, fam: Family, base: dict, res: Results, attr: str, codes: dict, edit_f1: dict,
             target, none_match: torch.Tensor, ref: dict) -> None:
    locs, src, boot = list(codes), data.splits.eval, data.boot_eval
    cf_prompts = data.splits.counterfactual[attr]
    row0 = {**base, "attribute": attr}
    _put(row0, "acc_none", boot, ap.mean_of, none_match)
    row0["target_changed"], row0["target_changed_se"] = 1 - row0["acc_none"], row0["acc_none_se"]

    def add(method, k, min_f1, match, removed_w):
        row = {**row0, "method": method, "k": k, "min_f1": min_f1, "n_removed": None if k is None else (k if method == "greedy" else ct.f1_exchange(k))}
        _put(row, "accuracy", boot, ap.mean_of, match)
        _put(row, "magnitude", boot, ap.mean_of, removed_w)
        w_sup, m_sup = ref.get(attr, (removed_w, match))

        def xy(i, w=None):
            return ct.normalized_xy(wmean(removed_w, w), wmean(match, w), wmean(w_sup, w), wmean(m_sup, w), wmean(none_match, w))[i]
        _put(row, "x", boot, lambda w=None: xy(0, w))
        _put(row, "y", boot, lambda w=None: xy(1, w))
        res.control.append(row)

    if fam.kind == "supervised":
        edited, w = {}, []
        for loc in locs:
            d: SupervisedDictionary = fam.dicts[loc]
            edited[loc] = d.edit(data.eval[loc], src, cf_prompts, attr)
            weights = ct.feature_weights(codes[loc], d.U, d.center)
            block = torch.zeros_like(weights, dtype=torch.bool)
            block[:, d.offset(attr): d.offset(attr) + len(d.values[attr])] = True
            w.append(ct.removed_weight(weights, block & (codes[loc] > 0)))
        match = (data.run(edited).top == target.top).float()
        removed_w = torch.stack(w).mean(0)
        if fam.label == "mean":
            ref[attr] = (removed_w, match)
        add("supervised", None, None, match, removed_w)
        return
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
                delta, removed, _ = ct.f1_edit(codes[loc], cf_codes[loc], feats, edit_f1[loc][attr], v_src, v_cf,
                                               ct.f1_exchange(k), min_f1)
            edited[loc] = data.eval[loc] + delta
            w.append(ct.removed_weight(ct.feature_weights(codes[loc], feats, bias_of(d)), removed & (codes[loc] > 0)))
        match = (data.run(edited).top == target.top).float()
        add(method, k, min_f1, match, torch.stack(w).mean(0))


def _experts(data: _Data, cs: CrossSection, fam: Family, base: dict, res: Results) -> None:
    """Routed SAEs: which experts carry the IO, S and Pos values (train prompts; a token's expert = its
    highest-weight expert). One row per (location, attribute, value) with the expert of best F1 and its
    precision P(value | expert) and recall P(expert | value); plus a "(mean)" row per attribute with the means
    over values and their chance level (values shuffled over prompts)."""
    import numpy as np

    from routing.metrics import assignment_summary, expert_assignment

    for loc in cs.locations:
        d = fam.dicts[loc]
        if not hasattr(d, "experts_of"):
            continue
        w = d.experts_of(data.train[loc]).float()  # (N, E)
        experts = torch.where(w.amax(1) > 0, w.argmax(1), -1).cpu().numpy()
        where = {**base, "location": str(loc), "n_experts": int(w.shape[1])}
        for attr in ATTRIBUTES:
            idx = data.value_index(data.splits.train, attr).cpu().numpy()
            keep = idx >= 0
            names = np.asarray(data.values[attr], dtype=object)[idx[keep]]
            rows = expert_assignment(names, experts[keep], w.shape[1])
            for r in rows:
                res.experts.append({**where, "attribute": attr, **r})
            summ = assignment_summary(names, experts[keep], w.shape[1])
            mean_row = {**where, "attribute": attr, "value": "(mean)", "expert": None, "n": int(keep.sum()), **summ}
            # the ± of the means: train prompts resampled, each value's expert held at its full-sample choice
            labels = {r["value"]: i for i, r in enumerate(rows)}
            vi = torch.tensor([labels[str(v)] for v in names], dtype=torch.long)
            best = torch.tensor([r["expert"] for r in rows], dtype=torch.long)
            wb = data.boot_train.w
            boots = None if wb is None else assignment_means(vi, torch.as_tensor(experts[keep]), best,
                                                             wb[:, torch.as_tensor(keep, device=wb.device)])  # (B, 3)
            for i, m in enumerate(("precision", "recall", "f1")):
                mean_row[f"{m}_se"] = float("nan") if boots is None else float(boots[:, i].double().std())
            res.experts.append(mean_row)


def assignment_means(vi: torch.Tensor, experts: torch.Tensor, best: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over values of the precision, recall and F1 of each value's expert ``best[v]`` (as in
    :func:`routing.metrics.assignment_summary`), with the experts held fixed: (3,), or (B, 3) under bootstrap
    weights ``w: (B, N)``. vi: (N,) value index per prompt; experts: (N,) its expert (-1: none)."""
    onehot = torch.nn.functional.one_hot(vi, len(best)).float()  # (N, V)
    routed = (experts[:, None] == best[None, :]).float()  # (N, V): the prompt went to value v's expert
    ww = torch.ones(1, len(vi)) if w is None else w.float().cpu()
    inter, n_v, n_e = ww @ (onehot * routed), ww @ onehot, ww @ routed  # (B, V) each
    prec = torch.where(n_e > 0, inter / n_e.clamp_min(1e-12), torch.zeros_like(inter))
    rec = inter / n_v.clamp_min(1e-12)
    f1 = torch.nan_to_num(it.f1_from_counts(inter, n_e, n_v), nan=0.0)  # 2PR / (P + R); 0 for a value a resample lacks
    out = torch.stack([prec.mean(1), rec.mean(1), f1.mean(1)], 1)  # (B, 3)
    return out[0] if w is None else out


def _interpretability(data: _Data, cfg: EvalConfig, cs: CrossSection, fam: Family, base: dict, res: Results
                      ) -> tuple[dict, dict]:
    """Score every feature on the interpretation space (train prompts); summary, feature and diagnostic rows.

    Returns ({location: interpretation.Scores}, {location: {attr: (F, n_values) F1 of "code > 0"}}): the
    latter feeds the F1-guided edits, which use the authors' rule (``get_high_f1_features``) whatever
    ``active_fraction`` is.
    """
    prompts, boot = data.splits.train, data.boot_train
    scores, edit_f1 = {}, {}
    v_idx = {a: data.value_index(prompts, a) for a in ATTRIBUTES}  # (N,) each train prompt's value index
    for loc in cs.locations:
        d = fam.dicts[loc]
        if fam.kind == "supervised":  # their read-out, each prompt by a dictionary fitted without it
            codes = (loo_encode(fam.arch, data.train[loc], prompts, d.values) if data.splits.fit is None
                     else d.encode(data.train[loc])).float()
            z = read_z(codes, prompts, d.values)
        else:
            codes, z = d.encode(data.train[loc]).float(), {}
        edit_f1[loc] = {a: it.precision_recall_f1(codes > 0, it.value_masks(v_idx[a], len(data.values[a])).to(codes))[2]
                        for a in ATTRIBUTES}
        s = ip.score(it.active_pattern(codes, cfg.active_fraction), data.kinds)
        scores[loc] = s
        where = {**base, "location": str(loc)}
        for t in cfg.f1_thresholds:
            any_row = {**where, "attribute": "(any)", "f1_threshold": t, "n_values": None,
                       "n_features": int(((s.best_f1 >= t) & s.active.any(0)).sum()), "n_active": s.n_active()}
            _put(any_row, "interpretable_fraction", boot, lambda w=None: s.interpretable_fraction(t, w))
            res.interpretability.append(any_row)
            for ks in s.kinds:
                name = ks.kind.name
                row = {**where, "attribute": name, "f1_threshold": t, "n_values": len(ks.kind.values), "read_z": z.get(name),
                       "above_chance": None if name not in z else bool(z[name] >= READ_Z),
                       "n_features": sum(1 for j, k in enumerate(s.best_kind) if k == name and float(s.best_f1[j]) >= t)}
                if ks.value_f1 is not None:
                    _put(row, "mean_best_f1", boot, lambda w=None, n=name: s.value_f1(n, w).mean(-1))
                    _put(row, "coverage", boot, lambda w=None, n=name: (s.value_f1(n, w) >= t).float().mean(-1))
                    row["min_best_f1"] = float(s.value_best(name)[0].min())
                else:  # unions are searched per feature: they have no per-value best
                    row.update({"mean_best_f1": None, "mean_best_f1_se": None, "coverage": None, "coverage_se": None,
                                "min_best_f1": None})
                res.interpretability.append(row)
        for ks in s.kinds:  # per-feature rows: F1 >= 0.2, and each feature's best interpretation
            keep = set((ks.f1 >= 0.2).nonzero().squeeze(1).tolist()) | {j for j, k in enumerate(s.best_kind)
                                                                          if k == ks.kind.name and float(s.best_f1[j]) > 0}
            for j in sorted(keep):
                res.features.append({"cross_section": cs.name, "dictionary": fam.label, "location": str(loc), "feature": j,
                                     "attribute": ks.kind.name, "value": ks.labels[j], "precision": float(ks.precision[j]),
                                     "recall": float(ks.recall[j]), "f1": float(ks.f1[j]),
                                     "best": s.best_kind[j] == ks.kind.name})
    return scores, edit_f1


def _diagnostics(data: _Data, cfg: EvalConfig, cs: CrossSection, fam: Family, base: dict, res: Results, scores: dict,
                 eval_codes: dict, magnitude: dict, none_match: dict) -> None:
    """Occlusion and over-splitting per location (every dictionary) and the frozen-decoder comparison (SAEs)."""
    occ_t, split_t = min(cfg.f1_thresholds), max(cfg.f1_thresholds)
    causal = {a: 1 - float(none_match[a].mean()) for a in ATTRIBUTES}
    for loc in cs.locations:
        s = scores[loc]
        where = {**base, "location": str(loc)}
        cov = {a: float((s.value_best(a)[0] >= occ_t).float().mean()) for a in ATTRIBUTES}
        occ = it.occlusion(magnitude, cov, causal)
        res.diagnostics.append({**where, "diagnostic": "occlusion", "f1_threshold": occ_t, "attributes": occ,
                                "any_occluded": any(v["occluded"] for v in occ.values())})
        pos = s.kind("Pos").kind
        split = it.over_splitting(s.active, pos.masks.to(s.active.device), f1_threshold=split_t)
        res.diagnostics.append({**where, "diagnostic": "over_splitting", "attribute": "Pos", "f1_threshold": split_t,
                                "values": pos.values, **split})
        flat = {**where, "occluded": "; ".join(f"{a} by {', '.join(v['by'])}" for a, v in occ.items() if v["occluded"]),
                "occlusion_ratio": max((v["ratio"] for v in occ.values() if v["ratio"]), default=None),
                **{f"coverage_{a}": cov[a] for a in ATTRIBUTES}, **{f"magnitude_{a}": magnitude[a] for a in ATTRIBUTES},
                **{f"causal_{a}": causal[a] for a in ATTRIBUTES},
                "over_split": split["any_over_split"],
                **{f"n_split_{v}": n for v, n in zip(pos.values, split["n_split"])},
                **{f"union_recall_{v}": r for v, r in zip(pos.values, split["union_recall"])}}
        if fam.kind == "sae":
            flat.update(_frozen_decoder(data, cfg, loc, fam, eval_codes[loc], occ_t))
            res.diagnostics.append({**where, "diagnostic": "frozen_decoder",
                                    **{k: v for k, v in flat.items() if k.startswith("frozen_") or k.startswith("fvu_")}})
        res.diagnostics_table.append(flat)


def _fit_noise(data: _Data, cfg: EvalConfig, sections: Sequence[CrossSection], res: Results,
               say: Callable[[str], None] = lambda msg: None) -> int:
    """``--n-refit``: the supervised dictionaries refitted on block resamples of the fit split
    (:mod:`evals.refit`), their interpretability rows computed again with each, and the refits' spread
    added to those rows' ± (``<name>_se_fit``). Returns how many numbers it widened."""
    import copy
    import dataclasses

    from evals import refit

    fit, m = data.splits.fit, len(data.splits.pools.kept)
    if len(fit) < 2 * m:  # one block: every resample is that block again
        say(f"fit noise: the fit split is one block of {m} prompts, so no refit can differ; pass --n-fit >= {2 * m} for refits")
        return 0
    locations = sorted({loc for cs in sections for loc in cs.locations})  # a location shared by sections is read once
    owners = {loc: [cs.name for cs in sections if loc in cs.locations] for loc in locations}
    refits = []
    for i, idx in enumerate(refit.block_resamples(len(fit), m, cfg.n_refit, cfg.seed + 6)):
        say(f"fit noise: refit {i + 1} of {cfg.n_refit}")
        view = copy.copy(data)  # the same train / eval data, no bootstrap, the resampled fit split
        view.boot_train = Resampler(None)
        view.fit = {loc: a[idx.to(a.device)] for loc, a in data.fit.items()}
        view.splits = dataclasses.replace(data.splits, fit=[fit[j] for j in idx.tolist()])
        rows = []
        for loc in locations:
            for kind in ("mean", "mse"):
                scratch = Results({}, {}, [])
                fam = Family(kind, "supervised", kind, {loc: _fit_supervised(view, kind, loc, cfg.attributes)})
                _interpretability(view, cfg, CrossSection("", [loc]), fam, {"dictionary": kind}, scratch)
                rows += [{**r, "cross_section": name} for name in owners[loc] for r in scratch.interpretability]
        refits.append(rows)
    rows = [r for r in res.interpretability if r.get("kind") == "supervised"]
    return refit.add_fit_noise(rows, refits, ("mean_best_f1", "coverage", "interpretable_fraction"))


def _fit_supervised(data: _Data, kind: str, loc: Location, attrs: Sequence[str]) -> SupervisedDictionary:
    """The ``kind`` dictionary at ``loc``: its vectors fitted on the fit prompts, its center the train
    prompts' mean (:func:`evals.dictionary.fit_centred_on`)."""
    return fit_centred_on(kind, data.fit[loc], data.splits.fit_prompts, attrs,
                          None if data.splits.fit is None else data.train[loc])


def _frozen_decoder(data: _Data, cfg: EvalConfig, loc: Location, fam: Family, codes: torch.Tensor, occ_t: float) -> dict:
    """The mean dictionary's IO / S / Pos directions at this location as a frozen decoder with the SAE's k."""
    sup = _fit_supervised(data, "mean", loc, ATTRIBUTES)  # the paper's attributes, whatever --attributes adds
    k = fam.meta.get("k")
    k = int(k) if isinstance(k, (int, float)) and k else max(1, round(float(ap.l0(codes))))
    frozen = frozen_decoder(data.train[loc], sup.U, k)
    a = data.eval[loc]
    out = {"frozen_k": k}
    boot = data.boot_eval
    f_codes = frozen.encode(a)
    sae_hat, frozen_hat = fam.dicts[loc].decode(codes), frozen.decode(f_codes)
    _put(out, "fvu_sae", boot, ap.fvu, a, sae_hat)
    _put(out, "fvu_frozen", boot, ap.fvu, a, frozen_hat)
    _put(out, "frozen_minus_sae_fvu", boot, lambda w=None: ap.fvu(a, frozen_hat, w) - ap.fvu(a, sae_hat, w))
    out["frozen_l0"] = float(ap.l0(f_codes))
    f_train = frozen.encode(data.train[loc])
    s = ip.score(it.active_pattern(f_train, cfg.active_fraction), [k_ for k_ in data.kinds if k_.name in ATTRIBUTES])
    for attr in ATTRIBUTES:
        out[f"frozen_coverage_{attr}"] = float((s.value_best(attr)[0] >= occ_t).float().mean())
    out["frozen_prefers"] = "sae" if out["fvu_sae"] < out["fvu_frozen"] else "supervised"
    return out
