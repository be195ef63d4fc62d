"""Tiny MoE transformer on the toy world: loss, expert load and expert specialisation on IOI attributes.

    .venv/bin/python bench/routing_toy_moe.py [--gates topk,hash,comet,expert-choice --seeds 1
        --steps 300 --batch-size 128 --experts 8 --k 2 --d-model 64 --threads 1 --bench-name toy-moe]

Trains one `workbench moe train --task toy` run per (gate, seed) through the same bench as
`workbench moe bench --task toy ...` (run dirs + summary.json / summary.md under runs/<bench-name>/),
then prints a second table from the runs' results.json: IOI accuracy / logit difference, per layer
the top-k load share, the NMI between expert and token role (IO/S1/S2/END), and the chance-corrected
share of the routing entropy explained by the IO name and by Pos (ABB/BAB) at the IO, S2 and END
positions (see routing/toy_moe.py). All flags of `workbench moe bench` are accepted.
"""

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import json
import shlex
import sys
from pathlib import Path

import numpy as np

TOY_DEFAULTS = ["--task", "toy", "--gates", "topk,hash,comet,expert-choice", "--seeds", "1", "--experts", "8",
                "--k", "2", "--steps", "300", "--batch-size", "128", "--d-model", "64", "--d-hidden", "64",
                "--lr", "2e-3", "--threads", "1", "--quiet", "--log-every", "25"]


def specialisation_table(root: Path) -> str:
    from routing.toy_moe import summary_rows

    rows = [summary_rows(json.loads(p.read_text())) for p in sorted(root.glob("*-s*/results.json"))]
    if not rows:
        raise SystemExit(f"no finished runs under {root}")
    layers = sorted({k.split("_")[0] for r in rows for k in r if k.startswith("L")})
    cols = ["test_loss", "ioi_acc", "ioi_ld"] + [f"{layer}_{c}" for layer in layers for c in
                                                 ("topk_share", "role_nmi", "IO_io", "IO_pos", "S2_io", "S2_pos",
                                                  "END_io", "END_pos")]
    head = "| gate | n | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for gate in dict.fromkeys(r["gate"] for r in rows):
        rs = [r for r in rows if r["gate"] == gate]
        cells = []
        for c in cols:
            v = np.array([r[c] for r in rs])
            cells.append(f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""))
        lines.append(f"| {gate} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    from cli.main import main

    argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        sys.exit(0)
    full = ["moe", "bench"] + TOY_DEFAULTS + argv  # later flags win
    name = argv[argv.index("--bench-name") + 1] if "--bench-name" in argv else "toy-moe"
    out = argv[argv.index("--runs-dir") + 1] if "--runs-dir" in argv else "runs"
    if "--bench-name" not in argv:
        full += ["--bench-name", name]
    print("workbench " + shlex.join(full), flush=True)
    rc = main(full)
    if rc:
        sys.exit(rc)
    table = specialisation_table(Path(out) / name)
    (Path(out) / name / "specialisation.md").write_text(table + "\n")
    print(table)
