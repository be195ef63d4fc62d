"""bench/ioi_settings.py's parsing of settings and its read of how a ± shrinks with the train prompts."""

from __future__ import annotations

import math

import pytest

@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("ioi_settings")


def test_settings_parse_with_and_without_fit(bench):
    assert bench.parse_setting("24000x3000") == (24000, 3000, None)
    assert bench.parse_setting("192000x3000x48000") == (192000, 3000, 48000)
    for bad in ("24000", "24kx3000", "1x2x3x4", "-5x100"):
        with pytest.raises(SystemExit, match="n_train x n_eval"):
            bench.parse_setting(bad)


def test_se_scaling_reads_the_exponent_of_each_kind_of_number(bench):
    """A mean's ± halves at 4x the prompts (exponent 1/2); a count's that falls by 4^-1/4 reads 1/4; the median
    over numbers is taken, and ± of 0 (a number the bootstrap cannot move) are left out."""
    def run(n_scale):
        se = {}
        for i in range(5):
            se[f"interpretability:cs/mean/loc/IO/0.5/x{i}/mean_best_f1"] = 0.004 * (1 + i / 10) * n_scale ** -0.5
            se[f"interpretability:cs/mean/loc/IO/0.5/x{i}/coverage"] = 0.03 * (1 + i / 10) * n_scale ** -0.25
        se["interpretability:cs/mean/loc/Pos/0.5/coverage"] = 0.0
        return {"se": se}

    out = bench.se_scaling({"1000x100": run(1), "4000x100": run(4)}, ["1000x100", "4000x100"])
    cov, f1 = out["4000x100 vs 1000x100/coverage"], out["4000x100 vs 1000x100/mean_best_f1"]
    assert cov["n"] == 5 and f1["n"] == 5 and cov["n_train_ratio"] == 4
    assert math.isclose(cov["exponent"], 0.25, rel_tol=1e-9) and math.isclose(f1["exponent"], 0.5, rel_tol=1e-9)
    assert "4000x100 vs 1000x100/interpretable_fraction" not in out  # no such numbers


def test_compare_counts_the_differences_within_their_own_plus_minus(bench):
    """A difference beyond the tolerance but within 2 ± is counted as covered by the ± the report shows; one
    beyond both is not; a number without a ± counts only by the tolerance."""
    ref = {"interpretability:a/coverage": 0.50, "interpretability:b/coverage": 0.50, "approximation:c/fvu": 0.10,
           "approximation:d/fvu": 0.10}
    run = {"values": {"interpretability:a/coverage": 0.55, "interpretability:b/coverage": 0.60, "approximation:c/fvu": 0.11,
                      "approximation:d/fvu": 0.15},
           "se": {"interpretability:a/coverage": 0.03, "interpretability:b/coverage": 0.03, "approximation:c/fvu": 0.001},
           "se_fit": {"interpretability:a/coverage": 0.024}, "wall_s": 1.0}
    s = bench.compare(run, ref, 0.02)
    assert s["within_tol"] == 1 and s["n"] == 4 and s["n_with_se"] == 3
    assert s["within_2se"] == 1 and s["within_3se"] == 1  # a: 1.67 ±; b: 3.3 ±; c: 10 ±
    assert s["within_tol_or_2se"] == 2  # a by its ±, c by the tolerance; b and d by neither
    assert s["n_with_se_fit"] == 1 and s["within_2se_without_fit"] == 0  # a's ± without the fit's part is 0.018: 2.8 ±
