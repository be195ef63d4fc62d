"""Markdown table of the expert assignment (precision / recall / F1 against IO, S, Pos) of toy MoE runs.

    .venv/bin/python bench/routing_assignment_table.py runs/toy-moe-assign/*-s1

Reads each run's results.json (``assignment[L<l>][role][attr]``, written by ``workbench moe train --task toy``)
and prints, per run, layer and role (IO, S2, END), the mean over values of the best expert's precision,
recall and F1 with the chance level (values shuffled) in brackets, next to the run's IOI accuracy.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401  (first, as every entry point)

import json
import sys
from pathlib import Path


def rows(run: Path) -> list[str]:
    r = json.loads((run / "results.json").read_text())
    out = []
    for layer, by_role in r["assignment"].items():
        for role in ("IO", "S2", "END"):
            cells = []
            for attr in ("io", "s", "pos"):
                a = by_role[role][attr]
                cells.append(" / ".join(f"{a[m]:.2f} ({a[m + '_chance']:.2f})" for m in ("precision", "recall")))
            out.append(f"| {r['gate']} s{r['seed']} | {r['ioi']['accuracy']:.2f} | {layer} | {role} | " + " | ".join(cells) + " |")
    return out


def main(argv: list[str]) -> int:
    print("| gate | IOI acc | layer | position | IO: precision / recall | S: precision / recall | Pos: precision / recall |")
    print("|---|---|---|---|---|---|---|")
    for p in argv:
        if (Path(p) / "results.json").is_file():
            print("\n".join(rows(Path(p))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
