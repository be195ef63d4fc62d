"""Known answers for the interpretation space, the frozen-decoder comparison and the bootstrap.

Each planted feature fires exactly on the prompts of one interpretation; scoring must name that
interpretation (kind and value) with F1 = 1. The frozen-decoder SAE given the planted directions
must reconstruct planted activations; the bootstrap's ± of a mean must match the binomial formula.
"""

from __future__ import annotations

import pytest
import torch

from evals import interpretability as it
from evals import interpretation as ip
from evals.bootstrap import Resampler, wmean
from evals.data import attribute_value, balanced_prompts
from evals.frozen_decoder import frozen_decoder
from workbench import toyworld

NAMES = toyworld.IOI_NAMES[:30]  # > 2 x 10 names, so no union of <= 10 names equals a gender
GENDER = {n: ("F" if i % 2 else "M") for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def prompts():
    return balanced_prompts(1200, NAMES, seed=0)


def _planted(prompts):
    """(N, F) activation pattern: each feature fires on one planted interpretation -> (kind, value) per feature."""
    n0, n1, n2, n3, n4, n5, n6, n7, n8 = NAMES[:9]
    rules = [
        ("IO", n0, lambda p: p.io == n0),
        ("S", n1, lambda p: p.s == n1),
        ("Pos", "ABB", lambda p: p.pos == "ABB"),
        ("IO & Pos", f"{n2} & ABB", lambda p: p.io == n2 and p.pos == "ABB"),
        ("S & Pos", f"{n2} & BAB", lambda p: p.s == n2 and p.pos == "BAB"),
        ("S union", {n3, n4, n5}, lambda p: p.s in (n3, n4, n5)),
        ("IO union", {n3, n6}, lambda p: p.io in (n3, n6)),
        ("Name", n6, lambda p: n6 in (p.io, p.s)),
        ("A", n7, lambda p: attribute_value(p, "A") == n7),
        ("B", n8, lambda p: attribute_value(p, "B") == n8),
        ("Place", "park", lambda p: p.place == "park"),
        ("Object", "ball", lambda p: p.obj == "ball"),
        ("Template", "separate", lambda p: p.template == "separate"),
        ("IO gender", "F", lambda p: GENDER[p.io] == "F"),
        ("S gender", "M", lambda p: GENDER[p.s] == "M"),
    ]
    active = torch.tensor([[r(p) for _, _, r in rules] for p in prompts])
    return active, [(k, v) for k, v, _ in rules]


def test_every_kind_names_its_planted_feature(prompts, monkeypatch):
    monkeypatch.setattr(toyworld, "GENDER", GENDER, raising=False)
    kinds, skipped = ip.build_kinds(prompts)
    assert skipped == [] and [k.name for k in kinds] == list(ip.KINDS)
    active, want = _planted(prompts)
    s = ip.score(active, kinds)
    for j, (kind, value) in enumerate(want):
        assert s.best_kind[j] == kind, (j, kind, s.best_kind[j], s.best_label[j])
        got = set(s.best_label[j].split(ip.UNION_SEP)) if isinstance(value, set) else s.best_label[j]
        assert got == value, (kind, got)
        assert float(s.best_f1[j]) == pytest.approx(1.0), kind
        # the best interpretation's mask is the planted rule itself
        assert torch.equal(s.best_mask[:, j].bool(), active[:, j])
    assert s.interpretable(0.8).all() and float(s.interpretable_fraction(0.8)) == 1.0
    # each single-value kind's planted value is covered (F1 1) by its feature
    io_f1, io_feat = s.value_best("IO")
    assert float(io_f1[s.kind("IO").kind.values.index(NAMES[0])]) == pytest.approx(1.0)
    assert int(io_feat[s.kind("IO").kind.values.index(NAMES[0])]) == 0


def test_union_is_grown_in_f1_order_and_never_below_the_single_value(prompts):
    kinds, _ = ip.build_kinds(prompts, ["S", "S union"])
    n3, n4, n5 = NAMES[3:6]
    # fires on S in {n3, n4} always and on S = n5 for half of its prompts: the best union is {n3, n4, n5}?
    # F1 with {n3, n4}: 2*80/(80+40+80)... computed by hand below
    fires = torch.tensor([[p.s in (n3, n4) or (p.s == n5 and i % 2 == 0)] for i, p in enumerate(prompts)])
    s = ip.score(fires, kinds)
    single, union = s.kind("S"), s.kind("S union")
    assert float(union.f1[0]) >= float(single.f1[0])
    n_s = sum(p.s == n3 for p in prompts)  # every name is S equally often
    half5 = sum(1 for i, p in enumerate(prompts) if p.s == n5 and i % 2 == 0)
    act = 2 * n_s + half5
    want2 = 2 * (2 * n_s) / (act + 2 * n_s)  # union {n3, n4}
    want3 = 2 * act / (act + 3 * n_s)  # union {n3, n4, n5}
    assert float(union.f1[0]) == pytest.approx(max(want2, want3))
    assert set(union.labels[0].split(ip.UNION_SEP)) == ({n3, n4, n5} if want3 > want2 else {n3, n4})


def test_gender_kinds_are_skipped_without_a_gender_table(prompts, monkeypatch):
    monkeypatch.setattr(toyworld, "GENDER", {}, raising=False)
    kinds, skipped = ip.build_kinds(prompts)
    assert skipped == ["IO gender", "S gender"]
    assert "IO gender" not in [k.name for k in kinds]


def test_frozen_decoder_recovers_planted_directions():
    """Activations = mean + u_{A, i} + u_{B, j} (+ noise), with u centred per attribute as the mean
    dictionary's vectors are; given those directions the frozen decoder with k = 2 finds both."""
    from evals import approximation as ap

    g = torch.Generator().manual_seed(0)
    d, n = 32, 1000
    raw = torch.randn(12, d, generator=g)
    dirs = torch.cat([raw[:6] - raw[:6].mean(0), raw[6:] - raw[6:].mean(0)])  # two attributes, 6 values each
    i = torch.randint(0, 6, (n,), generator=g)
    j = torch.randint(6, 12, (n,), generator=g)
    mag = 0.8 + 0.4 * torch.rand(n, 2, generator=g)
    acts = 5.0 + mag[:, :1] * dirs[i] + mag[:, 1:] * dirs[j] + 0.01 * torch.randn(n, d, generator=g)
    dec = frozen_decoder(acts, 3.0 * dirs, k=2)  # the norms of the given rows do not matter
    codes = dec.encode(acts)
    assert (codes >= 0).all() and ((codes > 0).sum(1) <= 2).all()
    assert float(ap.fvu(acts, dec.decode(codes))) < 0.01
    hit = (codes[torch.arange(n), i] > 0) & (codes[torch.arange(n), j] > 0)
    assert float(hit.float().mean()) > 0.99
    err = codes[torch.arange(n), i] - mag[:, 0] * dirs[i].norm(dim=1)  # the code is the planted magnitude
    assert float(err.abs().mean()) < 0.1 * float(dirs.norm(dim=1).mean()), float(err.abs().mean())
    # one pick only: about half the variance is left
    one = frozen_decoder(acts, dirs, k=1)
    assert 0.3 < float(ap.fvu(acts, one.decode(one.encode(acts)))) < 0.7
    # random directions cannot do it
    wrong = frozen_decoder(acts, torch.randn(12, d, generator=g), k=2)
    assert float(ap.fvu(acts, wrong.decode(wrong.encode(acts)))) > 0.3


def test_bootstrap_se_of_a_mean_is_the_binomial_se():
    n = 400
    x = (torch.arange(n) % 4 == 0).float()  # p = 0.25
    boot = Resampler.make(n, 2000, seed=0)
    assert torch.equal(boot.w.sum(1), torch.full((2000,), float(n)))
    value, se = boot.stat(lambda x, w=None: wmean(x, w), x)
    assert value == pytest.approx(0.25)
    assert se == pytest.approx((0.25 * 0.75 / n) ** 0.5, rel=0.1)
    assert Resampler.make(n, 2000, seed=0).w.equal(boot.w)  # seeded
    none = Resampler.make(n, 0, seed=0)
    assert none.w is None and none.stat(lambda x, w=None: wmean(x, w), x)[1] != none.stat(lambda x, w=None: wmean(x, w), x)[1]  # NaN


def test_interpretable_fraction_is_over_every_feature():
    """A feature active on no prompt counts as not interpretable: the denominator is the dictionary's size, so
    more prompts (which wake rare features) do not lower the fraction; n_active counts the features seen."""
    active = torch.zeros(40, 3, dtype=torch.bool)
    active[:20, 0] = True  # Pos = ABB exactly (prompts 0..19 are ABB below)
    active[:, 1] = True  # fires on every prompt: F1 2/3 with either Pos value
    kinds = [ip.Kind("Pos", ["ABB", "BAB"], it.value_masks(torch.tensor([0] * 20 + [1] * 20), 2))]
    s = ip.score(active, kinds)
    assert s.best_f1.tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert s.n_active() == 2
    assert float(s.interpretable_fraction(0.8)) == pytest.approx(1 / 3)  # feature 2 never fires: not interpretable
    assert float(s.interpretable_fraction(0.6)) == pytest.approx(2 / 3)
    w = torch.ones(5, 40)
    w[1:, 20:30] = 0.0  # resamples with half the BAB prompts: feature 1's F1 with ABB (its best) is 0.8
    assert s.interpretable_fraction(0.8, w).tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    active[39, 2] = True  # the rare feature fires once (as it would among more prompts): the fraction holds
    s2 = ip.score(active, kinds)
    assert s2.n_active() == 3 and float(s2.interpretable_fraction(0.6)) == pytest.approx(2 / 3)


@pytest.mark.parametrize("values_per_prompt", [1, 2])
def test_union_f1_equals_scoring_each_union_directly(values_per_prompt):
    """The union search from the per-value counts (one value per prompt) and the counted one (values that
    share prompts) both equal F1 computed on each union's own mask, and union_members is that mask."""
    g = torch.Generator().manual_seed(values_per_prompt)
    n, v, f = 600, 12, 25
    masks = torch.zeros(n, v)
    for _ in range(values_per_prompt):
        masks[torch.arange(n), torch.randint(0, v, (n,), generator=g)] = 1.0
    active = torch.rand(n, f, generator=g) < 0.2
    active[:, 0] = masks[:, :3].sum(1) > 0  # a feature that is exactly a union of three values
    f1 = it.precision_recall_f1(active, masks)[2]
    best, size, order = it.union_f1(active, masks, f1, max_size=6)
    for j in range(f):
        want_best, want_size = 0.0, 1
        for m in range(1, 7):
            union = masks[:, order[j, :m]].sum(1) > 0
            inter = float((active[:, j] & union).sum())
            score = 2 * inter / (float(active[:, j].sum()) + float(union.sum()))
            if score > want_best + 1e-9:
                want_best, want_size = score, m
        assert abs(float(best[j]) - want_best) < 1e-6 and int(size[j]) == want_size, j
        assert torch.equal(it.union_members(masks, order, size)[:, j], masks[:, order[j, :want_size]].sum(1) > 0)
    if values_per_prompt == 1:
        assert float(best[0]) == 1.0 and int(size[0]) == 3
