"""The sparse path equals dense autograd: outputs and all gradients, every variant, with aux losses."""

import pytest
import torch

from sae.config import ARCHS, SAEConfig
from sae.kernels import Plan, sampled_dots
from sae.losses import aux_loss, cover_loss, fvu, l1_penalty, zipf_weights
from sae.model import build_sae
from workbench import alloc


def _pair(arch, kernel_a="sparse", kernel_b="dense", d_in=16, d_sae=64, k=4, **kw):
    g = torch.Generator().manual_seed(1)
    saes = []
    for kernel in (kernel_a, kernel_b):
        s = build_sae(SAEConfig(arch=arch, k=k, d_sae=d_sae, kernel=kernel, **kw).resolve(d_in))
        s.init_weights(torch.Generator().manual_seed(0))
        saes.append(s)
    with torch.no_grad():
        b_enc = torch.randn(d_sae, generator=g) * 0.5  # some pre-activations negative: ReLU zeros
        b_dec = torch.randn(d_in, generator=g) * 0.1
        for s in saes:
            s.b_enc.copy_(b_enc)
            s.b_dec.copy_(b_dec)
    return saes


def _grads(sae, x, aux=None, density=None, dead=None):
    sae.zero_grad()
    out = sae(x)
    loss = fvu(x, out.x_hat) + 0.1 * l1_penalty(out)
    if aux == "aux_k":
        loss = loss + aux_loss(sae, out, dead.float(), k_aux=6)
    elif aux == "aux_zipf":
        loss = loss + aux_loss(sae, out, zipf_weights(density, sae.cfg.k), k_aux=6)
    elif aux == "cover":
        loss = loss + cover_loss(sae, out, k=sae.cfg.k)
    loss.backward()
    return out, loss, {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("aux", [None, "aux_k", "aux_zipf", "cover"])
@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_gradients_equal_dense_autograd(arch, aux):
    sparse, dense = _pair(arch)
    x = torch.randn(96, 16, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    density = torch.rand(64, generator=g) * 0.1
    density[::5] = 0
    dead = torch.rand(64, generator=g) < 0.3
    out_s, loss_s, gs = _grads(sparse, x, aux, density, dead)
    out_d, loss_d, gd = _grads(dense, x, aux, density, dead)
    assert torch.equal(out_s.alloc.rows, out_d.alloc.rows) and torch.equal(out_s.alloc.cols, out_d.alloc.cols)
    torch.testing.assert_close(out_s.x_hat, out_d.x_hat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_s, loss_d, atol=1e-6, rtol=1e-5)
    for name in gd:
        torch.testing.assert_close(gs[name], gd[name], atol=1e-5, rtol=1e-4, msg=f"{arch} {aux} grad of {name}")
    assert all(gd[n].abs().sum() > 0 for n in gd)


@pytest.mark.parametrize("arch", ["feature-choice", "mutual-choice"])
def test_threshold_mode_gradients_equal_dense(arch):
    sparse, dense = _pair(arch)
    with torch.no_grad():
        for s in (sparse, dense):
            s.threshold.copy_(torch.linspace(0.0, 1.0, 64))
            s.set_mode("threshold")
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(4))
    _, _, gs = _grads(sparse, x)
    _, _, gd = _grads(dense, x)
    for name in gd:
        torch.testing.assert_close(gs[name], gd[name], atol=1e-5, rtol=1e-4)


def test_sampled_dots_handles_empty_rows_and_unsorted_columns():
    rows = torch.tensor([0, 0, 0, 2, 2, 4])
    cols = torch.tensor([5, 1, 3, 0, 7, 2])  # unsorted within a row, rows 1 and 3 empty
    a = alloc.Allocation(rows, cols, torch.ones(6), (5, 8))
    x, w = torch.randn(5, 3), torch.randn(8, 3)
    ref = (x[rows] * w[cols]).sum(-1)
    torch.testing.assert_close(sampled_dots(x, w, Plan(a)), ref)


def test_feature_choice_column_major_layout_gives_same_allocation():
    s = build_sae(SAEConfig(arch="feature-choice", k=4, d_sae=64).resolve(16))
    s.init_weights(torch.Generator().manual_seed(0))
    x = torch.randn(40, 16)
    pre_col = s.pre_acts(x - s.b_dec)
    pre_row = torch.addmm(s.b_enc, x - s.b_dec, s.W_enc).detach()
    assert pre_col.stride(0) == 1  # written column-major
    a, b = s.allocate(pre_col.detach()), s.allocate(pre_row)
    assert torch.equal(a.mask(), b.mask())


@pytest.mark.parametrize("arch", ["topk", "feature-choice", "mutual-choice"])
def test_bfloat16_selection_keeps_float32_codes_and_gradients(arch):
    """precision=bfloat16 chooses the pairs on bf16 pre-activations, but the codes at those pairs and
    every gradient are those of float32 dense autograd on the same pairs."""
    sae, ref = _pair(arch, kernel_a="sparse", kernel_b="dense", precision="bfloat16", normalize="none")
    assert sae.select_dtype(torch.device("cpu")) == torch.bfloat16
    assert ref.select_dtype(torch.device("cpu")) == torch.float32  # the dense kernel differentiates through pre
    x = torch.randn(48, 16, generator=torch.Generator().manual_seed(3))
    out = sae(x)
    assert out.pre.dtype == torch.bfloat16 and out.values.dtype == torch.float32
    pre32 = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # (N, d_sae) float32
    torch.testing.assert_close(out.values, pre32[out.alloc.rows, out.alloc.cols].relu(), atol=1e-5, rtol=1e-5)
    # the pairs are a top-k of the bf16 pre-activations: every chosen value is within bf16 rounding of the
    # float32 selection's smallest chosen value
    if arch == "topk":
        kth = pre32.topk(sae.cfg.k, dim=1).values[:, -1]  # (N,)
        assert (pre32[out.alloc.rows, out.alloc.cols] >= kth[out.alloc.rows] - 0.02 * kth.abs().max()).all()
    # gradients: the sparse bf16-selected step equals dense float32 autograd restricted to the same pairs
    sae.zero_grad()
    loss = fvu(x, out.x_hat)
    loss.backward()
    W_enc, b_enc, W_dec = (p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.b_enc, sae.W_dec))
    pre = (x - sae.b_dec.detach()) @ W_enc + b_enc
    codes = torch.zeros_like(pre).index_put((out.alloc.rows, out.alloc.cols), pre[out.alloc.rows, out.alloc.cols]).relu()
    fvu(x, codes @ W_dec + sae.b_dec.detach()).backward()
    for p, q in ((sae.W_enc, W_enc), (sae.b_enc, b_enc), (sae.W_dec, W_dec)):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4)


def test_counts_equal_bincount():
    idx = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(0))
    keep = torch.rand(1000, generator=torch.Generator().manual_seed(1)) > 0.3
    assert torch.equal(alloc.counts(idx, 60), torch.bincount(idx, minlength=60))
    assert torch.equal(alloc.counts(idx, 60, keep=keep), torch.bincount(idx[keep], minlength=60))
