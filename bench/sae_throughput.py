"""SAE training throughput: our TopK trainer vs SAELens and EleutherAI sparsify, in one run.

    .venv/bin/python bench/sae_throughput.py            # d_in 256, d_sae 4096, k 16, batch 4096, 60 steps

Every trainer sees the same planted-sparse synthetic activations (x = sparse codes @ a random unit
dictionary + noise, scaled so E|x|^2 = d_in), the same d_in, d_sae, k, batch, number of Adam steps
and learning rate (constant, no warm-up). Reported per trainer: tokens/s over all steps, ratios,
and FVU on a held-out batch. Rows:

- matmul floor: one dense N x d_in x d_sae encoder matmul per batch (no trainer can beat it)
- ours topk (sparse kernel, the default) and ours topk (dense autograd, the reference path)
- SAELens ``TopKTrainingSAE`` trained by ``SAETrainer.fit()`` from an iterator of batches
- sparsify ``SparseCoder`` with the per-step work of its own trainer (decoder renorm, fused
  encoder + FVU, backward, remove parallel gradient, Adam)
- ours feature-choice / mutual-choice: step time relative to ours topk (goal <= 1.2x)

SAELens and sparsify are benchmark-only dependencies (pyproject extra ``bench``):
``.venv/bin/pip install -c constraints.txt sae-lens eai-sparsify``.
Timings on a shared 2-core CPU move by +-20% between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import torch


def planted_data(n_batches: int, batch: int, d_in: int, n_atoms: int, k_true: int, seed: int) -> list[torch.Tensor]:
    """Batches of x = sum of k_true random atoms (|N(0,1)| + 0.5 weights) + 1% noise, E|x|^2 = d_in."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    out = []
    for _ in range(n_batches):
        idx = torch.rand(batch, n_atoms, generator=g).topk(k_true, dim=1).indices  # (batch, k_true)
        w = torch.randn(batch, k_true, generator=g).abs() + 0.5
        x = torch.einsum("bk,bkd->bd", w, atoms[idx]) + 0.01 * torch.randn(batch, d_in, generator=g)
        out.append(x)
    scale = (d_in / torch.cat(out).pow(2).sum(1).mean()).sqrt()
    return [x * scale for x in out]


