"""Routed (Switch) SAEs against TopK at equal training FLOPs and at equal wall-clock: L0-FVU and L0-CE recovered.

    .venv/bin/python bench/sae_routed_frontier.py                    # toy-ioi blocks.2.hook_resid_post, k 4 16, 3 seeds
    .venv/bin/python bench/sae_routed_frontier.py --table            # only print the table of the results so far
    .venv/bin/python bench/sae_routed_frontier.py --smoke            # a minute: k 8, seed 0, 40k tokens

The Switch SAE claim (Mudide et al. 2024, arXiv 2410.08201): at a fixed compute budget a routed SAE with
E experts reaches a better reconstruction-sparsity frontier than a TopK SAE, because each token's encoder
matmul touches only its expert's d_sae/E latents, so E times more latents cost the same FLOPs. Per k and seed,
three runs on the same cached activations and the same batch order:

- ``topk``           TopK, d_sae = F;
- ``routed-flops``   routed, d_sae = E * F, E experts, one per token (``--gate``): the same encoder FLOPs per
                     token as TopK (2 d F for the matmul, + 2 d E for the router), trained on the same tokens;
- ``routed-time``    the same routed SAE trained for as many tokens as fit in TopK's measured training time
                     (tokens = TopK tokens * t_topk / t_routed-flops, in whole batches).

Training time is the loop's wall-clock from the end of step 1 to the last step (on_step hook: no evaluation,
saving or model loading; checkpoints only at the end), measured in the same process one run after the other.
Every run is evaluated as ``sae train`` does (held-out tokens of the run's corpus): FVU, CE loss recovered, L0.
Each finished run appends a JSON row to ``<out>/results.jsonl`` (a rerun skips it); ``<out>/routed.md`` holds
the table (mean ± std over seeds), with ``uptime`` load recorded per run.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401  (first: thread settings before torch)

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

VARIANTS = ("topk", "routed-flops", "routed-time")


def _int(s: str) -> int:
    return int(s.replace("_", ""))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--hook", default="blocks.2.hook_resid_post")
    p.add_argument("--ks", type=int, nargs="+", default=[4, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tokens", type=_int, default=102_400, help="TopK training tokens per run")
    p.add_argument("--cache-tokens", type=_int, default=102_400, help="cached activation rows (runs cycle through them)")
    p.add_argument("--d-sae", type=int, default=512, help="TopK latents F (routed: experts * F)")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--gate", default="topk", help="the router of the routed SAEs (any gate of routing/gates)")
    p.add_argument("--batch-size", type=_int, default=1024)
    p.add_argument("--eval-tokens", type=_int, default=8192)
    p.add_argument("--dead-window", type=_int, default=8192, help="held-out tokens the dead fraction is counted over "
                   "(each costs a model forward at evaluation)")
    p.add_argument("--out", default="runs/routed-frontier")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--table", action="store_true")
    a = p.parse_args(argv)
    if a.smoke:
        a.ks, a.seeds, a.tokens, a.cache_tokens, a.eval_tokens, a.dead_window = [8], [0], 40_960, 81_920, 4096, 20_000
    return a


def encoder_flops(d_in: int, d_sae: int, experts: int = 0) -> int:
    """Multiply-adds x 2 per token of the dense part of a training step: the encoder matmul over the latents a
    token can use (all F for TopK, F/E for a top-1 routed SAE) plus the router (d_in x E). The sparse parts
    (decoder, encoder backward: O(k d_in)) are the same for both and left out."""
    return 2 * d_in * (d_sae // experts + experts) if experts else 2 * d_in * d_sae


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def train_one(model, cache: Path, out: Path, a, variant: str, k: int, seed: int, tokens: int) -> dict:
    from sae.config import SAEConfig, TrainConfig
    from sae.trainer import train
    from workbench.acts import ActsConfig

    name = f"{variant}-k{k}-s{seed}"
    routed = variant != "topk"
    sae = (SAEConfig(arch="routed", k=k, d_sae=a.d_sae * a.experts, gate=a.gate, experts=a.experts) if routed
           else SAEConfig(arch="topk", k=k, d_sae=a.d_sae))
    acts = ActsConfig(model=a.model, hook=a.hook, batch_size=a.batch_size, seed=seed)
    steps = tokens // a.batch_size
    cfg = TrainConfig(acts=acts, sae=sae, tokens=steps * a.batch_size, eval_tokens=a.eval_tokens, dead_window=a.dead_window,
                      cache=str(cache), runs_dir=str(out), name=name, checkpoint_every=steps, log_every=max(1, steps // 5))
    marks = {}

    def on_step(done):
        marks.setdefault(done, time.perf_counter())
        marks["last"] = time.perf_counter()

    load_before = load()
    run = train(cfg, model=model, progress=False, on_step=on_step)
    ev = run.read_json("eval.json")
    train_s = (marks["last"] - marks[1]) * steps / max(steps - 1, 1)  # steps 2..n, scaled to n steps
    return {"variant": variant, "k": k, "seed": seed, "d_sae": sae.d_sae, "experts": a.experts if routed else 0,
            "gate": a.gate if routed else None, "tokens": cfg.tokens, "steps": steps, "train_s": train_s,
            "flops_per_token": encoder_flops(ev["d_in"], sae.d_sae, a.experts if routed else 0),
            "fvu": ev["fvu"], "ce_recovered": ev["ce_recovered"], "l0_mean": ev["l0_mean"], "dead_fraction": ev["dead_fraction"],
            "load_before": load_before, "load_after": load(), "run": str(run.path)}


def table(rows: list[dict]) -> str:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["k"], VARIANTS.index(r["variant"])), []).append(r)

    def ms(xs, nd=4):
        xs = [x for x in xs if x is not None]
        if not xs:
            return "–"
        return f"{statistics.mean(xs):.{nd}f} ± {statistics.stdev(xs):.{nd}f}" if len(xs) > 1 else f"{xs[0]:.{nd}f}"

    out = ["| k | variant | d_sae | seeds | tokens | encoder FLOPs/token | train s | L0 | FVU | CE recovered | dead % |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (k, vi), rs in sorted(groups.items()):
        out.append(f"| {k} | {VARIANTS[vi]} | {rs[0]['d_sae']} | {len(rs)} | {ms([r['tokens'] for r in rs], 0)} | "
                   f"{rs[0]['flops_per_token']:,} | {ms([r['train_s'] for r in rs], 1)} | {ms([r['l0_mean'] for r in rs], 2)} | "
                   f"{ms([r['fvu'] for r in rs])} | {ms([r['ce_recovered'] for r in rs])} | "
                   f"{ms([100 * r['dead_fraction'] for r in rs], 1)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    a = parse(argv)
    out = Path(a.out)
    results = out / "results.jsonl"
    done = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done[(r["variant"], r["k"], r["seed"])] = r
    if a.table:
        print(table(list(done.values())))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    from cli.acts import ensure_cache

    rc = ensure_cache(cache, a.model, a.hook, a.cache_tokens)
    if rc:
        return rc
    from workbench.models import load_model

    model = load_model(a.model, device="cpu")
    for k in a.ks:
        for seed in a.seeds:
            for variant in VARIANTS:
                if (variant, k, seed) in done:
                    continue
                tokens = a.tokens
                if variant == "routed-time":
                    t_topk, t_r = done[("topk", k, seed)]["train_s"], done[("routed-flops", k, seed)]["train_s"]
                    tokens = max(a.batch_size, int(a.tokens * t_topk / t_r) // a.batch_size * a.batch_size)
                print(f"{variant} k={k} seed={seed}: {tokens} tokens (load {load()})", flush=True)
                r = train_one(model, cache, out, a, variant, k, seed, tokens)
                done[(variant, k, seed)] = r
                with open(results, "a") as f:
                    f.write(json.dumps(r) + "\n")
                (out / "routed.md").write_text(table(list(done.values())) + "\n")
                print(f"  train {r['train_s']:.1f}s  L0 {r['l0_mean']:.2f}  FVU {r['fvu']:.4f}  CE rec {r['ce_recovered']:.4f}",
                      flush=True)
    print(table(list(done.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
