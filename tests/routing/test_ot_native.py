"""routing.ot_native: the C BFGS solve against the torch one, its threading, dtypes, build cache and fallback."""

import pytest
import torch

from routing import ot_native
from routing.benchmarks import router_costs
from routing.sparse_ot import MarginalError, solve_sparse_ot

f64 = torch.float64

pytestmark = pytest.mark.skipif(not ot_native.available(), reason="no C compiler for the native solver")


@pytest.mark.parametrize("row_mass,col_mass", [(1 / 8, 1 / 96), (12.0, 1.0)])
def test_native_solve_equals_the_torch_solve(row_mass, col_mass):
    """Same algorithm, same arithmetic in float64: the same optimum (D to 1e-9, plans to 1e-6 of their max)."""
    cost = router_costs(6, 8, 96, 41)
    a, b = torch.full((8,), row_mass, dtype=f64), torch.full((96,), col_mass, dtype=f64)
    nat = solve_sparse_ot(cost, a, b, 2, 1.0, backend="native")
    ref = solve_sparse_ot(cost, a, b, 2, 1.0, backend="torch", compile=False)
    torch.testing.assert_close(nat.value, ref.value, atol=1e-9 * float(ref.value.abs().max()), rtol=0)
    torch.testing.assert_close(nat.plan, ref.plan, atol=1e-6 * float(ref.plan.max()), rtol=0)
    assert ((nat.plan > 0).sum(-2) <= 2).all()
    torch.testing.assert_close(nat.plan.sum(-2), b.expand(6, 96), atol=1e-13 * col_mass, rtol=0)
    assert nat.converged.tolist() == ref.converged.tolist()


def test_threads_split_the_batch_without_changing_any_result():
    cost = router_costs(7, 8, 64, 42)
    a, b = torch.full((7, 8), 1 / 8, dtype=f64), torch.full((7, 64), 1 / 64, dtype=f64)
    one = ot_native.bfgs(cost, a, b, 2, 1.0, 200, 1e-9, 1e-10, 1e-8, threads=1)
    three = ot_native.bfgs(cost, a, b, 2, 1.0, 200, 1e-9, 1e-10, 1e-8, threads=3)
    assert one.keys() == three.keys()
    for name in one:
        assert torch.equal(torch.as_tensor(one[name]), torch.as_tensor(three[name])), name


def test_float32_costs_are_solved_in_float64_and_returned_in_float32():
    cost = router_costs(2, 8, 64, 43)
    a, b = torch.full((8,), 1 / 8, dtype=f64), torch.full((64,), 1 / 64, dtype=f64)
    res32 = solve_sparse_ot(cost.float(), a.float(), b.float(), 2, 1.0, backend="native")
    res64 = solve_sparse_ot(cost, a, b, 2, 1.0, backend="native")
    assert res32.plan.dtype == torch.float32 and res32.alpha.dtype == torch.float32
    torch.testing.assert_close(res32.value.double(), res64.value, atol=1e-5 * float(res64.value.abs().max()), rtol=0)


def test_gradients_flow_through_the_native_solve():
    """The implicit-function backward is torch's, whatever solved the forward: the two must agree."""
    cost = router_costs(1, 4, 12, 44)[0]
    a, b = torch.full((4,), 0.25, dtype=f64), torch.full((12,), 1 / 12, dtype=f64)
    w = torch.randn(4, 12, dtype=f64, generator=torch.Generator().manual_seed(0))
    grads = []
    for backend in ("native", "torch"):
        c = cost.clone().requires_grad_(True)
        (solve_sparse_ot(c, a, b, 2, 1.0, tol=1e-13, backend=backend).plan * w).sum().backward()
        grads.append(c.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-6)


def test_builds_once_into_the_cache_and_says_so(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    ot_native._build()
    built = list((tmp_path / "native").glob("ot_native-*.so"))
    assert len(built) == 1 and "building the native solver" in capfd.readouterr().err
    mtime = built[0].stat().st_mtime_ns
    ot_native._build()  # cached: no second build, no message
    assert built[0].stat().st_mtime_ns == mtime and capfd.readouterr().err == ""


def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    built = ot_native.library_path(ot_native._compiler())  # (a file this process has not loaded)
    built.parent.mkdir(parents=True)
    built.write_bytes(b"not a shared library")
    lib = ot_native._build()
    assert "building the native solver" in capfd.readouterr().err and built.stat().st_size > 1000
    assert lib.sparse_ot_bfgs is not None


def test_without_a_compiler_auto_falls_back_to_torch_and_native_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(ot_native, "_lib", None)
    monkeypatch.setattr(ot_native, "_failed", None)
    cost = router_costs(2, 4, 16, 45)
    a, b = torch.full((4,), 0.25, dtype=f64), torch.full((16,), 1 / 16, dtype=f64)
    with pytest.warns(UserWarning, match="native solver is unavailable"):
        res = solve_sparse_ot(cost, a, b, 2, 1.0)
    ref = solve_sparse_ot(cost, a, b, 2, 1.0, backend="torch")
    torch.testing.assert_close(res.plan, ref.plan, atol=0, rtol=0)
    with pytest.raises(MarginalError, match="backend='auto'"):
        solve_sparse_ot(cost, a, b, 2, 1.0, backend="native")


def test_native_backend_names_what_it_cannot_take():
    cost = router_costs(1, 4, 16, 46)[0]
    a, b = torch.full((4,), 0.25, dtype=f64), torch.full((16,), 1 / 16, dtype=f64)
    with pytest.raises(MarginalError, match="method 'bfgs'"):
        solve_sparse_ot(cost, a, b, 2, 1.0, method="newton", backend="native")
    with pytest.raises(MarginalError, match="auto, native, torch"):
        solve_sparse_ot(cost, a, b, 2, 1.0, backend="c")
