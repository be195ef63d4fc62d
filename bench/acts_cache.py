"""Caching throughput vs the bare model forward pass, measured in one run.

    .venv/bin/python bench/acts_cache.py [--model toy-ioi] [--hook blocks.1.hook_resid_post] [--tokens 300000]

Baseline: the full model forward over the same token batches (no hooks, no copies, no writes).
Ours: `workbench acts cache` end to end (text sampling, tokenising, forward, selection, Arrow writes).
Target: ratio >= 0.7.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--tokens", type=int, default=300_000)
    p.add_argument("--seq-batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats; the best of each is reported")
    args = p.parse_args()

    from workbench.acts import ActivationStream, ActsConfig, select_positions
    from workbench.acts import cache_activations
    from workbench.models import encode, load_model

    torch.manual_seed(0)
    model = load_model(args.model)
    cfg = ActsConfig(model=args.model, hook=args.hook, seq_batch=args.seq_batch, shuffle_buffer=0)

    # pre-tokenise the same corpus for the baseline so it pays only for the forward pass
    stream = ActivationStream(model, cfg)
    batches, n_real = [], 0
    while n_real < args.tokens:
        toks = encode(model, stream.text.next(cfg.seq_batch))
        batches.append(toks)
        n_real += int(select_positions(toks, model.tokenizer.pad_token_id, "all").sum())

    def forward_only() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for toks in batches:
                model(toks)
        return n_real / (time.perf_counter() - t)

    def ours() -> float:
        with tempfile.TemporaryDirectory() as d:
            _, stats = cache_activations(cfg, args.tokens, d, model=model, progress=False)
        return stats["tokens_per_s"]

    forward_only(), ours()  # warm-up
    base, mine = [], []
    for _ in range(args.repeats):
        base.append(forward_only())
        mine.append(ours())
    b, m = max(base), max(mine)
    print(f"model {args.model}, hook {args.hook}, {args.tokens} tokens, torch threads {torch.get_num_threads()}")
    print(f"bare forward pass : {b:>10.0f} tokens/s")
    print(f"workbench cache   : {m:>10.0f} tokens/s")
    print(f"ratio cache/forward: {m / b:.2f}  (target >= 0.7)")


if __name__ == "__main__":
    main()
