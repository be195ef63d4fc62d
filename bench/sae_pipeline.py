"""End-to-end SAE training throughput: model forward + SAE step (`workbench sae train`), against the SAE
step alone and the activation stream alone, on the same device.

    python bench/sae_pipeline.py --device cuda                    # toy-ioi and a GPT-2-small-shaped model
    python bench/sae_pipeline.py --device cpu --models toy-ioi --steps 20 --batch 1024   # a quick CPU check

For each model: `sae.trainer.train` streams activations at --hook and trains a TopK SAE (expansion 32 unless
--d-sae) for --steps steps, with prefetch off and on (the default on a GPU: the next batches are made in
a background thread, the model forward on its own CUDA stream). Reported: tokens/s of the whole pipeline
(from the trainer's own log rows, the first one dropped as warm-up), of the SAE step alone on batches
already on the device (sae.trainer.train_step, the same config), and of the stream alone (text, model
forward, shuffle). The pipeline cannot beat min(step, stream) without overlap; with full overlap it
approaches that minimum.

gpt2-small-shaped: a randomly initialised HookedTransformer of GPT-2 small's shape (12 layers, d_model
768, 12 heads, d_mlp 3072) over the toy vocabulary, with the toy tokenizer (no weights can be downloaded
here); hook blocks.6.hook_resid_post, d_in 768.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import sys
import tempfile
import time
from dataclasses import replace

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, model, hook: str, a, runs_dir: str) -> dict:
    from sae.config import SAEConfig, TrainConfig
    from sae.model import build_sae
    from sae.trainer import Schedule, Source, make_optimizer, train, train_step
    from workbench.acts import ActsConfig

    acts = ActsConfig(model=name, hook=hook, batch_size=a.batch, seq_batch=a.seq_batch, device=a.device)
    base = TrainConfig(acts=acts, sae=SAEConfig(arch="topk", k=a.k, expansion=a.expansion, d_sae=a.d_sae),
                       tokens=a.batch * a.steps, log_every=a.log_every, checkpoint_every=10 ** 9, eval_tokens=a.batch,
                       dead_window=4 * a.batch,  # the final evaluation counts dead latents over this many tokens
                       warmup_steps=0, runs_dir=runs_dir)
    out = {}
    # the stream alone: text, model forward, shuffle, to the device
    src = Source(base, model)
    for _ in range(2):
        next(src)
    _sync(a.device)
    t0 = time.perf_counter()
    for _ in range(a.stream_batches):
        next(src).to(a.device)
    _sync(a.device)
    out["stream"] = a.stream_batches * a.batch / (time.perf_counter() - t0)
    # the SAE step alone, on device batches of the same width and scale
    x = next(src).to(a.device)
    cfg = replace(base, sae=base.sae.resolve(x.shape[1]))
    sae = build_sae(cfg.sae)
    sae.init_weights(torch.Generator().manual_seed(0))
    sae.to(a.device)
    scale = (x.shape[1] ** 0.5) / x.norm(dim=1).mean()
    opt = make_optimizer(sae, cfg.learning_rate(cfg.sae.d_sae))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Schedule(0, a.steps, 0.0))
    batches = [(next(src).to(a.device) * scale) for _ in range(4)]
    k_aux = cfg.aux_k(cfg.sae.d_in, cfg.sae.d_sae)
    cuda = a.device.startswith("cuda")
    for i in range(3):
        train_step(sae, opt, sched, batches[i % 4], cfg, k_aux, check_finite=not cuda)
    _sync(a.device)
    t0 = time.perf_counter()
    for i in range(a.steps):
        train_step(sae, opt, sched, batches[i % 4], cfg, k_aux, check_finite=not cuda)
    _sync(a.device)
    out["step"] = a.steps * a.batch / (time.perf_counter() - t0)
    # the pipeline, prefetch off and on
    for depth in (0, 2):
        run = train(replace(base, prefetch=depth, name=f"{name.replace('/', '_')}-prefetch{depth}"), model=model,
                    progress=False)
        rates = [r["tok_per_s"] for r in run.metrics() if "tok_per_s" in r][1:]  # the first interval warms up
        out[f"pipeline_prefetch{depth}"] = sum(rates) / max(1, len(rates))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["toy-ioi", "gpt2-small-shaped"])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--seq-batch", type=int, default=128)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--expansion", type=int, default=32)
    p.add_argument("--d-sae", type=int, default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--stream-batches", type=int, default=20)
    a = p.parse_args(argv)
    from workbench.devices import check_device
    from workbench.models import gpt2_small_shaped, load_model

    check_device(a.device)
    if a.device.startswith("cuda"):
        print(f"device {torch.cuda.get_device_name(a.device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    hooks = {"toy-ioi": "blocks.1.hook_resid_post", "gpt2-small-shaped": "blocks.6.hook_resid_post"}
    with tempfile.TemporaryDirectory() as runs:
        for name in a.models:
            model = gpt2_small_shaped(a.device) if name == "gpt2-small-shaped" else load_model(name, device=a.device)
            r = measure(name, model, hooks.get(name, "blocks.1.hook_resid_post"), a, runs)
            print(f"{name} ({hooks.get(name)}, batch {a.batch}, k {a.k}, expansion {a.expansion}, {a.steps} steps):")
            for key in ("stream", "step", "pipeline_prefetch0", "pipeline_prefetch2"):
                print(f"  {key:<20} {r[key]:>11,.0f} tok/s")
            lim = min(r["stream"], r["step"])
            print(f"  pipeline / min(stream, step): prefetch off {r['pipeline_prefetch0'] / lim:.2f}, "
                  f"on {r['pipeline_prefetch2'] / lim:.2f}; pipeline (on) / step alone {r['pipeline_prefetch2'] / r['step']:.2f}",
                  flush=True)
            del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
