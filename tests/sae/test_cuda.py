"""The SAE on CUDA gives the CPU's answers: allocations, reconstructions, losses and every gradient
of the sparse kernels, each architecture, with aux losses. Skipped without a GPU; run on a lent GPU
machine (docs/ records where and when)."""

import copy

import pytest
import torch

from sae.config import ARCHS, SAEConfig
from sae.losses import aux_loss, fvu, l1_penalty, zipf_weights
from sae.model import build_sae

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _step(sae, x, density):
    sae.zero_grad()
    out = sae(x)
    loss = fvu(x, out.x_hat) + 0.1 * l1_penalty(out) + aux_loss(sae, out, zipf_weights(density, sae.cfg.k), k_aux=6)
    loss.backward()
    return out, loss, {n: p.grad for n, p in sae.named_parameters()}


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
@pytest.mark.parametrize("arch", ARCHS)
def test_sae_step_on_cuda_matches_cpu(arch, kernel):
    if arch == "relu-l1" and kernel == "sparse":
        pytest.skip("relu-l1 has no sparse kernel")
    sae = build_sae(SAEConfig(arch=arch, k=4, d_sae=64, kernel=kernel).resolve(16))
    sae.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(64, generator=torch.Generator().manual_seed(1)) * 0.5)
    sae_g = copy.deepcopy(sae).cuda()
    x = torch.randn(96, 16, generator=torch.Generator().manual_seed(2))
    density = torch.rand(64, generator=torch.Generator().manual_seed(3)) * 0.1
    out, loss, grads = _step(sae, x, density)
    out_g, loss_g, grads_g = _step(sae_g, x.cuda(), density.cuda())
    assert out_g.x_hat.device.type == "cuda"
    key = lambda a: (a.rows * 64 + a.cols).sort().values.cpu()  # noqa: E731 - pair order within a row is free
    assert torch.equal(key(out.alloc), key(out_g.alloc)), "different (token, latent) pairs on CUDA"
    torch.testing.assert_close(out_g.x_hat.cpu(), out.x_hat, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss_g.cpu(), loss, atol=1e-6, rtol=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(grads_g[name].cpu(), g, atol=1e-5, rtol=1e-4, msg=f"{arch} {kernel} grad of {name}")
