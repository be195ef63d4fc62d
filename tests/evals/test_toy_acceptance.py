"""Acceptance on the shipped toy model (skipped until workbench/assets/toy-ioi holds its weights).

- location discovery finds heads whose mean ablation at END drops the logit difference sharply;
- the supervised dictionaries have sufficiency and necessity within [0.8, 1.2] on every discovered
  cross-section, and the supervised edit reaches accuracy >= 0.8 for every attribute.
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
    return locate(toy_model, LocateConfig(n_prompts=200, seed=0))


@pytest.fixture(scope="module")
def results(toy_model, located):
    sections = [CrossSection.from_dict(c) for c in located["cross_sections"]]
    return evaluate(toy_model, EvalConfig(n_train=1000, n_eval=200, ks=[1], taus=[0.5]), sections)


def test_toy_model_solves_ioi_on_eval_prompts(located):
    assert located["clean"]["accuracy"] >= 0.9


def test_locate_finds_heads_whose_end_ablation_drops_ld(located):
    drops = sorted((h["ablate_end"] for h in located["heads"]), reverse=True)
    assert drops[0] >= 0.5, drops
    assert any(h["role"] == "name-movers" for h in located["heads"])
    assert located["cross_sections"]


def test_supervised_dictionaries_sufficient_and_necessary(results):
    for r in results.approximation:
        assert 0.8 <= r["sufficiency"] <= 1.2, r
        assert 0.8 <= r["necessity"] <= 1.2, r


def test_supervised_edits_accurate(results):
    rows = [r for r in results.control if r["method"] == "supervised"]
    assert rows
    for r in rows:
        assert r["accuracy"] >= 0.8, r
