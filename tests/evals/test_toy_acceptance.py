"""Acceptance on the shipped toy model (skipped until workbench/assets/toy-ioi holds its weights).

- location discovery finds heads whose mean ablation at END drops the logit difference sharply;
- a head group at END carries IO: patching the IO counterfactual there moves the answer to the new IO;
- the supervised dictionaries have sufficiency within [0.8, 1.2] on every discovered cross-section, and
  necessity within [0.8, 1.2] wherever mean ablation moves LD (``necessity_informative``: on toy-ioi v2
  the IO carriers at END have a backup, ablating them moves LD by ~1% and necessity is 0/0 there);
- the supervised edit reaches accuracy >= 0.8 for every attribute, and for IO and S there is a
  cross-section where the edit changes the model's answer on >= half the prompts (v2 does not use Pos:
  docs/toy-model.md).

Run with the paper's attributes and with Template (the frame family) added; docs/ioi.md has the tables.
"""

from __future__ import annotations

import pytest

from evals.harness import EvalConfig, evaluate
from evals.locate import LocateConfig, locate
from evals.locations import CrossSection
from workbench.models import TOY_DIR

pytestmark = pytest.mark.skipif(not (TOY_DIR / "model.safetensors").exists(),
                                reason="the embedded toy model is not built yet (workbench model train --out workbench/assets/toy-ioi)")


@pytest.fixture(scope="module")
def located(toy_model):
    return locate(toy_model, LocateConfig(n_prompts=120, qkv_heads=4, seed=0))


@pytest.fixture(scope="module")
def results(toy_model, located):
    sections = [CrossSection.from_dict(c) for c in located["cross_sections"]]
    cfg = EvalConfig(n_train=800, n_eval=150, ks=[2], f1_thresholds=[0.5], n_boot=0, attributes=["IO", "S", "Pos", "Template"])
    return evaluate(toy_model, cfg, sections)


@pytest.fixture(scope="module")
def results_paper_attributes(toy_model, located):
    sections = [CrossSection.from_dict(c) for c in located["cross_sections"]
                if all(loc.endswith("@END") for loc in c["locations"])]
    return evaluate(toy_model, EvalConfig(n_train=800, n_eval=150, ks=[2], f1_thresholds=[0.5], n_boot=0), sections)


def test_toy_model_solves_ioi_on_eval_prompts(located):
    assert located["clean"]["accuracy"] >= 0.9


def test_locate_finds_heads_whose_end_ablation_drops_ld(located):
    drops = sorted((h["ablate_end"] for h in located["heads"]), reverse=True)
    assert drops[0] >= 0.5, drops
    top = max(located["heads"], key=lambda h: h["ablate_end"])
    assert top["role"] in ("name-movers", "s-inhibition"), top  # it matters at END: it writes the answer or informs who does
    assert located["cross_sections"]


def test_locate_finds_heads_that_move_the_answer_to_a_new_io(located):
    moved = [c for c in located["cross_sections"] if c["evidence"].get("io_moved", 0) >= 0.8]
    assert moved and all(all(loc.endswith("@END") for loc in c["locations"]) for c in moved), located["cross_sections"]


def test_supervised_dictionaries_sufficient_and_necessary(results, results_paper_attributes):
    assert results_paper_attributes.approximation
    rows = results.approximation + results_paper_attributes.approximation
    assert sum(r["necessity_informative"] for r in rows) >= len(rows) / 2
    for r in rows:
        assert 0.8 <= r["sufficiency"] <= 1.2, r
        if r["necessity_informative"]:
            assert 0.8 <= r["necessity"] <= 1.2, r


def test_supervised_edits_accurate(results, results_paper_attributes):
    rows = [r for r in results.control + results_paper_attributes.control if r["method"] == "supervised"]
    assert rows
    for r in rows:
        assert r["accuracy"] >= 0.8, r
    for attr in ("IO", "S"):
        assert max(r["target_changed"] for r in rows if r["attribute"] == attr) >= 0.5, attr
