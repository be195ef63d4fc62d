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
    sae = build_sae(SAEConfig(arch=arch, k=4, d_sae=64, kernel=kernel, precision="float32").resolve(16))  # same selection
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


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ["topk", "feature-choice", "mutual-choice"])
def test_triton_kernels_on_cuda_match_the_torch_kernels(arch, precision):
    """The compiled Triton kernels (sae/triton_ops.py) against torch's embedding_bag / sampled_addmm on the
    same GPU: the same pairs, codes, reconstruction and every gradient (aux_k on a few dead latents)."""
    from sae import triton_ops

    if triton_ops.triton is None:
        pytest.skip("triton is not installed")
    sae = build_sae(SAEConfig(arch=arch, k=8, d_sae=512, kernel="sparse", precision=precision, normalize="none").resolve(96))
    sae.init_weights(torch.Generator().manual_seed(0))
    sae.cuda()
    x = torch.randn(1000, 96, generator=torch.Generator().manual_seed(1)).cuda()
    dead = torch.zeros(512, device="cuda")
    dead[::7] = 1.0
    saved = set(triton_ops.KERNELS)
    results = []
    try:
        for kernels in ({"dots", "bag"}, set()):
            triton_ops.KERNELS = kernels
            s = copy.deepcopy(sae)
            out = s(x)
            (fvu(x, out.x_hat) + aux_loss(s, out, dead, k_aux=16)).backward()
            results.append((out, {n: p.grad for n, p in s.named_parameters()}))
    finally:
        triton_ops.KERNELS = saved
    (out_t, g_t), (out_r, g_r) = results
    assert torch.equal(out_t.alloc.cols, out_r.alloc.cols)
    torch.testing.assert_close(out_t.values, out_r.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_t.x_hat, out_r.x_hat, atol=1e-5, rtol=1e-5)
    for n in g_r:
        torch.testing.assert_close(g_t[n], g_r[n], atol=1e-5, rtol=1e-4, msg=f"{arch} {precision} grad of {n}")


def test_bfloat16_selection_on_cuda_keeps_float32_codes():
    sae = build_sae(SAEConfig(arch="topk", k=16, d_sae=2048, kernel="sparse", normalize="none").resolve(128)).cuda()
    sae.init_weights(torch.Generator().manual_seed(0))
    assert sae.select_dtype(torch.device("cuda")) == torch.bfloat16  # precision auto on a GPU
    x = torch.randn(512, 128, device="cuda")
    out = sae(x)
    assert out.pre.dtype == torch.bfloat16
    pre32 = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(out.values, pre32[out.alloc.rows, out.alloc.cols].relu(), atol=1e-4, rtol=1e-4)
    # the chosen pairs are the float32 top-k up to bf16 near-ties: at least 95% agree
    chosen32 = torch.zeros_like(pre32, dtype=torch.bool).scatter_(1, pre32.topk(16, dim=1).indices, True)
    agree = chosen32[out.alloc.rows, out.alloc.cols].float().mean()
    assert agree > 0.95


def _train_cuda(tmp_path, model=None, **kw):
    from sae.config import TrainConfig
    from sae.trainer import train
    from workbench.acts import ActsConfig

    acts = ActsConfig(model=kw.pop("model_name", "toy-ioi"), hook=kw.pop("hook", "blocks.1.hook_resid_post"),
                      batch_size=1024, seq_batch=32, shuffle_buffer=2048, device="cuda")
    cfg = TrainConfig(acts=acts, sae=SAEConfig(arch=kw.pop("arch", "topk"), k=8, expansion=4), tokens=1024 * 12, log_every=4,
                      checkpoint_every=8, eval_tokens=2048, dead_window=4096, warmup_steps=2, runs_dir=str(tmp_path), **kw)
    return train(cfg, model=model, progress=False)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_train_end_to_end_on_cuda_on_the_shipped_model(tmp_path, prefetch):
    """`workbench sae train --device cuda`: the model on the GPU streams into the SAE (with and without the
    prefetch thread); the run finishes, evaluates, and its weights load on the CPU."""
    from sae import io

    run = _train_cuda(tmp_path, prefetch=prefetch, name=f"p{prefetch}")
    assert run.status() == "done"
    ev = run.read_json("eval.json")
    assert 0 < ev["fvu"] < 0.8 and ev["ce_recovered"] > 0  # 12 steps: learning, not converged
    sae = io.load(run.path)
    assert sae.W_enc.device.type == "cpu"


def test_train_on_cuda_from_a_gpt2_small_shaped_model(tmp_path):
    """Realistic shapes: a randomly initialised HookedTransformer of GPT-2 small's shape (d_model 768)."""
    from workbench.models import gpt2_small_shaped

    model = gpt2_small_shaped("cuda")
    run = _train_cuda(tmp_path, model=model, model_name="gpt2-small-shaped", hook="blocks.6.hook_resid_post", arch="mutual-choice")
    assert run.status() == "done"
    assert run.read_json("config.json")["config"]["sae"]["d_in"] == 768
    assert 0 < run.read_json("eval.json")["fvu"] < 1.0
