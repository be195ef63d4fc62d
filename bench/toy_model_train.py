"""Time `workbench model train` from scratch against its budget (40 minutes on 2 CPU cores).

    .venv/bin/python bench/toy_model_train.py                 # the shipped recipe, then `model eval`
    .venv/bin/python bench/toy_model_train.py --steps 200     # a short smoke run (time scales ~linearly)

Prints the wall time, the ratio to the budget, the machine load before and after, and the trained
model's acceptance table. Run it on an idle machine: other torch jobs slow training several-fold.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 40 * 60


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps (smoke runs)")
    p.add_argument("--keep", metavar="DIR", help="keep the run under this directory (default: a temp dir)")
    args = p.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "WANDB_MODE": "offline"}
    root = Path(args.keep or tempfile.mkdtemp(prefix="toy-train-"))
    cmd = [sys.executable, "-m", "cli", "model", "train", "--runs-dir", str(root), "--name", "bench", "--quiet"]
    if args.steps:
        cmd += ["--steps", str(args.steps), "--warmup-steps", str(min(200, args.steps // 4))]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, env=env)
    wall = time.perf_counter() - t0
    if rc:
        print(f"training failed with exit code {rc}", file=sys.stderr)
        return rc
    print(f"\n$ {' '.join(cmd[1:])}")
    print(f"wall time {wall / 60:.1f} min; budget {BUDGET_S / 60:.0f} min; ratio {wall / BUDGET_S:.2f} "
          f"(load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after; cores {os.cpu_count()})")
    return subprocess.call([sys.executable, "-m", "cli", "model", "eval", "--model", str(root / "bench" / "model")], env=env)


if __name__ == "__main__":
    sys.exit(main())
