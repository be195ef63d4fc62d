"""SAE training throughput: our TopK trainer vs SAELens and EleutherAI sparsify, in one run.

    .venv/bin/python bench/sae_throughput.py            # d_in 256, d_sae 4096, k 16, batch 4096, 60 steps
    python bench/sae_throughput.py --device cuda --shapes issue   # issue 14's three GPU shapes, with peak memory

Every trainer sees the same planted-sparse synthetic activations (x = sparse codes @ a random unit
dictionary + noise, scaled so E|x|^2 = d_in), the same d_in, d_sae, k, batch, number of Adam steps
and learning rate (constant, no warm-up). Each trainer takes one untimed warm-up step on an extra
batch, then the timed steps run interleaved in blocks (``--block`` steps of one trainer, then the
next), so a change of load on a shared machine hits every trainer alike. Reported per trainer:
tokens/s over the timed steps, ratios, and FVU on a held-out batch. Rows:

- matmul floor: one dense N x d_in x d_sae encoder matmul per batch (no trainer can beat it)
- ours topk (sparse kernel, the default) and ours topk (dense autograd, the reference path)
- SAELens ``TopKTrainingSAE`` trained by ``SAETrainer`` through its per-step seam
  (``maybe_reset_sparsity(); step(batch)``: the body of ``fit()``'s loop without the progress bar)
- sparsify ``SparseCoder`` with the per-step work of its own trainer (decoder renorm, fused
  encoder + FVU, backward, remove parallel gradient, Adam)
- ours feature-choice / mutual-choice: step time relative to ours topk (goal <= 1.2x)

SAELens and sparsify are benchmark-only dependencies (pyproject extra ``bench``):
``.venv/bin/pip install -c constraints.txt sae-lens eai-sparsify``.
Timings on a shared 2-core CPU move by +-20% between runs.

On CUDA (``--device cuda``) every timed block ends with ``torch.cuda.synchronize()``, and each row also
reports its peak GPU memory: the memory the trainer holds after its warm-up step (parameters, Adam
state) plus the largest transient allocation of any of its timed blocks (the shared data batches are
not counted), and how many cudaMalloc calls and allocator retries its timed blocks caused (each one a
device sync; a steady state makes none). ``--shapes issue`` runs the three shapes of issue 14 (768/24576/k32/4096,
768/98304/k64/4096, 2048/65536/k64/8192) one after the other with the default rows.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import contextlib
import io
import os
import sys
import time

import torch


ISSUE_SHAPES = ((768, 24576, 32, 4096), (768, 98304, 64, 4096), (2048, 65536, 64, 8192))  # d_in, d_sae, k, batch


def planted_data(n_batches: int, batch: int, d_in: int, n_atoms: int, k_true: int, seed: int,
                 device: str = "cpu") -> list[torch.Tensor]:
    """Batches of x = sum of k_true random atoms (|N(0,1)| + 0.5 weights) + 1% noise, E|x|^2 = d_in."""
    g = torch.Generator(device=device).manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=g, device=device)
    atoms /= atoms.norm(dim=1, keepdim=True)
    out = []
    for _ in range(n_batches):
        idx = torch.rand(batch, n_atoms, generator=g, device=device).topk(k_true, dim=1).indices  # (batch, k_true)
        w = torch.randn(batch, k_true, generator=g, device=device).abs() + 0.5
        x = torch.einsum("bk,bkd->bd", w, atoms[idx]) + 0.01 * torch.randn(batch, d_in, generator=g, device=device)
        out.append(x)
    scale = (d_in / torch.cat(out).pow(2).sum(1).mean()).sqrt()
    return [x * scale for x in out]


def fvu_of(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


class Floor:
    """One dense N x d_in x d_sae encoder matmul per batch: the floor no trainer can beat."""

    def __init__(self, a):
        self.w = torch.randn(a.d_in, a.d_sae, device=a.device) / a.d_in ** 0.5

    def step(self, x):
        x @ self.w

    def fvu(self, x):
        return None


class FloorBF16(Floor):
    """The same matmul in bfloat16 (tensor cores on a GPU): the floor for a bfloat16 selection."""

    def __init__(self, a):
        super().__init__(a)
        self.w = self.w.bfloat16()

    def step(self, x):
        x.bfloat16() @ self.w


class Ours:
    """Our trainer's per-batch work: sae.trainer.train_step plus the finiteness check the trainer makes
    (every step on the CPU; on a GPU folded into a device flag that the trainer reads every log step).

    precision: SAEConfig.precision (auto: bfloat16 selection on CUDA); triton: which sae.triton_ops kernels
    this row uses; small_topk: workbench/topk_small.py's kernel for column top-m (Feature Choice). Each is set before each of the row's steps, so rows that differ interleave."""

    def __init__(self, a, data0, arch="topk", kernel="sparse", precision="auto", triton=None, small_topk=True):
        from sae import triton_ops
        from sae.config import SAEConfig, TrainConfig
        from sae.model import build_sae
        from sae.trainer import DeferredCheck, Schedule, make_optimizer
        from workbench.acts import ActsConfig

        self.knobs = {"kernels": set(triton_ops.KERNELS) if triton is None else set(triton), "small": small_topk}
        self._set()
        self.check = DeferredCheck() if a.device.startswith("cuda") else None
        self.cfg = TrainConfig(acts=ActsConfig(batch_size=a.batch), sae=SAEConfig(arch=arch, k=a.k, d_sae=a.d_sae, kernel=kernel,
                                                                                 normalize="none", precision=precision),
                               tokens=a.batch * a.steps, lr=a.lr, warmup_steps=0, decay_frac=0.0, aux="aux_k")
        self.sae = build_sae(self.cfg.sae.resolve(a.d_in))
        self.sae.init_weights(torch.Generator().manual_seed(0))
        self.sae.to(a.device)
        with torch.no_grad():
            self.sae.b_dec.copy_(data0.mean(0))
        self.sae.fit_encoder_scale(data0)  # as the trainer does on its first batch
        self.opt = make_optimizer(self.sae, a.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, Schedule(0, a.steps, 0.0))
        self.k_aux = self.cfg.aux_k(a.d_in, a.d_sae)

    def _set(self):
        from sae import triton_ops
        from workbench import topk_small

        triton_ops.KERNELS, topk_small.ENABLED = self.knobs["kernels"], self.knobs["small"]

    def step(self, x):
        from sae.trainer import train_step

        self._set()
        if self.check is None:
            if not torch.isfinite(x).all():
                raise FloatingPointError
            train_step(self.sae, self.opt, self.sched, x, self.cfg, self.k_aux)
        else:
            _, parts = train_step(self.sae, self.opt, self.sched, x, self.cfg, self.k_aux, check_finite=False)
            self.check.add(parts["loss"], 0)

    @torch.no_grad()
    def fvu(self, x):
        if self.check is not None and self.check.failed() is not None:
            raise FloatingPointError("a non-finite loss during the timed steps")
        self._set()
        return fvu_of(x, self.sae(x).x_hat)


class SAELens:
    """SAELens TopKTrainingSAE driven by SAETrainer's per-step seam (fit() minus progress bar and logging)."""

    def __init__(self, a, data0):
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        torch.manual_seed(0)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a.d_in, d_sae=a.d_sae, k=a.k, dtype="float32", device=a.device))
        with torch.no_grad():
            sae.b_dec.copy_(data0.mean(0))
        cfg = SAETrainerConfig(total_training_samples=a.batch * a.steps, train_batch_size_samples=a.batch, lr=a.lr,
                               lr_end=a.lr, device=a.device, logger=LoggingConfig(log_to_wandb=False))
        self.sae, self.trainer = sae, SAETrainer(cfg, sae, iter(()))

    def step(self, x):
        t = self.trainer  # the body of SAETrainer.fit()'s loop
        t.maybe_reset_sparsity()
        t.step(x)
        t.n_training_steps += 1

    @torch.no_grad()
    def fvu(self, x):
        return fvu_of(x, self.sae(x))


