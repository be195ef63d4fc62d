"""The files ``workbench ioi locate`` and ``workbench ioi eval`` write into a run dir (kind ``ioi``).

Every file is written atomically; tables are written both as JSON (a list of row objects) and as
Parquet with the same columns. Columns of every table are listed here; the app reads these names.

JSON files are strict JSON: undefined numbers (e.g. y when no edit can change the output) are null.

``config.json``  {"kind": "ioi", "config": {"command": "locate"|"eval", ...flags}, "created": t}
``status.json``  {"status": "running"|"done"|"failed", "time": t, ...}

written by ``locate`` (and by ``eval`` when it had to run discovery itself):

``locations.json``  {
    "model", "config" (LocateConfig), "clean": {"accuracy", "logit_diff", "n"}, "names_dropped": [...],
    "heads": [{"layer", "head", "dla" (mean DLA at END onto W_U[IO]-W_U[S]), "attn_io", "attn_s1",
               "attn_s2" (mean attention END->token), "attends" (IO|S1|S2), "ablate_end" (fractional
               LD drop when the head's z at END is mean-ablated), "patch_z": {"IO","S1","S2","END"}
               (fractional LD drop, z patched from the ABC counterfactual), "role"}],
    "locations": [{"location" ("hook[head]@POS"), "hook", "head", "pos", "kind" (q|k|v|z|resid_pre),
                   "patch_abc" (fractional LD drop)}]  ranked by |patch_abc|,
    "cross_sections": [{"name", "locations": ["hook[head]@POS", ...], "description",
                        "evidence": {"patch_abc", "mean_ablation" (group effects), "role"}}],
    "paper_heads" (gpt2 only): {role: {"L.H": role found or null}} }
``heads.parquet``   the "heads" list flattened (patch_z_IO, patch_z_S1, patch_z_S2, patch_z_END).

written by ``eval``:

Every number measured on prompts has a bootstrap standard error in a column ``<name>_se`` next to it
(seeded resampling of the eval prompts, or of the train prompts for F1 numbers; ``--n-boot``
resamples; null with ``--n-boot 0``). Choices made on the full sample (which features are
interpretable, each value's best feature) are held fixed across the resamples. The supervised
dictionaries' interpretability rows also have ``<name>_se_fit`` (mean_best_f1, coverage,
interpretable_fraction): the spread over ``--n-refit`` refits on resampled blocks of the fit prompts
(:mod:`evals.refit`), which their ``<name>_se`` then includes in quadrature.

``cross_sections.json``  the cross-sections evaluated (same objects as in locations.json).
``splits.json``  n_train, n_eval, n_fit (null: the dictionaries are fitted on the train prompts), fit,
    templates, names_kept, names_dropped, eval_pool, counterfactual_pool, train_balance / eval_balance /
    fit_balance: {attr: {"values", "min_count", "max_count"}}.
``dictionaries.json``  {"clean": {"accuracy" (LD > 0), "top1_accuracy" (argmax = IO), "logit_diff", "n",
    + _se}, "settings": {"n_boot", "n_refit", "f1_thresholds", "active_fraction", "activation_rule", "ks",
    "interpretations", "interpretations_skipped", "ablation_mean"}, "sae_families": [{"label", "saes":
    [{"path", "hook", "head", "arch", "k", "d_sae", "d_in", "corpus", "positions", "tokens"}]}],
    "skipped": [{"cross_section", "dictionary", "reason"}], "timings": {"data_s", <section>, "refit_s", "total_s"}}
``approximation.{json,parquet}``  one row per (cross_section, dictionary):
    cross_section, dictionary (mean | mse | SAE family label), kind (supervised | sae), arch, k, d_sae,
    corpus, positions, locations, sufficiency, necessity, ld_recovered (|LD_rec - LD_abl| /
    |LD_clean - LD_abl|, the authors'), ld_recovered_signed, ld_clean, ld_ablated (mean over the eval
    prompts patched in), ld_reconstructed, ld_without_reconstruction, accuracy_reconstructed (LD > 0),
    top1_reconstructed (argmax = IO), fvu, l0, shrinkage, dead_fraction, n_features.
``interpretable.{json,parquet}``  one row per (cross_section, SAE family, f1_threshold): the
    reconstruction from the interpretable features only (best interpretation F1 >= f1_threshold):
    n_interpretable (features, mean over locations), n_active (features active on some train prompt),
    l0_interpretable, interpretable_fraction (n_interpretable over all the dictionary's features),
    sufficiency, necessity, ld_recovered, ld_recovered_signed, top1_reconstructed, and the full
    reconstruction's sufficiency_full, necessity_full, ld_recovered_full, ld_recovered_signed_full,
    l0_full beside them. With ``--n-refit`` R the
    interpretable features are chosen again on R resamples of the train prompts, and the spread of each
    number over those choices is ``<name>_se_fit`` (in its ``<name>_se`` in quadrature).
``control.{json,parquet}``  one row per (cross_section, dictionary, attribute, method, k):
    attribute (IO | S | Pos), method (supervised | greedy | f1), k (edit size: features changed;
    null for supervised), n_removed (features removed: k for greedy, k/2 for f1), min_f1 (f1 edits use
    only features with F1 > min_f1: 0, and 0.25 / 0.5 / 0.75 at the largest k: the
    causal-effect-vs-interpretability curve; null for supervised), accuracy (edit accuracy against
    counterfactual patching), magnitude (total weight of removed features), x, y (normalised:
    mean-dictionary supervised edit at (0, 1), no edit at y = 0; x < 0: less weight removed than the
    supervised edit), acc_none (accuracy of not editing), target_changed (1 - acc_none), plus the
    dictionary columns above.
``interpretability.{json,parquet}``  one row per (cross_section, dictionary, location, attribute,
    f1_threshold); attribute = an interpretation kind (IO, S, Pos, IO & Pos, S & Pos, IO union,
    S union, Name, A, B, IO gender, S gender, Place, Object, Template) or "(any)": n_values,
    mean_best_f1 (mean over values of the best feature's F1; null for unions, which are searched per
    feature), min_best_f1, coverage (fraction of values with a feature of F1 >= f1_threshold),
    n_features (features whose best interpretation is of this kind with F1 >= f1_threshold);
    "(any)" rows: n_features and interpretable_fraction (of all the dictionary's features) over the whole
    space, and n_active (features active on some train prompt; it grows with --n-train as rare features
    appear, which is why it is not the fraction's denominator). A supervised dictionary's
    features are scored through its read-out (``SupervisedDictionary.encode``) of the train prompts, which
    it was fitted without (on the fit prompts, or leave-one-out with ``--n-fit 0``:
    ``evals.dictionary.loo_encode``); read_z (IO, S, Pos rows of supervised dictionaries): that
    read-out's accuracy above chance in standard errors (``evals.dictionary.read_z``); above_chance:
    read_z >= ``evals.dictionary.READ_Z`` (if not, the F1 of those features is chance level).
``features.parquet``  one row per (cross_section, dictionary, location, feature, attribute) with F1 >=
    0.2, and each feature's best interpretation: value (the best value, or the union "A | B | ..."),
    precision, recall, f1, best (this is the feature's best interpretation).
``diagnostics.json``  rows with "diagnostic": "occlusion" (attributes: {attr: {magnitude, coverage,
    causal, occluded, by, ratio}}, any_occluded; coverage at the lowest F1 threshold),
    "over_splitting" (attribute Pos; values, n_split, union_recall, best_f1, over_split per value,
    any_over_split; "matched by one feature" at the highest F1 threshold) or "frozen_decoder" (SAEs).
``experts.{json,parquet}``  routed SAE families only: one row per (cross_section, dictionary, location,
    attribute, value) with the expert of best F1 for that value, n (train prompts with the value),
    precision P(value | expert), recall P(expert | value), f1; and a row with value "(mean)" per attribute:
    the means over values, their chance level (``*_chance``, values shuffled over prompts) and n_values.
``diagnostics.parquet``  one row per (cross_section, dictionary, location): occluded ("IO by S", ...),
    occlusion_ratio, coverage_/magnitude_/causal_{IO,S,Pos}, over_split, n_split_{ABB,BAB},
    union_recall_{ABB,BAB}; SAEs also frozen_k, fvu_sae, fvu_frozen, frozen_minus_sae_fvu (+ _se),
    frozen_l0, frozen_coverage_{IO,S,Pos}, frozen_prefers ("sae": the SAE objective prefers the SAE's
    own dictionary to the supervised directions at the same k).
``summary.md``  the headline tables in Markdown, every number with its ±.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from evals.dictionary import READ_Z
from workbench.runs import Run, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from evals.harness import Results


def clean_json(obj):
    """NaN / inf -> None, recursively, so the JSON files are strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def write_table(run: Run, name: str, rows: list[dict], json_too: bool = True) -> None:
    """rows -> name.parquet (and name.json, NaN written as null), each written atomically."""
    import io

    import pandas as pd

    if json_too:
        run.write_json(f"{name}.json", clean_json(rows))
    df = pd.DataFrame(rows)
    for c in df.columns:  # lists / dicts are stored as JSON text so Parquet gets one type per column
        if df[c].map(lambda v: isinstance(v, (list, dict))).any():
            import json

            df[c] = df[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(run.path / f"{name}.parquet", buf.getvalue())


def write_locate(run: Run, result: dict) -> None:
    run.write_json("locations.json", clean_json(result))
    heads = []
    for h in result.get("heads", []):
        row = {k: v for k, v in h.items() if k != "patch_z"}
        row.update({f"patch_z_{p}": v for p, v in h.get("patch_z", {}).items()})
        heads.append(row)
    if heads:
        write_table(run, "heads", heads, json_too=False)


def write_eval(run: Run, res: "Results", model: str) -> None:
    run.write_json("cross_sections.json", res.cross_sections)
    run.write_json("splits.json", res.splits)
    run.write_json("dictionaries.json", clean_json({"clean": res.clean, "settings": res.settings, "sae_families": res.families,
                                         "skipped": res.skipped, "timings": res.timings}))
    write_table(run, "approximation", res.approximation)
    if res.interpretable:
        write_table(run, "interpretable", res.interpretable)
    write_table(run, "control", res.control)
    write_table(run, "interpretability", res.interpretability)
    write_table(run, "features", res.features, json_too=False)
    run.write_json("diagnostics.json", clean_json(res.diagnostics))
    write_table(run, "diagnostics", res.diagnostics_table, json_too=False)
    if res.experts:
        write_table(run, "experts", res.experts)
    atomic_write_text(run.path / "summary.md", summary_markdown(res, model))


def _f(v, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def uninformative(r) -> str:
    """What a report shows instead of a ratio over LD_clean - LD_abl when mean ablation barely moves LD."""
    effect = r.get("ablation_effect") if hasattr(r, "get") else getattr(r, "ablation_effect", None)
    return f"n/a (ablation {100 * effect:+.1f}% LD)" if effect is not None else "n/a"


def _pm(row: dict, key: str, nd: int = 2) -> str:
    """``value ± se`` (the bootstrap standard error), or the value alone when there is no se."""
    v, se = row.get(key), row.get(f"{key}_se")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return _f(v, nd)
    return f"{_f(v, nd)} ± {_f(se, nd)}"


def control_groups(control: list[dict]) -> dict[tuple, list[dict]]:
    """Control rows grouped by (cross-section, dictionary, attribute): one line of summary.md each."""
    out: dict[tuple, list[dict]] = {}
    for r in control:
        out.setdefault((r["cross_section"], r["dictionary"], r["attribute"]), []).append(r)
    return out


def best_control(rows: list[dict], method: str) -> dict | None:
    """The control row summary.md shows for one (cross-section, dictionary, attribute): the best over k of one method
    (rows with a min_f1 filter left out)."""
    rs = [r for r in rows if r["method"] == method and not r.get("min_f1")]
    return max(rs, key=lambda r: r["accuracy"]) if rs else None


def headline_numbers(res: "Results") -> dict[str, float]:
    """Every 0-1 number summary.md shows, keyed table:row/metric (how `bench/ioi_settings.py` measures convergence).

    Left out as summary_markdown leaves them out or shows them on another scale: logit differences, L0, n/a
    necessities, the finer interpretation kinds (unions, intersections, templates; in interpretability.parquet only).
    """
    out: dict[str, float] = {}

    def put(key: str, v) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)

    for k in ("accuracy", "top1_accuracy"):
        put(f"clean:{k}", res.clean.get(k))
    for r in res.approximation:
        ks = ["sufficiency", "top1_reconstructed", "fvu"]
        ks += ["necessity", "ld_recovered", "ld_recovered_signed"] if r.get("necessity_informative", True) else []
        for k in ks:
            put(f"approximation:{r['cross_section']}/{r['dictionary']}/{k}", r.get(k))
    for r in res.interpretable:
        for k in ("interpretable_fraction", "sufficiency", "necessity", "ld_recovered"):
            put(f"interpretable:{r['cross_section']}/{r['dictionary']}/{r['f1_threshold']}/{k}", r.get(k))
    for (cs, d, a), rows in control_groups(res.control).items():
        key = f"control:{cs}/{d}/{a}"
        put(f"{key}/acc_none", rows[0].get("acc_none"))
        put(f"{key}/target_changed", rows[0].get("target_changed"))
        for method in (("supervised",) if rows[0]["kind"] == "supervised" else ("greedy",)) + ("f1",):
            b = best_control(rows, method)
            if b is not None:
                put(f"{key}/{method}_best_accuracy", b["accuracy"])
    thr0 = min((r["f1_threshold"] for r in res.interpretability), default=None)
    for r in res.interpretability:
        key = f"interpretability:{r['cross_section']}/{r['dictionary']}/{r['location']}/{r['attribute']}/{r['f1_threshold']}"
        if r["attribute"] in ("IO", "S", "Pos"):
            put(f"{key}/coverage", r.get("coverage"))
            if r["f1_threshold"] == thr0:
                put(f"{key}/mean_best_f1", r.get("mean_best_f1"))
        elif r["attribute"] == "(any)":
            put(f"{key}/interpretable_fraction", r.get("interpretable_fraction"))
    for r in res.diagnostics_table:
        for k in ("fvu_sae", "fvu_frozen"):
            put(f"diagnostics:{r['cross_section']}/{r['dictionary']}/{r['location']}/{k}", r.get(k))
    return out


def _fit_note(splits: dict) -> str:
    """How the summary names the supervised dictionaries' prompts (splits.json: n_fit, null for the train prompts)."""
    n = splits.get("n_fit")
    return "; supervised dictionaries fitted on the train prompts, read leave-one-out" if n is None else f", {n} fit"


def _read_note(splits: dict) -> str:
    """Which dictionary reads each train prompt: one fitted on the fit prompts, or (no fit split) one fitted without it."""
    return ("of the train prompts, which they were not fitted on (they are fitted on the fit prompts)" if splits.get("n_fit")
            else "of the train prompts, each read by a dictionary fitted without it")


def _fit_noise_note(settings: dict) -> str:
    """What a supervised read-out's ± covers: the train prompts' resampling, and the fit's noise where it was refitted."""
    n = settings.get("n_refit") or 0
    if n:
        return (f"A supervised read-out's ± also has its fit's noise: the spread of the number over {n} refits of its dictionary, "
                "each on a resample of the fit prompts' blocks, added in quadrature (for a read-out at chance most of it: "
                "which noise vectors are nearest decides which features fire at all).")
    return ("A supervised read-out's ± resamples the train prompts with its fitted dictionary held fixed, so it leaves out the "
            "fit's own noise, which is what moves the numbers of a read-out at chance (which noise vectors are nearest decides "
            "which features fire at all; --n-refit adds it).")


def summary_markdown(res: "Results", model: str) -> str:
    """Headline tables with bootstrap ±: approximation, interpretable features, control, interpretability, diagnostics."""
    c = res.clean
    st = res.settings or {}
    out = [f"# IOI evaluation of `{model}`", "",
           f"Clean: accuracy (LD > 0) {_pm(c, 'accuracy', 3)}, top-1 accuracy {_pm(c, 'top1_accuracy', 3)}, mean LD "
           f"{_pm(c, 'logit_diff')} on {c['n']} eval prompts ({res.splits['n_train']} train{_fit_note(res.splits)}). "
           f"± = bootstrap standard error ({st.get('n_boot', 0)} resamples of the prompts"
           f"{'; supervised read-outs also ' + str(st['n_refit']) + ' refits of their dictionaries' if st.get('n_refit') else ''}). "
           f"Active feature: {st.get('activation_rule', 'code > 0')}. Total time {_f(res.timings.get('total_s'), 1)} s.", ""]
    if res.splits.get("s2") == "ordinal":
        out += ["Prompts with S2 said by its place in the pair (\"the former\" / \"the latter\", `--s2 ordinal`): "
                "S is known only through Pos, and the Pos counterfactual swaps the pair and the word together.", ""]
    out += ["## Cross-sections", ""]
    for cs in res.cross_sections:
        out.append(f"- **{cs['name']}**: {', '.join(f'`{loc}`' for loc in cs['locations'])}" + (f" — {cs['description']}" if cs.get("description") else ""))
    out += ["", "## Approximation", "", "LD recovered = |LD_rec − LD_abl| / |LD_clean − LD_abl| (the authors'); signed beside it. "
            "Mean ablation uses the mean over the eval prompts. Necessity and LD recovered divide by LD_clean − LD_abl: where "
            "mean ablation moves LD by less than 10% they are shown as n/a with the ablation's effect (the model has a backup).", "",
            "| cross-section | dictionary | sufficiency | necessity | LD recovered | LD recovered (signed) | top-1 | FVU | L0 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in res.approximation:
        nec, rec, signed = (_pm(r, k) if r.get("necessity_informative", True) else uninformative(r)
                            for k in ("necessity", "ld_recovered", "ld_recovered_signed"))
        out.append(f"| {r['cross_section']} | {r['dictionary']} | {_pm(r, 'sufficiency')} | {nec} | "
                   f"{rec} | {signed} | {_pm(r, 'top1_reconstructed')} | "
                   f"{_pm(r, 'fvu')} | {_pm(r, 'l0', 1)} |")
    if res.interpretable:
        n_sel = st.get("n_refit") or 0
        out += ["", "## Interpretable features only (best interpretation F1 >= threshold) vs the full reconstruction", "",
                "Which features are interpretable is chosen on the train prompts; " + (
                    f"the ± also has the spread over {n_sel} choices made again on resamples of them." if n_sel else
                    "the ± holds that choice fixed (--n-refit adds its spread)."), "",
                "| cross-section | dictionary | F1 >= | interpretable fraction | L0 kept / full | sufficiency (full) | necessity (full) | LD recovered (full) |",
                "|---|---|---|---|---|---|---|---|"]
        for r in res.interpretable:
            out.append(f"| {r['cross_section']} | {r['dictionary']} | {_f(r['f1_threshold'])} | {_pm(r, 'interpretable_fraction')} | "
                       f"{_pm(r, 'l0_interpretable', 1)} / {_pm(r, 'l0_full', 1)} | {_pm(r, 'sufficiency')} ({_f(r['sufficiency_full'])}) | "
                       f"{_pm(r, 'necessity')} ({_f(r['necessity_full'])}) | {_pm(r, 'ld_recovered')} ({_f(r['ld_recovered_full'])}) |")
    out += ["", "## Control (edit accuracy; SAE edits: the best over k = features changed, with the k that reached it)", "",
            "| cross-section | dictionary | attribute | no edit | supervised / greedy | F1-guided | target changed |", "|---|---|---|---|---|---|---|"]
    for (cs, d, a), rows in control_groups(res.control).items():
        def best(method):
            b = best_control(rows, method)
            if b is None:
                return "–"
            return _pm(b, "accuracy") + (f" (k={b['k']})" if b["k"] is not None else "")
        main = best("supervised") if rows[0]["kind"] == "supervised" else best("greedy")
        out.append(f"| {cs} | {d} | {a} | {_pm(rows[0], 'acc_none')} | {main} | {best('f1')} | {_pm(rows[0], 'target_changed')} |")
    if res.interpretability:
        thr = sorted({r["f1_threshold"] for r in res.interpretability})
        out += ["", f"## Interpretability (mean best F1; coverage at F1 >= {' / '.join(_f(t) for t in thr)})", "",
                "Supervised dictionaries are scored through their read-out (the values whose vectors together reconstruct "
                f"an activation best) {_read_note(res.splits)}; \"(at chance)\": that read-out "
                f"is not above chance by {READ_Z:g} standard errors, so the F1 of its features for that attribute is chance level (about 0.5 for Pos's two values). "
                "A coverage counts the values whose best F1 is over a threshold: where many sit near it, its ± falls only as "
                "n_train^(-1/4) (docs/ioi.md, 'How many prompts'). The interpretable fraction is the share of all the "
                "dictionary's features whose best interpretation (any kind) reaches the threshold; a feature active on no "
                "train prompt counts as not interpretable. " + _fit_noise_note(st), "",
                "| cross-section | dictionary | location | IO | S | Pos | interpretable fraction (any kind) |", "|---|---|---|---|---|---|---|"]
        keyed = {}
        for r in res.interpretability:
            keyed.setdefault((r["cross_section"], r["dictionary"], r["location"]), {}).setdefault(r["attribute"], {})[r["f1_threshold"]] = r
        for (cs, d, loc), by in keyed.items():
            def cell(a):
                rows = by.get(a)
                if not rows:
                    return "–"
                first = rows[thr[0]]
                chance = " (at chance)" if first.get("above_chance") is False else ""
                return f"{_pm(first, 'mean_best_f1')}; " + " / ".join(_pm(rows[t], "coverage") for t in thr if t in rows) + chance
            anyr = by.get("(any)", {})
            interp = " / ".join(_pm(anyr[t], "interpretable_fraction") for t in thr if t in anyr)
            out.append(f"| {cs} | {d} | `{loc}` | {cell('IO')} | {cell('S')} | {cell('Pos')} | {interp} |")
    if res.diagnostics_table:
        out += ["", "## Diagnostics: occlusion, over-splitting (Pos), frozen decoder", "",
                "| cross-section | dictionary | location | occluded | over-split Pos (split features ABB / BAB) | FVU: SAE vs frozen supervised decoder |",
                "|---|---|---|---|---|---|"]
        for r in res.diagnostics_table:
            split = f"{'yes' if r.get('over_split') else 'no'} ({r.get('n_split_ABB', '–')} / {r.get('n_split_BAB', '–')})"
            frozen = (f"{_pm(r, 'fvu_sae')} vs {_pm(r, 'fvu_frozen')} (k={r['frozen_k']}; prefers {r['frozen_prefers']})"
                      if "fvu_frozen" in r else "–")
            out.append(f"| {r['cross_section']} | {r['dictionary']} | `{r['location']}` | {r.get('occluded') or 'no'} | {split} | {frozen} |")
    means = [r for r in res.experts if r.get("value") == "(mean)"]
    if means:
        out += ["", "## Routed SAEs: which experts carry IO, S and Pos (train prompts; mean over values of the best "
                "expert's precision / recall, chance in brackets)", "",
                "| cross-section | dictionary | location | experts | attribute | values | precision | recall | F1 |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in means:
            out.append(f"| {r['cross_section']} | {r['dictionary']} | `{r['location']}` | {r['n_experts']} | {r['attribute']} | "
                       f"{r['n_values']} | {_pm(r, 'precision')} ({_f(r['precision_chance'])}) | {_pm(r, 'recall')} "
                       f"({_f(r['recall_chance'])}) | {_pm(r, 'f1')} ({_f(r['f1_chance'])}) |")
    if res.skipped:
        out += ["", "## Skipped", ""] + [f"- {s['dictionary']} on {s['cross_section']}: {s['reason']}" for s in res.skipped]
    return "\n".join(out) + "\n"