def fvu_of(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def bench_floor(data, d_sae: int) -> float:
    w = torch.randn(data[0].shape[1], d_sae) / data[0].shape[1] ** 0.5
    data[0] @ w  # warm-up
    t = time.perf_counter()
    for x in data:
        x @ w
    return time.perf_counter() - t


def bench_ours(data, heldout, a, arch="topk", kernel="sparse"):
    from sae.config import SAEConfig, TrainConfig
    from sae.model import build_sae
    from sae.trainer import Schedule, make_optimizer, train_step
    from workbench.acts import ActsConfig

    cfg = TrainConfig(acts=ActsConfig(batch_size=a.batch), sae=SAEConfig(arch=arch, k=a.k, d_sae=a.d_sae, kernel=kernel),
                      tokens=a.batch * a.steps, lr=a.lr, warmup_steps=0, decay_frac=0.0, aux="aux_k", normalize="none")
    sae = build_sae(cfg.sae.resolve(a.d_in))
    sae.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_dec.copy_(data[0].mean(0))
    opt = make_optimizer(sae, a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Schedule(0, a.steps, 0.0))
    k_aux = cfg.aux_k(a.d_in, a.d_sae)
    t = time.perf_counter()
    for x in data:  # what the trainer loop does per batch
        if not torch.isfinite(x).all():
            raise FloatingPointError
        train_step(sae, opt, sched, x, cfg, k_aux)
    el = time.perf_counter() - t
    with torch.no_grad():
        return el, fvu_of(heldout, sae(heldout).x_hat)


def bench_saelens(data, heldout, a):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a.d_in, d_sae=a.d_sae, k=a.k, dtype="float32", device="cpu"))
    with torch.no_grad():
        sae.b_dec.copy_(data[0].mean(0))
    tcfg = SAETrainerConfig(total_training_samples=a.batch * a.steps, train_batch_size_samples=a.batch, lr=a.lr, lr_end=a.lr,
                            device="cpu", logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(tcfg, sae, iter(data))
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        trainer.fit()
    el = time.perf_counter() - t
    with torch.no_grad():
        return el, fvu_of(heldout, sae(heldout))


def bench_sparsify(data, heldout, a):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(a.d_in, SparseCoderConfig(k=a.k, num_latents=a.d_sae), device="cpu")
    with torch.no_grad():
        sae.b_dec.copy_(data[0].mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=a.lr)
    since_fired = torch.zeros(a.d_sae, dtype=torch.long)
    t = time.perf_counter()
    for x in data:  # the per-step work of sparsify's Trainer.fit with loss_fn="fvu", auxk on
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since_fired > 10_000_000)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired += x.shape[0]
            since_fired[out.latent_indices.flatten()] = 0
    el = time.perf_counter() - t
    with torch.no_grad():
        sae.set_decoder_norm_to_unit_norm()
        return el, fvu_of(heldout, sae(heldout).sae_out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=4e-4, help="default: 2e-4 / sqrt(d_sae / 2^14) for d_sae 4096")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--only", nargs="+", default=None, help="subset of rows: floor ours dense saelens sparsify fc mc")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = a.only or ["floor", "ours", "dense", "saelens", "sparsify", "fc", "mc"]
    missing = []
    for mod, row, pkg in (("sae_lens", "saelens", "sae-lens"), ("sparsify", "sparsify", "eai-sparsify")):
        if row in rows:
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    __import__(mod)
            except ImportError:
                missing.append(pkg)
    if missing:
        print(f"sae_throughput: needs {' and '.join(missing)} (benchmark-only): "
              f".venv/bin/pip install -c constraints.txt {' '.join(missing)}", file=sys.stderr)
        return 2
    print(f"d_in {a.d_in}, d_sae {a.d_sae}, k {a.k}, batch {a.batch}, {a.steps} Adam steps, lr {a.lr}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    data = planted_data(a.steps + 1, a.batch, a.d_in, n_atoms=2 * a.d_sae, k_true=a.k, seed=0)
    heldout = data.pop()  # same atoms, codes not trained on
    tokens = a.batch * a.steps
    res: dict[str, tuple[float, float | None]] = {}
    runs = {"floor": ("dense encoder matmul (floor)", lambda: (bench_floor(data, a.d_sae), None)),
            "ours": ("ours topk (sparse kernel)", lambda: bench_ours(data, heldout, a)),
            "dense": ("ours topk (dense autograd)", lambda: bench_ours(data, heldout, a, kernel="dense")),
            "saelens": ("SAELens TopKTrainingSAE + SAETrainer", lambda: bench_saelens(data, heldout, a)),
            "sparsify": ("sparsify SparseCoder", lambda: bench_sparsify(data, heldout, a)),
            "fc": ("ours feature-choice (sparse)", lambda: bench_ours(data, heldout, a, arch="feature-choice")),
            "mc": ("ours mutual-choice (sparse)", lambda: bench_ours(data, heldout, a, arch="mutual-choice"))}
    for key in rows:
        name, fn = runs[key]
        el, f = fn()
        res[key] = (el, f)
        print(f"  {name:<40} {tokens / el:>9,.0f} tok/s  {1000 * el / a.steps:7.1f} ms/step"
              + (f"  FVU {f:.4f}" if f is not None else ""), flush=True)
    tps = {k: tokens / v[0] for k, v in res.items()}
    print("ratios")
    for a_, b_, what in (("ours", "saelens", "ours / SAELens"), ("ours", "sparsify", "ours / sparsify"),
                         ("ours", "floor", "ours / matmul floor"), ("ours", "dense", "sparse / dense kernel"),
                         ("sparsify", "saelens", "sparsify / SAELens")):
        if a_ in tps and b_ in tps:
            print(f"  {what:<28} {tps[a_] / tps[b_]:.2f}x")
    for key, what in (("fc", "feature-choice"), ("mc", "mutual-choice")):
        if key in res and "ours" in res:
            print(f"  {what} step time / topk   {res[key][0] / res['ours'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
