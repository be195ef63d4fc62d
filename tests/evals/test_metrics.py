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
    assert ap.sufficiency(clean, torch.tensor([2.0, 3.0])) == pytest.approx(0.5)
    assert ap.ld_recovered(clean, abl, torch.tensor([3.0, 3.0])) == pytest.approx(0.5)
    assert ap.necessity(clean, abl, torch.tensor([2.0, 2.0])) == pytest.approx(0.75)
    assert ap.necessity(clean, abl, abl) == pytest.approx(1.0)


def test_fvu_l0_shrinkage_dead():
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert ap.fvu(a, a) == 0.0
    assert ap.fvu(a, torch.zeros_like(a)) == pytest.approx(1.0)
    assert ap.shrinkage(a, 0.5 * a) == pytest.approx(0.5)
    codes = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    assert ap.l0(codes) == pytest.approx(1.5)
    assert ap.dead_fraction(codes) == pytest.approx(1 / 3)


def test_precision_recall_f1_hand_example():
    active = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.bool)  # 4 prompts, 2 features
    masks = it.value_masks(torch.tensor([0, 0, 1, 1]), 2)
    p, r, f1 = it.precision_recall_f1(active, masks)
    assert p[0, 0] == 1.0 and r[0, 0] == 1.0 and f1[0, 0] == 1.0
    assert p[1, 1] == 0.5 and r[1, 1] == 0.5 and f1[1, 1] == pytest.approx(0.5)
    assert f1[0, 1] == 0.0
    assert it.coverage(f1, 0.9) == 0.5


def test_active_pattern_is_relative_to_each_features_max():
    codes = torch.tensor([[1.0, 10.0, 0.0], [0.4, 7.0, 0.0], [0.6, 2.0, 0.0]])
    act = it.active_pattern(codes, 0.5)
    assert act[:, 0].tolist() == [True, False, True]
    assert act[:, 1].tolist() == [True, True, False]
    assert not act[:, 2].any()  # never-active feature


def test_over_splitting_flags_many_small_precise_features():
    # Pos=ABB on prompts 0..7; four features each fire on two of them; one feature is Pos=BAB exactly
    n = 16
    active = torch.zeros(n, 5, dtype=torch.bool)
    for j in range(4):
        active[2 * j: 2 * j + 2, j] = True
    active[8:, 4] = True
    masks = it.value_masks(torch.tensor([0] * 8 + [1] * 8), 2)
    p, r, _ = it.precision_recall_f1(active, masks)
    out = it.over_splitting(p, r)
    assert out["n_split"] == [4, 1]
    assert out["over_split"] == [True, False]
    assert out["summed_recall"][0] == pytest.approx(1.0)


def test_occlusion_needs_cause_low_coverage_and_a_larger_covered_attribute():
    out = it.occlusion({"IO": 1.0, "S": 3.0, "Pos": 0.5}, {"IO": 0.1, "S": 0.9, "Pos": 0.2},
                       {"IO": 0.8, "S": 0.9, "Pos": 0.0})
    assert out["IO"]["occluded"] and out["IO"]["by"] == ["S"]
    assert not out["S"]["occluded"]
    assert not out["Pos"]["occluded"]  # not causally relevant


def test_normalized_xy():
    assert ct.normalized_xy(0.3, 0.9, 0.3, 0.9, 0.2) == (0.0, 1.0)
    x, y = ct.normalized_xy(1.0, 0.2, 0.3, 0.9, 0.2)
    assert x == pytest.approx(1.0) and y == pytest.approx(0.0)
    assert math.isnan(ct.normalized_xy(0.5, 0.5, 0.3, 0.5, 0.5)[1])


def test_edit_accuracy_and_greedy_edit_is_exact_for_one_feature_move():
    assert ct.edit_accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)
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
