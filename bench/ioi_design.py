"""Why the supervised read-outs converge faster now: the train prompts' design and how they are read.

    .venv/bin/python bench/ioi_design.py --locations runs/demo-ioi-locate \\
        --location "blocks.0.attn.hook_z[3]@END" --location "blocks.0.attn.hook_z[2]@END" \\
        --location "blocks.1.attn.hook_z[1]@END" --n 24000 --n-ref 96000 --json bench/results/ioi_design.json

The interpretability axis scores a supervised dictionary through its read-out of the train prompts,
each prompt read by a dictionary fitted without it. Two things decide how far that read-out is from
its large-n value at the demo's n_train, and both are compared here on the same model and locations:

- the design of the train prompts: ``pairs`` (before: each block of m prompts drew its own random
  permutation, so which S names a name's IO prompts met was random) or ``rounds`` (now,
  ``evals.data.balanced_prompts``: every ordered (IO, S) pair once per round of m - 1 blocks);
- the read-out: ``5-fold`` (prompt i read by the dictionary fitted on the prompts of the other folds,
  i mod 5), ``leave-one-out`` (``evals.dictionary.loo_encode``, ``--n-fit 0``) or ``fit split`` (now:
  the vectors fitted on as many prompts of their own, whose blocks share one frame, seed + 5 as in
  ``evals.data.make_splits``, the center the train prompts' mean; it reads the train prompts).

A weakly carried attribute's mean vector is the mean over its prompts of everything else the
activation carries; where a strong attribute (S) sits beside it, the S names those prompts happened to
meet add noise to it that only a complete round removes, and a fold left out breaks the round; which
frames they were drawn in adds noise that only a frame shared by a whole block removes.
Printed per (design, read-out, n, n_fit, location, dictionary): the mean best F1 and coverage at F1 >= 0.5
of IO, S and Pos, and the interpretable fraction at 0.5 / 0.6 / 0.8. The fit split is also fitted on
--n-ref prompts reading the --n train prompts (what more fit prompts alone change); the last rows are
``rounds`` with ``leave-one-out`` and with the ``fit split`` at --n-ref, the references.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ioi_common import model_and_locations, parser  # noqa: E402 - bench/ is not a package


def pairs_design(n: int, names, seed: int, split: str = "train", name_first: bool = True, s2: str = "name"):
    """The train design before rounds: a fresh permutation and a random offset per block (half ABB per block)."""
    from workbench import toyworld

    names, rng, out = list(names), random.Random(seed), []
    m = len(names)
    while len(out) < n:
        perm, shift = rng.sample(names, m), rng.randrange(1, m)
        pos = ["ABB"] * (m // 2) + ["BAB"] * (m - m // 2)
        rng.shuffle(pos)
        for j in range(m):
            if len(out) == n:
                break
            while True:
                p = toyworld.make_ioi_prompt(rng, names, split, pos=pos[j], io=perm[j], s=perm[(j + shift) % m])
                if name_first or p.text.split(" ", 1)[0] not in (p.io, p.s):
                    break
            out.append(p.with_s2_form(s2))
    return out


def kfold_encode(kind: str, acts: torch.Tensor, prompts, values, folds: int = 5) -> torch.Tensor:
    """The read-out before leave-one-out: prompt i read by the dictionary fitted on the other folds (i mod folds)."""
    from evals.dictionary import FITS

    col = {(a, v): j for j, (a, v) in enumerate((a, v) for a, vals in values.items() for v in vals)}
    out = torch.zeros(len(prompts), len(col))
    fold = torch.arange(len(prompts)) % folds
    for f in range(folds):
        held, fit_on = (fold == f).nonzero().squeeze(1), (fold != f).nonzero().squeeze(1)
        d = FITS[kind](acts[fit_on], [prompts[i] for i in fit_on.tolist()], list(values))
        cols = torch.tensor([col[(a, v)] for a, vals in d.values.items() for v in vals])
        out[held[:, None], cols[None, :]] = d.encode(acts[held]).float()
    return out


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=24000, help="train prompts (the demo's n_train)")
    p.add_argument("--n-ref", type=int, default=96000, help="train prompts of the references (rounds; leave-one-out, fit split)")
    p.add_argument("--only", nargs="*", default=[], help="run only these read-outs (5-fold, leave-one-out, fit split)")
    args = p.parse_args(argv)

    from evals import data as ed
    from evals import interpretability as it
    from evals import interpretation as ip
    from evals.config import KINDS
    from evals.data import ATTRIBUTES
    from evals.dictionary import attribute_values, fit_centred_on, loo_encode
    from evals.locations import read_acts
    from workbench.ioi import make_batch

    model, locs = model_and_locations(p, args)
    kept, _ = ed.check_names(model, ed.default_names(model))
    first = ed.name_first_ok(model, kept[0])
    n, ref = args.n, args.n_ref  # (design, read-out, train prompts, fit prompts)
    runs = [("pairs", "5-fold", n, n), ("pairs", "leave-one-out", n, n), ("rounds", "5-fold", n, n),
            ("rounds", "leave-one-out", n, n), ("rounds", "fit split", n, n), ("rounds", "fit split", n, ref),
            ("rounds", "leave-one-out", ref, ref), ("rounds", "fit split", ref, ref)]
    runs = [r for r in runs if not args.only or r[1] in args.only]

    def prompts_and_acts(n, seed, make, **kw):
        prompts = make(n, kept, seed, "train", name_first=first, **kw)
        batch = make_batch(model, prompts)
        return prompts, read_acts(model, batch, ed.semantic_positions(batch), locs)

    rows, acts_of, fit_of = [], {}, {}
    for design, read, n, n_fit in runs:
        t0 = time.perf_counter()
        if (design, n) not in acts_of:
            acts_of = {(design, n): prompts_and_acts(n, args.seed, pairs_design if design == "pairs" else ed.balanced_prompts)}
        prompts, acts = acts_of[(design, n)]
        kinds, _ = ip.build_kinds(prompts, KINDS)
        values = attribute_values(prompts)
        if read == "fit split":
            if n_fit not in fit_of:
                fit_of = {n_fit: prompts_and_acts(n_fit, args.seed + 5, ed.balanced_prompts, frame_per_block=True)}
            fit_prompts, fit_acts = fit_of[n_fit]
        for loc in locs:
            for kind in ("mean", "mse"):
                if read == "fit split":  # as the harness: vectors from the fit split, center from the train prompts
                    d = fit_centred_on(kind, fit_acts[loc], fit_prompts, ATTRIBUTES, acts[loc])
                    assert d.values == values, "the fit and train prompts have different values"
                    codes = d.encode(acts[loc])
                else:
                    codes = (kfold_encode if read == "5-fold" else loo_encode)(kind, acts[loc], prompts, values)
                s = ip.score(it.active_pattern(codes.float()), kinds)
                row = {"design": design, "read_out": read, "n": n, "n_fit": n_fit, "location": str(loc), "dictionary": kind,
                       **{f"fraction@{t}": float(s.interpretable_fraction(t)) for t in (0.5, 0.6, 0.8)}}
                for a in ("IO", "S", "Pos"):
                    row[f"{a} mean best F1"] = float(s.value_f1(a).mean())
                    row[f"{a} coverage@0.5"] = float((s.value_f1(a) >= 0.5).float().mean())
                rows.append(row)
                print(f"{design:6s} {read:13s} n={n:6d} fit={n_fit:6d} {row['location']:28s} {kind:4s} "
                      + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": args.model, "locations": args.locations, "n": args.n, "only": args.only,
                                               "n_ref": args.n_ref, "seed": args.seed, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
