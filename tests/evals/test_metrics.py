"""Unit tests of the metric functions on hand-computable inputs."""

from __future__ import annotations

import math

import pytest
import torch

from evals import approximation as ap
from evals import control as ct
from evals import interpretability as it


def test_sufficiency_necessity_ld_recovered_hand_values():
    clean = torch.tensor([4.0, 6.0])  # mean 5
    abl = torch.tensor([1.0, 1.0])  # mean 1
    assert float(ap.sufficiency(clean, torch.tensor([2.0, 3.0]))) == pytest.approx(0.5)
    assert float(ap.ld_recovered(clean, abl, torch.tensor([3.0, 3.0]))) == pytest.approx(0.5)
    assert float(ap.necessity(clean, abl, torch.tensor([2.0, 2.0]))) == pytest.approx(0.75)
    assert float(ap.necessity(clean, abl, abl)) == pytest.approx(1.0)
    assert float(ap.ablation_effect(clean, abl)) == pytest.approx(0.8)  # (5 - 1) / 5


def test_necessity_is_ill_conditioned_when_ablation_does_not_move_ld():
    """A cross-section the model has a backup for: ablation moves LD by 1%, so a reconstruction that is
    off by 0.5 LD units gives necessity -9, and ablation_effect says the number is uninformative."""
    clean, abl = torch.tensor([5.0, 5.0]), torch.tensor([4.95, 4.95])
    assert float(ap.necessity(clean, abl, torch.tensor([4.45, 4.45]))) == pytest.approx(-9.0, rel=1e-4)
    effect = float(ap.ablation_effect(clean, abl))
    assert effect == pytest.approx(0.01, rel=1e-4) and effect < ap.MIN_ABLATION_EFFECT


def test_ld_recovered_is_absolute_as_the_authors_compute_it_and_signed_beside_it():
    clean, abl = torch.tensor([5.0, 5.0]), torch.tensor([1.0, 1.0])
    overshoot = torch.tensor([-3.0, -3.0])  # as far past the ablation as clean is, in the wrong direction
    assert float(ap.ld_recovered(clean, abl, overshoot)) == pytest.approx(1.0)
    assert float(ap.ld_recovered_signed(clean, abl, overshoot)) == pytest.approx(-1.0)
    assert float(ap.ld_recovered_signed(clean, abl, torch.tensor([3.0, 3.0]))) == pytest.approx(0.5)


def test_fvu_l0_shrinkage_dead():
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(ap.fvu(a, a)) == 0.0
    assert float(ap.fvu(a, torch.zeros_like(a))) == pytest.approx(1.0)
    assert float(ap.shrinkage(a, 0.5 * a)) == pytest.approx(0.5)
    codes = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    assert float(ap.l0(codes)) == pytest.approx(1.5)
    assert ap.dead_fraction(codes) == pytest.approx(1 / 3)


def test_keep_features_spans_bias_to_full_reconstruction():
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    bias = torch.tensor([0.5, -0.5])
    codes = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    full = bias + codes @ feats
    assert torch.allclose(ap.keep_features(codes, feats, bias, torch.ones(3, dtype=torch.bool)), full)
    assert torch.allclose(ap.keep_features(codes, feats, bias, torch.zeros(3, dtype=torch.bool)), bias.expand(2, 2))
    only2 = ap.keep_features(codes, feats, bias, torch.tensor([False, False, True]))
    assert torch.allclose(only2, bias + torch.tensor([[2.0, 2.0], [0.0, 0.0]]))


def test_precision_recall_f1_hand_example():
    active = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.bool)  # 4 prompts, 2 features
    masks = it.value_masks(torch.tensor([0, 0, 1, 1]), 2)
    p, r, f1 = it.precision_recall_f1(active, masks)
    assert p[0, 0] == 1.0 and r[0, 0] == 1.0 and f1[0, 0] == 1.0
    assert p[1, 1] == 0.5 and r[1, 1] == 0.5 and f1[1, 1] == pytest.approx(0.5)
    assert f1[0, 1] == 0.0
    assert it.coverage(f1, 0.9) == 0.5


def test_active_pattern_is_code_above_zero_by_default_and_relative_to_the_max_on_request():
    codes = torch.tensor([[1.0, 10.0, 0.0], [0.4, 7.0, 0.0], [0.6, 2.0, 0.0]])
    assert it.active_pattern(codes).tolist() == (codes > 0).tolist()  # the paper's rule
    act = it.active_pattern(codes, 0.5)  # the stricter, not-the-paper's rule
    assert act[:, 0].tolist() == [True, False, True]
    assert act[:, 1].tolist() == [True, True, False]
    assert not act[:, 2].any()  # never-active feature


