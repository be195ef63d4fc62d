"""routing.assignment: exact balanced assignment by successive shortest paths, against scipy."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from routing.assignment import _sinkhorn_prices as _prices
from routing.assignment import balanced_assignment_ssp


def _scipy_best(s: np.ndarray, cap: int) -> float:
    """Optimum of the same problem from scipy's assignment solver on experts replicated cap times."""
    r, c = linear_sum_assignment(np.repeat(s, cap, axis=1), maximize=True)
    return float(s[r, c // cap].sum())


@pytest.mark.parametrize("n,e,skew,seed", [(64, 8, 0.0, 0), (200, 16, 0.0, 1), (200, 16, 3.0, 2), (300, 16, 10.0, 3),
                                           (37, 4, 1.0, 4), (512, 16, 0.5, 5)])
def test_matches_scipy_optimum_and_respects_capacity(n, e, skew, seed, monkeypatch):
    """Random logits, some with one expert preferred by (almost) every token (skew > 2 takes the
    Sinkhorn-prices start), and N not divisible by E (zero-score dummy tokens fill the slack)."""
    import routing.assignment as asg

    starts = []
    monkeypatch.setattr(asg, "_sinkhorn_prices", lambda *a: starts.append(1) or _prices(*a))
    rng = np.random.default_rng(seed)
    s = 2 * rng.standard_normal((n, e))
    s[:, 0] += skew
    cap = -(-n // e)
    sigma = balanced_assignment_ssp(s, np.full(e, cap))
    assert sigma.shape == (n,) and np.bincount(sigma, minlength=e).max() <= cap
    assert s[np.arange(n), sigma].sum() == pytest.approx(_scipy_best(s, cap), rel=1e-12, abs=1e-9)
    if skew > 2:  # most tokens want expert 0: Sinkhorn's prices start the paths
        assert starts


def test_little_overload_starts_from_zero_prices(monkeypatch):
    """Tokens mostly prefer distinct experts (a few too many want the same ones): the shortest paths
    start from p = 0 and repair the overload alone."""
    import routing.assignment as asg

    starts = []
    monkeypatch.setattr(asg, "_sinkhorn_prices", lambda *a: starts.append(1) or _prices(*a))
    rng = np.random.default_rng(11)
    n, e = 512, 16
    s = 0.25 * rng.standard_normal((n, e))
    s[np.arange(n), np.arange(n) % e] += 1.0  # token i likes expert i mod e
    cap = n // e
    overload = np.maximum(np.bincount(s.argmax(1), minlength=e) - cap, 0).sum()
    assert 0 < overload <= n // 32
    sigma = balanced_assignment_ssp(s, np.full(e, cap))
    assert not starts
    assert (np.bincount(sigma, minlength=e) == cap).all()
    assert s[np.arange(n), sigma].sum() == pytest.approx(_scipy_best(s, cap), rel=1e-12)


def test_ties_and_forbidden_pairs():
    """Integer scores (many exact ties) and -inf pairs (BASE's second round excludes the first expert)."""
    rng = np.random.default_rng(7)
    s = rng.integers(0, 3, size=(96, 8)).astype(float)
    s[np.arange(96), rng.integers(0, 8, size=96)] = -np.inf
    sigma = balanced_assignment_ssp(s, np.full(8, 12))
    assert np.isfinite(s[np.arange(96), sigma]).all()
    assert (np.bincount(sigma, minlength=8) == 12).all()
    finite = np.where(np.isfinite(s), s, -1e6)
    assert s[np.arange(96), sigma].sum() == pytest.approx(_scipy_best(finite, 12), abs=1e-9)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="capacity"):
        balanced_assignment_ssp(np.zeros((10, 2)), np.array([4, 4]))
    s = np.zeros((4, 2))
    s[0] = -np.inf
    with pytest.raises(ValueError, match="allowed"):
        balanced_assignment_ssp(s, np.array([2, 2]))
