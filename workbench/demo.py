"""`make demo`: the main job on the embedded default, as the CLI commands a user would type.

Each step prints the command it runs. Previous demo runs (runs/demo-*) are replaced.
Steps whose package is not installed are skipped with a note.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path

from workbench.cli import main as cli

ROOT = Path("runs")

STEPS: list[tuple[str, list[str], str | None]] = [
    ("Evaluate the shipped toy model on IOI",
     ["model", "eval", "--json", "runs/demo-model-eval.json"], None),
    ("Cache residual-stream activations of the toy corpus",
     ["acts", "cache", "--hook", "blocks.1.hook_resid_post", "--tokens", "200_000", "--name", "demo-acts"], None),
]


def main() -> int:
    ROOT.mkdir(exist_ok=True)
    for old in ROOT.glob("demo-*"):
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    t0 = time.time()
    for title, argv, needs in STEPS:
        if needs and importlib.util.find_spec(needs) is None:
            print(f"\n== {title}: skipped ({needs} not installed)")
            continue
        print(f"\n== {title}\n$ workbench {' '.join(argv)}", flush=True)
        rc = cli(argv)
        if rc:
            print(f"demo: step failed with exit code {rc}", file=sys.stderr)
            return rc
    print(f"\ndemo finished in {time.time() - t0:.0f}s; runs are in {ROOT}/ (list them: workbench runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
