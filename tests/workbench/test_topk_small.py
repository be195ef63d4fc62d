"""The small top-m kernel (workbench/topk_small.py) selects what torch.topk selects, best first, and
Feature Choice's allocation through it equals the torch path's.

On the CPU by Triton's interpreter (TRITON_INTERPRET=1 is read when Triton is imported, so that check runs in
a fresh process); on a GPU, the compiled kernel (skipped without one)."""

import textwrap

import pytest
import torch

pytest.importorskip("triton")

from tests.triton_interpret import interpret  # noqa: E402

CHECK = """
import torch
from workbench import alloc, topk_small as T

def same_selection(x, m):
    v, i = T.row_topk_small(x, m)
    rv, _ = x.topk(m, dim=1, sorted=True)
    assert v.dtype == x.dtype and i.dtype == torch.long and i.shape == (x.shape[0], m)
    assert torch.equal(v, rv), (v, rv)  # same values, best first (ties may pick another index)
    assert torch.equal(x.gather(1, i), v)
    assert (i.sort(1).values.diff(dim=1) > 0).all()  # m distinct entries per row

g = torch.Generator().manual_seed(0)
dev = DEVICE
for rows, n, m in [(5, 37, 3), (9, 300, 6), (3, 16, 16), (4, 1, 1), (2, 5000, 2)]:
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(rows, n, generator=g).to(dev, dt)
        assert T.usable(x, m), (rows, n, m, dt)
        same_selection(x, m)
x = torch.randn(700, 50, generator=g).to(dev)
same_selection(x.t(), 4)  # column-major input, as Feature Choice's pre-activations
x = torch.randint(0, 3, (6, 40), generator=g).float().to(dev)  # many ties
same_selection(x, 5)
assert not T.usable(torch.zeros(2, 10, device=dev), T.MAX_M + 1)  # larger m: torch.topk
# Feature Choice's allocation, uniform and varying capacities: the same pairs' values as torch's path
pre = torch.randn(300, 64, generator=g).to(dev).t().contiguous().t()  # (N, f) column-major
for caps in (alloc.uniform_capacities(300 * 4, 64).to(dev), torch.randint(0, 9, (64,), generator=g).to(dev)):
    T.ENABLED = True
    a = alloc.topk_per_col(pre, caps)
    T.ENABLED = False
    b = alloc.topk_per_col(pre, caps)
    assert torch.equal(a.col_counts(), b.col_counts())
    key = lambda al: (al.rows * 64 + al.cols).sort().values
    assert torch.equal(key(a), key(b))
print("OK")
"""


def test_small_topk_kernel_in_the_interpreter():
    assert "OK" in interpret(CHECK.replace("DEVICE", "'cpu'"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_small_topk_kernel_on_cuda():
    ns: dict = {}
    exec(textwrap.dedent(CHECK).replace("DEVICE", "'cuda'"), ns)  # noqa: S102 - the same checks, compiled
