"""summary.md and the headline numbers that bench/ioi_settings.py holds to the converged values."""

from __future__ import annotations

import pytest

from evals.config import EvalConfig
from evals.harness import evaluate
from evals.locations import CrossSection, Location
from evals.report import headline_numbers, summary_markdown


@pytest.fixture(scope="module")
def results(tiny_model_dir, save_sae):
    from evals.dictionary import load_families
    from workbench.models import load_model

    import tempfile
    from pathlib import Path

    model = load_model(str(tiny_model_dir), "cpu")
    with tempfile.TemporaryDirectory() as d:
        sae = save_sae(Path(d) / "sae_z", 16, "blocks.0.attn.hook_z", 1)
        families = load_families([str(sae)])
    sections = [CrossSection("custom", [Location.parse("blocks.0.attn.hook_z[1]@END")], "test")]
    cfg = EvalConfig(model=str(tiny_model_dir), n_train=100, n_eval=24, ks=[2, 4], n_boot=10)
    return evaluate(model, cfg, sections, families)


def test_every_headline_number_is_shown_in_the_summary(results):
    """headline_numbers is what a reader of summary.md sees: each value, at 2 decimals, is in the text."""
    text = summary_markdown(results, "tiny")
    nums = headline_numbers(results)
    tables = {k.split(":")[0] for k in nums}
    assert {"clean", "approximation", "control", "interpretability", "diagnostics"} <= tables
    assert any(k.endswith("/greedy_best_accuracy") for k in nums) and any(k.endswith("/mean_best_f1") for k in nums)
    for key, v in nums.items():
        shown = f"{v:.3f}" if key.startswith("clean:") else f"{v:.2f}"
        assert shown in text or (shown == "-0.00" and "0.00" in text), f"{key} = {shown} is not in summary.md"


def test_best_control_is_the_best_over_k(results):
    """The edit accuracy summary.md shows for an SAE is the largest over the edit sizes, not the last one."""
    nums = headline_numbers(results)
    sae_rows = [r for r in results.control if r["kind"] == "sae" and r["method"] == "greedy" and not r.get("min_f1")]
    assert sae_rows
    r0 = sae_rows[0]
    same = [r for r in sae_rows if (r["cross_section"], r["dictionary"], r["attribute"]) ==
            (r0["cross_section"], r0["dictionary"], r0["attribute"])]
    assert len(same) == 2  # ks 2 and 4
    key = f"control:{r0['cross_section']}/{r0['dictionary']}/{r0['attribute']}/greedy_best_accuracy"
    assert nums[key] == max(r["accuracy"] for r in same)


def test_summary_marks_the_supervised_read_outs_at_chance(results):
    """Supervised IO / S / Pos rows carry read_z and above_chance (= z >= READ_Z); summary.md marks a cell
    "(at chance)" exactly where above_chance is False, and SAE rows have neither."""
    import copy
    import re

    from evals.dictionary import READ_Z

    rows = [r for r in results.interpretability if r["attribute"] in ("IO", "S", "Pos")]
    assert any(r["dictionary"] in ("mean", "mse") for r in rows) and any(r["dictionary"] not in ("mean", "mse") for r in rows)
    for r in rows:
        if r["dictionary"] in ("mean", "mse"):
            assert r["above_chance"] == (r["read_z"] >= READ_Z)
        else:
            assert r["above_chance"] is None and r["read_z"] is None
    res = copy.deepcopy(results)
    for r in res.interpretability:
        if r["attribute"] in ("IO", "S", "Pos") and r["dictionary"] in ("mean", "mse"):
            r["above_chance"] = not (r["dictionary"] == "mse" and r["attribute"] == "S")
    text = summary_markdown(res, "tiny")
    lines = [ln for ln in text.splitlines() if "(at chance)" in ln and ln.startswith("| ")]
    assert len(lines) == 1 and "| mse |" in lines[0] and len(re.findall(r"\(at chance\)", lines[0])) == 1
    assert "(at chance)" in lines[0].split(" | ")[4]  # | cross-section | dictionary | location | IO | S | ...: the S cell


def test_every_number_of_the_feature_tables_carries_its_se(results):
    """Issue 15: a bootstrap ± for every number. In the interpretable-features and interpretability tables each
    number is followed by its ± (coverages and L0 kept included), apart from the full reconstruction's numbers in
    brackets, which the approximation table shows with theirs."""
    import re

    text = summary_markdown(results, "tiny")
    sections = {s.split("\n", 1)[0]: s for s in text.split("\n## ")}
    checked = 0
    for title in ("Interpretable features only", "Interpretability"):
        body = next(v for k, v in sections.items() if k.startswith(title))
        rows = [ln for ln in body.splitlines() if ln.startswith("| ") and not ln.startswith("| cross-section")]
        assert rows
        for ln in rows:
            cells = ln.split(" | ")[3:]  # past cross-section, dictionary, and location or threshold
            for cell in cells:
                bare = re.sub(r"\([^)]*\)", "", cell)  # bracketed: the full reconstruction's, or "(at chance)"
                for m in re.finditer(r"(?<![±\d.] )(?<![\d.])-?\d+\.\d+", bare):
                    assert bare[m.end():].startswith(" ±"), f"{m.group()} in {cell!r} has no ±"
                    checked += 1
    assert checked > 20


def test_the_read_out_note_names_the_prompts_the_dictionaries_were_fitted_on(results):
    """With a fit split the supervised read-outs are of prompts the dictionaries were not fitted on; without one,
    each train prompt is read leave-one-out. summary.md says which."""
    import copy

    assert results.splits.get("n_fit")
    assert "they are fitted on the fit prompts" in summary_markdown(results, "tiny")
    res = copy.deepcopy(results)
    res.splits["n_fit"] = None
    assert "each read by a dictionary fitted without it" in summary_markdown(res, "tiny")


def test_the_summary_says_whether_a_read_outs_plus_minus_has_the_fits_noise(results):
    """By default (a fit split) the supervised dictionaries are refitted and summary.md says their ± includes the
    spread over those refits; with none it says the ± holds the fitted dictionary fixed."""
    import copy

    assert results.settings["n_refit"] == 8
    assert any(r.get("coverage_se_fit") is not None for r in results.interpretability if r["kind"] == "supervised")
    text = summary_markdown(results, "tiny")
    assert "the spread of the number over 8 refits" in text and "supervised read-outs also 8 refits" in text
    assert "spread over 8 choices made again" in text  # the interpretable-features table's numbers too
    res = copy.deepcopy(results)
    res.settings["n_refit"] = 0
    text = summary_markdown(res, "tiny")
    assert "fitted dictionary held fixed" in text and "refits of their" not in text and "holds that choice fixed" in text