class Sparsify:
    """sparsify SparseCoder with the per-step work of its Trainer.fit (loss_fn fvu, AuxK on)."""

    def __init__(self, a, data0):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(0)
        self.sae = SparseCoder(a.d_in, SparseCoderConfig(k=a.k, num_latents=a.d_sae), device=a.device)
        with torch.no_grad():
            self.sae.b_dec.copy_(data0.mean(0))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=a.lr)
        self.since_fired = torch.zeros(a.d_sae, dtype=torch.long, device=a.device)

    def step(self, x):
        sae = self.sae
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=self.since_fired > 10_000_000)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[out.latent_indices.flatten()] = 0

    @torch.no_grad()
    def fvu(self, x):
        self.sae.set_decoder_norm_to_unit_norm()
        return fvu_of(x, self.sae(x).sae_out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 / sqrt(d_sae / 2^14) (4e-4 for d_sae 4096)")
    p.add_argument("--block", type=int, default=5, help="steps each trainer runs before the next one takes its turn")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--only", nargs="+", default=None,
                   help="subset of rows: floor ours dense saelens sparsify fc mc, and floor16 (bf16 matmul), ours-fp32 (float32 selection), "
                        "ours-triton (sae/triton_ops.py kernels), ours-torch (torch's embedding_bag / sampled_addmm instead), fc-torch (feature-choice with torch.topk "
                        "instead of workbench/topk_small.py's kernel)")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda (synchronised timing, peak memory)")
    p.add_argument("--shapes", choices=("one", "issue"), default="one",
                   help="one: --d-in/--d-sae/--k/--batch; issue: issue 14's three GPU shapes in turn")
    a = p.parse_args(argv)
    from workbench.devices import check_device
    from workbench.errors import ConfigError

    try:
        check_device(a.device)
    except ConfigError as e:
        print(f"sae_throughput: {e}", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = a.only or ["floor", "ours", "dense", "saelens", "sparsify", "fc", "mc"]
    if not a.device.startswith("cuda"):  # sparsify picks its Triton decoder whenever triton imports, even on a
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # CPU, where Triton has no driver: its eager one
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
    if a.device.startswith("cuda"):
        print(f"device {torch.cuda.get_device_name(a.device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    shapes = ISSUE_SHAPES if a.shapes == "issue" else ((a.d_in, a.d_sae, a.k, a.batch),)
    lr = a.lr
    for d_in, d_sae, k, batch in shapes:
        a.d_in, a.d_sae, a.k, a.batch = d_in, d_sae, k, batch
        a.lr = lr if lr is not None else 2e-4 / (d_sae / 2 ** 14) ** 0.5
        run_shape(a, rows)
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_shape(a, rows: list[str]) -> None:
    cuda = a.device.startswith("cuda")
    print(f"d_in {a.d_in}, d_sae {a.d_sae}, k {a.k}, batch {a.batch}, {a.steps} Adam steps, lr {a.lr:.3g}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    data = planted_data(a.steps + 2, a.batch, a.d_in, n_atoms=2 * a.d_sae, k_true=a.k, seed=0, device=a.device)
    heldout, warm = data.pop(), data.pop()  # same atoms, codes not trained on
    tokens = a.batch * a.steps
    names = {"floor": "dense encoder matmul (floor)", "floor16": "dense encoder matmul, bfloat16", "ours": "ours topk (sparse kernel)",
             "ours-fp32": "ours topk, float32 selection", "ours-triton": "ours topk, Triton kernels",
             "ours-torch": "ours topk, torch kernels",
             "dense": "ours topk (dense autograd)", "saelens": "SAELens TopKTrainingSAE + SAETrainer",
             "sparsify": "sparsify SparseCoder", "fc": "ours feature-choice (sparse)",
             "fc-torch": "ours feature-choice, torch.topk columns", "mc": "ours mutual-choice (sparse)"}
    make = {"floor": lambda: Floor(a), "floor16": lambda: FloorBF16(a), "ours": lambda: Ours(a, data[0]), "dense": lambda: Ours(a, data[0], kernel="dense"),
            "ours-fp32": lambda: Ours(a, data[0], precision="float32"), "ours-triton": lambda: Ours(a, data[0], triton=("dots", "bag")),
            "ours-torch": lambda: Ours(a, data[0], triton=()),
            "saelens": lambda: SAELens(a, data[0]), "sparsify": lambda: Sparsify(a, data[0]),
            "fc": lambda: Ours(a, data[0], arch="feature-choice"),
            "fc-torch": lambda: Ours(a, data[0], arch="feature-choice", small_topk=False), "mc": lambda: Ours(a, data[0], arch="mutual-choice")}
    trainers, resident, transient = {}, {}, {key: 0 for key in rows}
    for key in rows:  # each built and warmed up (one untimed step on a held-out batch) in turn: its resident memory
        _sync(a.device)
        before = torch.cuda.memory_allocated(a.device) if cuda else 0
        trainers[key] = make[key]()
        trainers[key].step(warm)
        _sync(a.device)
        resident[key] = (torch.cuda.memory_allocated(a.device) - before) if cuda else 0
    # Interleave: every trainer runs `block` steps in turn, so a load change on the machine hits all of them.
    elapsed = {key: 0.0 for key in rows}
    mallocs = {key: 0 for key in rows}  # cudaMalloc calls (new segments) and allocator retries during the row's blocks
    for lo in range(0, a.steps, a.block):
        for key, t in trainers.items():
            _sync(a.device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(a.device)
                base = torch.cuda.memory_allocated(a.device)
                st = torch.cuda.memory_stats(a.device)
                m0 = st.get("segment.all.allocated", 0) + st.get("num_alloc_retries", 0)
            t0 = time.perf_counter()
            for x in data[lo:lo + a.block]:
                t.step(x)
            _sync(a.device)
            elapsed[key] += time.perf_counter() - t0
            if cuda:
                transient[key] = max(transient[key], torch.cuda.max_memory_allocated(a.device) - base)
                st = torch.cuda.memory_stats(a.device)
                mallocs[key] += st.get("segment.all.allocated", 0) + st.get("num_alloc_retries", 0) - m0
    res: dict[str, tuple[float, float | None]] = {}
    for key, t in trainers.items():
        res[key] = (elapsed[key], t.fvu(heldout))
        f = res[key][1]
        mem = f"  peak {(resident[key] + transient[key]) / 2 ** 30:6.2f} GiB  cudaMalloc+retries {mallocs[key]}" if cuda else ""
        print(f"  {names[key]:<40} {tokens / elapsed[key]:>11,.0f} tok/s  {1000 * elapsed[key] / a.steps:7.1f} ms/step"
              + (f"  FVU {f:.4f}" if f is not None else "") + mem, flush=True)
    tps = {k: tokens / v[0] for k, v in res.items()}
    print("ratios")
    for a_, b_, what in (("ours", "saelens", "ours / SAELens"), ("ours", "sparsify", "ours / sparsify"),
                         ("ours", "floor", "ours / matmul floor"), ("ours", "dense", "sparse / dense kernel"),
                         ("ours", "ours-fp32", "bf16 / fp32 selection"), ("ours-triton", "ours-torch", "Triton / torch kernels"),
                         ("sparsify", "saelens", "sparsify / SAELens")):
        if a_ in tps and b_ in tps:
            print(f"  {what:<28} {tps[a_] / tps[b_]:.2f}x")
    for key, what in (("fc", "feature-choice"), ("fc-torch", "fc, torch.topk columns"), ("mc", "mutual-choice")):
        if key in res and "ours" in res:
            print(f"  {what} step time / topk   {res[key][0] / res['ours'][0]:.2f}x")
    if cuda and "ours" in resident and "sparsify" in resident:
        print(f"  peak memory ours / sparsify  {(resident['ours'] + transient['ours']) / max(1, resident['sparsify'] + transient['sparsify']):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