def test_paired_f1_matches_the_full_table_and_resamples():
    active = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.bool)
    masks = it.value_masks(torch.tensor([0, 0, 1, 1]), 2)
    f1 = it.precision_recall_f1(active, masks)[2]
    got = it.paired_f1(active, masks)  # pairs (feature 0, value 0), (feature 1, value 1)
    assert got.tolist() == pytest.approx([f1[0, 0].item(), f1[1, 1].item()])
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 2.0, 0.0]])  # the second resample drops prompts 1 and 3
    boot = it.paired_f1(active, masks, w)
    assert boot.shape == (2, 2) and boot[0].tolist() == pytest.approx(got.tolist())
    assert boot[1].tolist() == pytest.approx([1.0, 1.0])  # prompt 0 (f0, v0) and prompt 2 (f1, v1) only


def test_over_splitting_flags_many_small_precise_features():
    # Pos=ABB on prompts 0..39; four features each fire on ten of them; one feature is Pos=BAB exactly
    n = 80
    active = torch.zeros(n, 5, dtype=torch.bool)
    for j in range(4):
        active[10 * j: 10 * j + 10, j] = True
    active[40:, 4] = True
    masks = it.value_masks(torch.tensor([0] * 40 + [1] * 40), 2)
    out = it.over_splitting(active, masks)
    assert out["n_split"] == [4, 0]
    assert out["over_split"] == [True, False] and out["any_over_split"]
    assert out["union_recall"][0] == pytest.approx(1.0)
    assert out["best_f1"][1] == pytest.approx(1.0)
    # one feature carrying all of ABB besides the split ones: ABB is matched by one feature, not over-split
    whole = torch.cat([active, torch.tensor([True] * 40 + [False] * 40)[:, None]], 1)
    assert it.over_splitting(whole, masks)["over_split"] == [False, False]
    # features firing on fewer than min_count prompts of the value are chance, not splits
    tiny = torch.zeros(n, 8, dtype=torch.bool)
    for j in range(8):
        tiny[5 * j: 5 * j + 5, j] = True
    assert it.over_splitting(tiny, masks)["n_split"] == [0, 0]


def test_occlusion_needs_cause_low_coverage_and_a_larger_covered_attribute():
    out = it.occlusion({"IO": 1.0, "S": 1.1, "Pos": 0.5}, {"IO": 0.1, "S": 0.9, "Pos": 0.2},
                       {"IO": 0.8, "S": 0.9, "Pos": 0.0})
    assert out["IO"]["occluded"] and out["IO"]["by"] == ["S"] and out["IO"]["ratio"] == pytest.approx(1.1)
    assert not out["S"]["occluded"] and out["S"]["ratio"] is None
    assert not out["Pos"]["occluded"]  # not causally relevant
    # IO covered: nothing is occluded
    assert not it.occlusion({"IO": 1.0, "S": 3.0}, {"IO": 0.9, "S": 0.9}, {"IO": 0.8, "S": 0.9})["IO"]["occluded"]


def test_normalized_xy():
    assert ct.normalized_xy(0.3, 0.9, 0.3, 0.9, 0.2) == (0.0, 1.0)
    x, y = ct.normalized_xy(1.0, 0.2, 0.3, 0.9, 0.2)
    assert x == pytest.approx(1.0) and y == pytest.approx(0.0)
    assert math.isnan(ct.normalized_xy(0.5, 0.5, 0.3, 0.5, 0.5)[1])
    x, y = ct.normalized_xy(torch.tensor([0.3, 0.1]), torch.tensor([0.9, 0.55]), torch.tensor([0.3, 0.3]),
                            torch.tensor([0.9, 0.9]), torch.tensor([0.2, 0.2]))  # paired resamples
    assert x.tolist() == pytest.approx([0.0, -0.2 / 0.7]) and y.tolist() == pytest.approx([1.0, 0.5])


def test_edit_sizes_are_the_authors():
    assert ct.K_VALUES == (2, 4, 8, 16)
    assert [ct.f1_exchange(k) for k in ct.K_VALUES] == [1, 2, 4, 8]  # remove k/2, add k/2


def test_edit_accuracy_and_greedy_edit_is_exact_for_one_feature_move():
    assert float(ct.edit_accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]))) == pytest.approx(2 / 3)
    feats = torch.eye(4)
    f_src = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    f_cf = torch.tensor([[0.0, 3.0, 2.0, 0.0]])
    diff = f_cf @ feats - f_src @ feats
    delta, chosen = ct.greedy_edit(f_src, f_cf, feats, diff, k=1)
    assert chosen[0].tolist() == [False, True, False, False]  # the largest move first
    delta, chosen = ct.greedy_edit(f_src, f_cf, feats, diff, k=2)
    assert torch.allclose(delta, diff)
    assert chosen[0].tolist() == [True, True, False, False]


def test_select_by_rank_takes_first_k_active_ok_features():
    active = torch.tensor([[True, False, True, True]])
    order = torch.tensor([[3, 1, 0, 2]])
    ok = torch.tensor([[True, True, False, True]])
    m = ct.select_by_rank(active, order, ok, 1)
    assert m[0].tolist() == [False, False, False, True]
    m = ct.select_by_rank(active, order, ok, 2)
    assert m[0].tolist() == [False, False, True, True]  # feature 0 is active but not ok
