"""How a supervised dictionary's read-out converges with the train prompts it is fitted on.

    .venv/bin/python bench/ioi_readout.py --locations runs/demo-ioi-locate \\
        --location "blocks.0.attn.hook_z[2]@END" --location "blocks.0.attn.hook_z[3]@END" \\
        --location "blocks.1.attn.hook_z[1]@END" --json bench/results/ioi_readout.json

The interpretability axis scores a supervised dictionary through its read-out (the codes it assigns
to an activation; ``SupervisedDictionary.encode``). For each location and each fit size n, a mean
and an MSE dictionary are fitted on the first n of ``--n-max`` train prompts and their read-outs scored
(``evals.interpretation.score``, the paper's rule) three ways:

- ``nearest``: each attribute read alone (its nearest value), on ``--n-holdout`` prompts never fitted on;
- ``joint``: the values that together reconstruct best (the harness's read-out), on the same prompts;
- ``joint-in-sample``: the joint read-out of the n prompts the dictionary was fitted on.

Printed per row: the interpretable fraction at F1 >= 0.5 / 0.6 / 0.8 and the coverage of IO and S at
0.5 / 0.6. A read-out whose numbers keep moving as n grows needs that many prompts to be reported;
one whose in-sample numbers sit above the held-out ones is scored too well on its own prompts.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ioi_common import model_and_locations, parser  # noqa: E402 - bench/ is not a package


def _numbers(s) -> dict:
    out = {f"fraction@{t}": float(s.interpretable_fraction(t)) for t in (0.5, 0.6, 0.8)}
    for a in ("IO", "S"):
        for t in (0.5, 0.6):
            out[f"{a} coverage@{t}"] = float((s.value_f1(a) >= t).float().mean())
    return out


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--n", type=int, nargs="+", default=[3000, 6000, 12000, 24000, 48000, 96000], help="fit sizes")
    p.add_argument("--n-holdout", type=int, default=24000)
    args = p.parse_args(argv)

    from evals import interpretability as it
    from evals import interpretation as ip
    from evals.config import KINDS
    from evals.data import make_splits, semantic_positions
    from evals.dictionary import FITS
    from evals.locations import read_acts
    from workbench.ioi import make_batch

    model, locs = model_and_locations(p, args)
    n_max = max(args.n)
    t0 = time.perf_counter()
    prompts = make_splits(model, n_max + args.n_holdout, 2, args.seed).train
    batch = make_batch(model, prompts)
    acts = read_acts(model, batch, semantic_positions(batch), locs)
    print(f"activations of {len(prompts)} prompts at {len(locs)} locations: {time.perf_counter() - t0:.0f} s", flush=True)
    hold = prompts[n_max:]
    hold_kinds, _ = ip.build_kinds(hold, KINDS)
    rows = []
    for loc in locs:
        a = acts[loc]
        for n in args.n:
            fit_kinds, _ = ip.build_kinds(prompts[:n], KINDS)
            for kind, fit in FITS.items():
                d = fit(a[:n], prompts[:n])
                alone = torch.cat([torch.nn.functional.one_hot(d.read_alone(a[n_max:] - d.center, attr), len(vals))
                                   for attr, vals in d.values.items()], 1).bool()
                for how, active, kinds in (("nearest", alone, hold_kinds), ("joint", d.encode(a[n_max:]) > 0, hold_kinds),
                                           ("joint-in-sample", d.encode(a[:n]) > 0, fit_kinds)):
                    row = {"location": str(loc), "n": n, "dictionary": kind, "read_out": how,
                           **_numbers(ip.score(it.active_pattern(active.float()), kinds))}
                    rows.append(row)
                    print(f"{row['location']:32s} n={n:6d} {kind:4s} {how:16s} "
                          + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": args.model, "locations": args.locations, "n_holdout": args.n_holdout,
                                               "seed": args.seed, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
