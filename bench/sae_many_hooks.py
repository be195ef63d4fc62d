"""Many hooks per forward: one `sae train --hook A --hook B ...` against one run per hook, in one run.

    .venv/bin/python bench/sae_many_hooks.py            # toy-ioi, blocks.{0..3}.hook_resid_post, 4 SAEs

Both sides train the same SAEs (same configs, same text, same seeds: the weights come out equal, which
the script checks) end to end as `workbench sae train` does: model forward passes, SAE steps,
checkpoints, the final save and evaluation. "together" is one ``sae.trainer.train_many`` call (one
model forward per batch feeds every SAE); "separate" is one ``sae.trainer.train`` call per hook (each
runs its own forward passes). Rounds alternate the two, so a change of load on a shared machine hits
both; reported: seconds per round, the ratio separate / together, and the share of the separate runs'
time that is model forward passes (measured by timing the stream alone).
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--hooks", nargs="+", default=[f"blocks.{i}.hook_resid_post" for i in range(4)])
    p.add_argument("--tokens", type=int, default=16 * 2048, help="training tokens per SAE")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--dead-window", type=int, default=8192, help="also the held-out tokens the final dead count reads")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")

    import torch

    torch.set_num_threads(a.threads)
    from sae.config import SAEConfig, TrainConfig
    from sae.trainer import checkpoint_store, train, train_many
    from workbench.acts import ActivationStream
    from workbench.config import ActsConfig
    from workbench.models import load_model

    model = load_model(a.model)
    root = tempfile.mkdtemp(prefix="many-hooks-")
    base = TrainConfig(acts=ActsConfig(model=a.model, hook=a.hooks[0], batch_size=a.batch, shuffle_buffer=2 * a.batch),
                       sae=SAEConfig(arch="topk", k=a.k, expansion=a.expansion), tokens=a.tokens, eval_tokens=a.eval_tokens,
                       dead_window=a.dead_window,
                       checkpoint_every=max(1, a.tokens // a.batch // 2), log_every=5, runs_dir=root)
    cfgs = lambda tag: [replace(base, name=f"{tag}-{h}", acts=replace(base.acts, hook=h)) for h in a.hooks]  # noqa: E731
    print(f"{a.model}, {len(a.hooks)} hooks ({', '.join(a.hooks)}), topk k {a.k} x{a.expansion}, {a.tokens:,} tokens "
          f"per SAE, batch {a.batch}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    times: dict[str, list[float]] = {"together": [], "separate": [], "stream": []}
    last = {}
    for r in range(a.rounds):
        for side in ("together", "separate") if r % 2 == 0 else ("separate", "together"):
            t0 = time.perf_counter()
            if side == "together":
                runs = train_many(cfgs(f"t{r}"), model=model, progress=False)
            else:
                runs = [train(c, model=model, progress=False) for c in cfgs(f"s{r}")]
            times[side].append(time.perf_counter() - t0)
            last[side] = runs
            print(f"  round {r + 1} {side:<9} {times[side][-1]:7.1f} s", flush=True)
        t0 = time.perf_counter()  # the model forward passes one SAE's training reads, alone
        stream = ActivationStream(model, base.acts)
        for _ in range(base.steps):
            next(stream)
        times["stream"].append(time.perf_counter() - t0)
    for a_run, b_run in zip(last["together"], last["separate"]):
        wa = torch.load(checkpoint_store(a_run).paths()[-1], weights_only=False)["sae"]
        wb = torch.load(checkpoint_store(b_run).paths()[-1], weights_only=False)["sae"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{a_run.name}: weights differ from the separate run"
    t, s, f = (sum(times[k]) / len(times[k]) for k in ("together", "separate", "stream"))
    print(f"mean over {a.rounds} rounds: together {t:.1f} s, separate {s:.1f} s; separate / together {s / t:.2f}x; "
          f"one SAE's model forwards alone {f:.1f} s ({len(a.hooks)} x {f:.1f} = {100 * len(a.hooks) * f / s:.0f}% of the "
          f"separate runs); weights equal; load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
