"""Splits: disjoint name pools, balanced attributes, single-attribute counterfactuals, seeding."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from evals.data import ATTRIBUTES, attribute_value, balanced_prompts, check_names, make_splits, semantic_positions
from workbench import toyworld
from workbench.ioi import make_batch


def test_balanced_prompts_are_balanced_and_seeded():
    names = toyworld.IOI_NAMES[:10]
    ps = balanced_prompts(200, names, seed=3)
    for attr in ATTRIBUTES:
        counts = Counter(attribute_value(p, attr) for p in ps)
        assert max(counts.values()) == min(counts.values()), (attr, counts)
    assert all(p.io != p.s for p in ps)
    assert len({p.template for p in ps}) >= 4  # frames from several families of the grammar
    # IO and Pos independent: every (IO, Pos) pair occurs
    assert len({(p.io, p.pos) for p in ps}) == 20
    assert ps == balanced_prompts(200, names, seed=3)
    assert ps != balanced_prompts(200, names, seed=4)


def test_splits_pools_disjoint_and_counterfactuals_change_one_attribute(tiny_model):
    s = make_splits(tiny_model, n_train=160, n_eval=60, seed=0)
    assert s.pools.dropped == [] and len(s.pools.kept) == 80
    assert set(s.pools.eval).isdisjoint(s.pools.counterfactual)
    assert {p.io for p in s.eval} | {p.s for p in s.eval} <= set(s.pools.eval)
    assert {attribute_value(p, "IO") for p in s.train} == set(s.pools.kept)
    for attr in ATTRIBUTES:
        for src, cf in zip(s.eval, s.counterfactual[attr]):
            changed = [a for a in ATTRIBUTES if attribute_value(src, a) != attribute_value(cf, a)]
            assert changed == [attr]
            assert (src.template, src.place, src.obj) == (cf.template, cf.place, cf.obj)
            if attr in ("IO", "S"):
                assert attribute_value(cf, attr) in s.pools.counterfactual
    d = s.describe()
    assert d["train_balance"]["IO"]["min_count"] == d["train_balance"]["IO"]["max_count"] == 2


def test_check_names_drops_unknown_names(tiny_model, fake_gpt2):
    kept, dropped = check_names(tiny_model, ["Mary", "Zorblax"])
    assert kept == ["Mary"] and dropped == ["Zorblax"]
    kept, dropped = check_names(fake_gpt2, ["Mary", "Zorblaxington"])
    assert kept == ["Mary"] and dropped == ["Zorblaxington"]


@pytest.mark.parametrize("which", ["tiny_model", "fake_gpt2"])
def test_semantic_positions_point_at_the_names(which, request):
    model = request.getfixturevalue(which)
    s = make_splits(model, n_train=2, n_eval=20, seed=1)
    batch = make_batch(model, s.eval)
    pos = semantic_positions(batch)
    rows = torch.arange(len(batch))
    assert torch.equal(batch.tokens[rows, pos["IO"]], batch.io_id)
    assert torch.equal(batch.tokens[rows, pos["S1"]], batch.s_id)
    assert torch.equal(batch.tokens[rows, pos["S2"]], batch.s_id)
    assert (pos["S1"] < pos["S2"]).all() and (pos["S2"] < pos["END"]).all()
    abb = torch.tensor([p.pos == "ABB" for p in s.eval])
    assert ((pos["IO"] < pos["S1"]) == abb).all()


def test_eval_splits_are_the_grammars_and_eval_prompts_use_held_out_frames(tiny_model):
    from evals.config import EVAL_SPLITS, EvalConfig
    from workbench import grammar

    assert set(EVAL_SPLITS) == set(grammar.SPLITS) and EvalConfig().eval_split == "productions"
    s = make_splits(tiny_model, n_train=40, n_eval=40, seed=0, eval_split="productions")
    held = grammar.HELDOUT_PRODUCTIONS
    assert all(held & set(p.productions) for p in s.eval)  # every eval prompt uses a held-out production
    assert not any(held & set(p.productions) for p in s.train)
    cf = s.counterfactual["IO"]
    assert [p.productions for p in cf] == [p.productions for p in s.eval]  # counterfactuals keep the frame
