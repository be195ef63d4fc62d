"""Peer check: our Mutual Choice SAE against SAELens's BatchTopK, the same allocation (the k*N largest
entries of the batch's tokens x latents matrix), trained on the same cached activations.

    .venv/bin/pip install -c constraints.txt sae-lens          # benchmark-only (pyproject extra "bench")
    .venv/bin/python bench/sae_peer_batchtopk.py                 # toy-ioi, k 8, x8, 2M tokens, 3 seeds
    .venv/bin/python bench/sae_peer_batchtopk.py --smoke         # minutes

Both trainers see the same batches in the same order (``ActivationCache.batches`` with the run's
seed), the same k, d_sae, batch size, number of steps, learning rate and schedule (linear warm-up,
linear decay over the last 20%), the same dead window and the same input normalisation: ours applies
it itself (``--normalize``); SAELens gets the batches already normalised the same way (per token:
x * sqrt(d)/|x|; expected_norm: times the scalar sqrt(d)/E|x| of the first batch) with its
``normalize_activations="none"``, so its loss lives in the same space as ours (SAELens's own
``constant_norm_rescale`` computes the loss on raw activations and refuses its aux loss). Everything
else is each library's default: ours ``workbench sae train --arch mutual-choice`` (decoder rows kept
at unit norm, aux loss and coverage loss as configured); SAELens ``BatchTopKTrainingSAE`` through
``SAETrainer``'s per-step seam (its TopK aux loss, decoder-norm rescaling, gradient clipping at 1,
threshold EMA 0.01).

SAELens's trained SAE is saved as its inference model (``save_inference_model``: JumpReLU with its
learned global threshold) and loaded into our MutualChoiceSAE (after checking that both give the same
reconstruction), so the two are evaluated by the same code on the same held-out text: FVU, CE loss
recovered, dead % (silent on all of ``--dead-window`` held-out tokens), L0 spread, in inference
(threshold) mode and in batch mode. One JSON row per (trainer, seed) in ``<out>/results.jsonl``
(rerunning skips finished rows); the table is mean ± std over seeds.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

METRICS = ("fvu", "ce_recovered", "dead_fraction", "l0_mean", "l0_std", "l0_zero_frac")


def _int(s: str) -> int:
    return int(s.replace("_", ""))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--tokens", type=_int, default=2_000_000)
    p.add_argument("--batch-size", type=_int, default=4096)
    p.add_argument("--lr", type=float, default=None, help="default: ours, 2e-4 / sqrt(d_sae / 2^14)")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--normalize", default="per_token", choices=("none", "expected_norm", "per_token"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-tokens", type=_int, default=65_536)
    p.add_argument("--dead-window", type=_int, default=1_000_000)
    p.add_argument("--cache", default=None, help="activation cache to train on (default: made in <out>/cache)")
    p.add_argument("--out", default="runs/peer-batchtopk")
    p.add_argument("--smoke", action="store_true", help="1 seed, 100k tokens, small evaluation")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `workbench sae train` flags for ours")
    a = p.parse_args(argv)
    if a.smoke:
        a.seeds, a.tokens, a.eval_tokens, a.dead_window, a.batch_size = [0], 100_000, 8192, 50_000, 2048
    return a


def normaliser(option: str, first: torch.Tensor):
    """x -> x normalised as our trainer does for `option` (the scalar comes from the first batch)."""
    from sae.normalize import expected_norm_scale, per_token_factor

    if option == "per_token":
        return lambda x: x * per_token_factor(x)
    s = expected_norm_scale(first) if option == "expected_norm" else 1.0
    return lambda x: x * s


def train_saelens(a, cache_dir: Path, seed: int, d_in: int, lr: float, where: Path) -> Path:
    """Train SAELens's BatchTopK on the cache's batches (normalised as ours); save its inference model."""
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from workbench.cache import ActivationCache

    steps = a.tokens // a.batch_size
    torch.manual_seed(seed)
    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=a.expansion * d_in, k=a.k,
                                                          dtype="float32", device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=steps * a.batch_size, train_batch_size_samples=a.batch_size, lr=lr, lr_end=lr,
                           lr_warm_up_steps=a.warmup_steps, lr_decay_steps=int(0.2 * steps),
                           dead_feature_window=max(1, a.dead_window // a.batch_size), device="cpu",
                           logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg, sae, iter(()))
    batches = ActivationCache(cache_dir).batches(a.batch_size, shuffle=True, seed=seed)  # the order ours reads
    norm = None
    for i in range(steps):
        x = next(batches)
        norm = norm or normaliser(a.normalize, x)
        trainer.maybe_reset_sparsity()  # the body of SAETrainer.fit()'s loop, without progress bar and logging
        trainer.step(norm(x))
        trainer.n_training_steps += 1
        if (i + 1) % 50 == 0 or i + 1 == steps:
            print(f"  saelens seed {seed}: step {i + 1}/{steps}", flush=True)
    sae.save_inference_model(where)
    return where


def as_ours(saelens_dir: Path, a, d_in: int, first: torch.Tensor):
    """SAELens's saved inference model as our MutualChoiceSAE (threshold mode) taking raw activations.

    Checked: on held-out-like inputs its reconstruction equals SAELens's JumpReLUSAE forward.
    """
    from safetensors.torch import load_file
    from sae_lens import SAE as LensSAE

    from sae.config import SAEConfig
    from sae.model import build_sae
    from sae.normalize import expected_norm_scale

    state = load_file(str(saelens_dir / "sae_weights.safetensors"))
    ours = build_sae(SAEConfig(arch="mutual-choice", k=a.k, d_sae=a.expansion * d_in, normalize=a.normalize).resolve(d_in))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            getattr(ours, name).copy_(state[name].reshape(getattr(ours, name).shape))
    ours.set_mode("threshold")
    scale = expected_norm_scale(first) if a.normalize == "expected_norm" else 1.0
    ours = ours.folded(scale)  # takes raw activations (per token: unchanged)
    ours.set_mode("threshold")
    theirs = LensSAE.load_from_disk(str(saelens_dir), device="cpu")
    x = first[:512]
    with torch.no_grad():
        out = ours(x)
        x_in = x * out.factor if out.factor is not None else x * scale
        ref = theirs(x_in)  # SAELens on the normalised input, its training space
        got = out.x_hat_in if out.factor is not None else out.x_hat * scale
        err = (ref - got).abs().max().item() / ref.abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"converting SAELens's SAE changed its output (relative error {err:.2e})")
    return ours


def evaluate_row(sae, a, seed: int, trainer: str, seconds: float, model) -> dict:
    from workbench.acts import ActsConfig

    from sae.metrics import evaluate

    acts = ActsConfig(model=a.model, hook=a.hook, seed=seed)
    res = evaluate(sae, model, acts, a.eval_tokens, modes=("threshold", "batch"), dead_tokens=a.dead_window)
    row = {"trainer": trainer, "seed": seed, "k": a.k, "normalize": a.normalize, "tokens": a.tokens, "train_seconds": seconds}
    for mode, r in res.items():
        row.update({f"{mode}_{m}": r.get(m) for m in METRICS})
    return row


def table(rows: list[dict]) -> str:
    def cell(vals, nd, pct=False):
        vals = [100 * v if pct else v for v in vals if v is not None]
        if not vals:
            return "–"
        m = statistics.fmean(vals)
        return f"{m:.{nd}f} ± {statistics.stdev(vals):.{nd}f}" if len(vals) > 1 else f"{m:.{nd}f}"

    cols = [("fvu", 4, False, "FVU"), ("ce_recovered", 4, False, "CE recovered"), ("dead_fraction", 1, True, "dead %"),
            ("l0_mean", 2, False, "L0"), ("l0_std", 2, False, "L0 std"), ("l0_zero_frac", 3, False, "no-latent tokens")]
    head = ["trainer", "mode", "seeds"] + [c[3] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for trainer in ("ours mutual-choice", "SAELens BatchTopK"):
        rs = [r for r in rows if r["trainer"] == trainer]
        for mode in ("threshold", "batch"):
            if rs:
                lines.append("| " + " | ".join([trainer, mode + (" (inference)" if mode == "threshold" else ""), str(len(rs))]
                                               + [cell([r.get(f"{mode}_{m}") for r in rs], nd, pct) for m, nd, pct, _ in cols]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import sae_lens  # noqa: F401
    except ImportError:
        print("sae_peer_batchtopk: needs sae-lens (benchmark-only): .venv/bin/pip install -c constraints.txt sae-lens",
              file=sys.stderr)
        return 2
    from workbench.cache import ActivationCache
    from cli.acts import ensure_cache
    from cli.main import main as wb
    from workbench.models import load_model

    from sae.config import TrainConfig

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache) if a.cache else out / "cache"
    rc = ensure_cache(cache, a.model, a.hook, a.tokens)
    if rc:
        return rc
    d_in = ActivationCache(cache).d
    lr = a.lr or TrainConfig().learning_rate(a.expansion * d_in)
    results = out / "results.jsonl"
    done = {(r["trainer"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())} if results.is_file() else set()
    model = load_model(a.model)
    print(f"{a.model} {a.hook}: k {a.k}, d_sae {a.expansion * d_in}, {a.tokens:,} tokens in batches of {a.batch_size}, "
          f"lr {lr:.2e}, normalize {a.normalize}, seeds {a.seeds}", flush=True)
    for seed in a.seeds:
        first = next(ActivationCache(cache).batches(a.batch_size, shuffle=True, seed=seed))
        if ("ours mutual-choice", seed) not in done:
            name = f"ours-mc-{a.normalize}-s{seed}"
            t0 = time.perf_counter()
            flags = ["sae", "train", "--model", a.model, "--hook", a.hook, "--arch", "mutual-choice", "--k", str(a.k),
                     "--expansion", str(a.expansion), "--tokens", str(a.tokens), "--batch-size", str(a.batch_size),
                     "--lr", str(lr), "--warmup-steps", str(a.warmup_steps), "--decay-frac", "0.2",
                     "--normalize", a.normalize, "--seed", str(seed), "--dead-window", str(a.dead_window),
                     "--eval-tokens", str(a.eval_tokens), "--cache", str(cache), "--runs-dir", str(out), "--quiet", *a.extra]
            run = out / name
            rc = wb(flags + (["--resume", str(run)] if (run / "config.json").is_file() else ["--name", name]))
            if rc:
                return rc
            # the trainer evaluated the saved SAE exactly as evaluate_row does (same held-out text, modes, window)
            ev = json.loads((run / "eval.json").read_text())
            row = {"trainer": "ours mutual-choice", "seed": seed, "k": a.k, "normalize": a.normalize, "tokens": a.tokens,
                   "train_seconds": time.perf_counter() - t0, "aux": ev["aux"]}
            for mode, r in ev["modes"].items():
                row.update({f"{mode}_{m}": r.get(m) for m in METRICS})
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
        if ("SAELens BatchTopK", seed) not in done:
            t0 = time.perf_counter()
            where = train_saelens(a, cache, seed, d_in, lr, out / f"saelens-batchtopk-{a.normalize}-s{seed}")
            seconds = time.perf_counter() - t0
            row = evaluate_row(as_ours(where, a, d_in, first), a, seed, "SAELens BatchTopK", seconds, model)
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
        rows = [json.loads(x) for x in results.read_text().splitlines()]
        (out / "peer.md").write_text(table(rows) + "\n")
    print(table([json.loads(x) for x in results.read_text().splitlines()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
