"""The Triton kernels (sae/triton_ops.py) give the torch path's answers: gathered dot products, segment
sums, and whole SAE steps (codes, reconstructions, every gradient) of each architecture.

Run on the CPU by Triton's interpreter (TRITON_INTERPRET=1, read when Triton is imported, so each check
runs in a fresh process); on a GPU, tests/sae/test_cuda.py runs the compiled kernels."""

import pytest

pytest.importorskip("triton")

from tests.triton_interpret import interpret  # noqa: E402


def _interpret(code: str) -> str:
    return interpret(code, WORKBENCH_TRITON="1")


def test_sampled_dots_and_segment_sum_match_torch():
    out = _interpret("""
        import torch, torch.nn.functional as F
        from sae import triton_ops as T
        assert T.usable(torch.zeros(1), "dots") and T.usable(torch.zeros(1), "bag")
        g = torch.Generator().manual_seed(0)
        a, W = torch.randn(37, 70, generator=g), torch.randn(70, 150, generator=g)  # d = 70: not a block multiple
        b = W.t()  # (150, 70), non-contiguous like W_enc^T
        rows = torch.randint(0, 37, (301,), generator=g).sort().values
        cols = torch.randint(0, 150, (301,), generator=g)
        bias = torch.randn(150, generator=g)
        ref = (a[rows] * b[cols]).sum(1)
        torch.testing.assert_close(T.sampled_dots(a, b, rows, cols), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(T.sampled_dots(a, b, rows, cols, bias), ref + bias[cols], atol=1e-5, rtol=1e-5)
        assert T.sampled_dots(a, b, rows[:0], cols[:0]).shape == (0,)
        # segments with empty ones inside and at the end, and one longer than a block
        counts = torch.tensor([0, 3, 40, 0, 1, 7, 0])
        idx = torch.randint(0, 37, (int(counts.sum()),), generator=g)
        w = torch.randn(idx.numel(), generator=g)
        offsets = torch.cumsum(counts, 0) - counts
        ref = F.embedding_bag(idx, a, offsets, mode="sum", per_sample_weights=w)
        torch.testing.assert_close(T.segment_sum(idx, a, offsets, w), ref, atol=1e-5, rtol=1e-5)
        print("OK")
    """)
    assert "OK" in out


def test_sae_step_with_triton_kernels_matches_torch_kernels():
    out = _interpret("""
        import copy, torch
        from sae import triton_ops as T
        from sae.config import SAEConfig
        from sae.losses import aux_loss, fvu
        from sae.model import build_sae

        def step(sae, x):
            sae.zero_grad()
            out = sae(x)
            w = torch.zeros(64); w[::5] = 1.0  # a few "dead" latents for aux_k
            loss = fvu(x, out.x_hat) + aux_loss(sae, out, w, k_aux=3)
            loss.backward()
            return out, {n: p.grad.clone() for n, p in sae.named_parameters()}

        for arch in ("topk", "feature-choice", "mutual-choice"):
            for precision in ("float32", "bfloat16"):
                sae = build_sae(SAEConfig(arch=arch, k=4, d_sae=64, kernel="sparse", precision=precision,
                                          normalize="none").resolve(24))
                sae.init_weights(torch.Generator().manual_seed(0))
                x = torch.randn(40, 24, generator=torch.Generator().manual_seed(1))
                T.KERNELS = {"dots", "bag"}
                out_t, g_t = step(sae, x)
                T.KERNELS = set()
                out_r, g_r = step(copy.deepcopy(sae), x)
                assert torch.equal(out_t.alloc.cols, out_r.alloc.cols), (arch, precision)
                torch.testing.assert_close(out_t.values, out_r.values, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(out_t.x_hat, out_r.x_hat, atol=1e-5, rtol=1e-5)
                for n in g_r:
                    torch.testing.assert_close(g_t[n], g_r[n], atol=1e-5, rtol=1e-4, msg=f"{arch} {precision} {n}")
        print("OK")
    """)
    assert "OK" in out
