"""Splits: disjoint name pools, balanced attributes, single-attribute counterfactuals, seeding."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from evals.data import ATTRIBUTES, attribute_value, balanced_prompts, check_names, make_splits, semantic_positions
from workbench import toyworld
from workbench.errors import ConfigError
from workbench.ioi import make_batch, name_token_id


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


def test_balanced_prompts_come_in_rounds_of_every_ordered_pair():
    """A round (m - 1 blocks of m names) holds every ordered (IO, S != IO) pair once; Pos is ABB for half
    of every block and for half (+-1) of each name's prompts as IO and as S, so a mean over one name's
    prompts meets every other name and both Pos values equally often (docs/ioi.md, "How many prompts")."""
    for m in (10, 9):
        names = toyworld.IOI_NAMES[:m]
        ps = balanced_prompts(2 * m * (m - 1), names, seed=5)
        for r in range(2):
            round_ = ps[r * m * (m - 1): (r + 1) * m * (m - 1)]
            assert Counter((p.io, p.s) for p in round_) == Counter({(a, b): 1 for a in names for b in names if a != b})
            for key in ("io", "s"):
                abb = Counter(getattr(p, key) for p in round_ if p.pos == "ABB")
                assert all(abs(abb[n] - (m - 1) / 2) <= 1 for n in names), (m, key, abb)  # within one prompt of half
            for b in range(m - 1):
                block = round_[b * m: (b + 1) * m]
                assert abs(sum(p.pos == "ABB" for p in block) - m / 2) <= 0.5
        assert ps[: m * (m - 1)] != ps[m * (m - 1):]  # a new permutation and order each round


def test_a_frame_per_block_keeps_the_rounds_and_shares_one_frame_per_block():
    m = 10
    names = toyworld.IOI_NAMES[:m]
    ps = balanced_prompts(m * (m - 1) + 5, names, seed=5, frame_per_block=True)
    rounds = balanced_prompts(m * (m - 1) + 5, names, seed=5)
    first = m * (m - 1)  # a round; later rounds differ (the frames draw from the same generator)
    assert [(p.io, p.s, p.pos) for p in ps[:first]] == [(p.io, p.s, p.pos) for p in rounds[:first]]  # the same design
    blocks = [ps[b: b + m] for b in range(0, len(ps), m)]
    assert all(len({(p.frame, p.place, p.obj) for p in blk}) == 1 for blk in blocks)
    assert len({(blk[0].frame, blk[0].place, blk[0].obj) for blk in blocks}) >= len(blocks) - 1  # a new frame per block
    assert len({p.frame for p in rounds}) > len(blocks)
    for p in ps:  # the names fill the frame: IO once, S twice
        assert p.text.split().count(p.io) == 1 and p.text.split().count(p.s) == 2, p.text


def test_the_fit_split_is_its_own_prompts_in_whole_blocks(tiny_model):
    s = make_splits(tiny_model, n_train=100, n_eval=20, seed=0, n_fit=100)
    m = len(s.pools.kept)
    assert len(s.fit) == 2 * m and s.fit_prompts is s.fit  # 100 rounded up to whole blocks of the 80 names
    assert s.fit[:m] != s.train[:m]  # drawn from their own seed
    assert all(len({p.frame for p in s.fit[b: b + m]}) == 1 for b in (0, m))
    d = s.describe()
    assert d["n_fit"] == 2 * m and d["fit_balance"]["IO"]["min_count"] == d["fit_balance"]["IO"]["max_count"] == 2
    assert make_splits(tiny_model, n_train=100, n_eval=20, seed=0, n_fit=None).fit == s.fit  # default: n_train
    none = make_splits(tiny_model, n_train=100, n_eval=20, seed=0, n_fit=0)
    assert none.fit is None and none.fit_prompts is none.train and none.describe()["n_fit"] is None
    with pytest.raises(ConfigError, match="n_fit"):
        make_splits(tiny_model, n_train=100, n_eval=20, seed=0, n_fit=-1)


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


@pytest.mark.parametrize("which", ["tiny_model", "fake_gpt2"])
def test_ordinal_prompts_say_s2_by_its_place_and_pos_counterfactuals_swap_the_marker(which, request):
    """s2="ordinal": S2 is "the latter" (ABB) / "the former" (BAB); S2's position is that word; the Pos
    counterfactual swaps the pair and the marker together (same S, same answer); ABC keeps the length."""
    from evals.locate import abc_counterfactual
    from workbench.grammar import ORDINAL_S2

    model = request.getfixturevalue(which)
    s = make_splits(model, n_train=4, n_eval=20, seed=3, s2="ordinal")
    assert all(p.s2_form == "ordinal" for p in s.train + s.eval)
    for p, q in zip(s.eval, s.counterfactual["Pos"]):
        assert ORDINAL_S2[p.pos] in p.text and p.text.count(p.s) == 1 and p.text.count(p.io) == 1
        assert (q.io, q.s, q.pos != p.pos) == (p.io, p.s, True) and ORDINAL_S2[q.pos] in q.text
    batch = make_batch(model, s.eval)
    pos = semantic_positions(batch)
    rows = torch.arange(len(batch))
    assert torch.equal(batch.tokens[rows, pos["S1"]], batch.s_id)
    words = {name_token_id(model, w) for w in ("former", "latter")}
    assert set(batch.tokens[rows, pos["S2"]].tolist()) <= words and not (batch.s2_id == batch.s_id).any()
    assert (pos["S1"] < pos["S2"]).all() and (pos["S2"] < pos["END"]).all()
    for cf in ("Pos", "IO", "S"):  # counterfactual prompts line up token by token with the eval prompts
        cb = make_batch(model, s.counterfactual[cf])
        assert cb.tokens.shape == batch.tokens.shape and torch.equal(semantic_positions(cb)["S2"], pos["S2"])
    abc = make_batch(model, s.eval, texts=abc_counterfactual(s.eval, s.pools.counterfactual, 0))
    assert torch.equal(abc.end, batch.end) and all(" the " in t for t in abc_counterfactual(s.eval, s.pools.counterfactual, 0))


def test_s2_form_is_validated():
    from evals.config import EvalConfig, LocateConfig
    from workbench.errors import ConfigError

    for cls in (EvalConfig, LocateConfig):
        with pytest.raises(ConfigError, match="s2"):
            cls(s2="pronoun")
