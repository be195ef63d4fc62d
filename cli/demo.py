"""`make demo`: the main job on the embedded default, as the CLI commands a user would type.

Each step prints the command it runs. Previous demo runs (runs/demo-*) are replaced.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from cli.main import main as cli

ROOT = Path("runs")

HOOK = "blocks.1.hook_resid_post"
SAE_COMMON = ["--hook", HOOK, "--cache", "runs/demo-acts/cache", "--expansion", "8", "--k", "8",
              "--tokens", "400_000", "--batch-size", "2048", "--eval-tokens", "16384", "--dead-window", "100_000",
              "--runs-dir", "runs"]

STEPS: list[tuple[str, list[str]]] = [
    ("Evaluate the shipped toy model on IOI",
     ["model", "eval", "--json", "runs/demo-model-eval.json"]),
    ("Cache residual-stream activations of the toy corpus",
     ["acts", "cache", "--hook", HOOK, "--tokens", "400_000", "--name", "demo-acts"]),
    ("Train a TopK SAE (k=8) on the cache",
     ["sae", "train", "--arch", "topk", *SAE_COMMON, "--name", "demo-sae-topk"]),
    ("Train a Feature Choice SAE (same budget)",
     ["sae", "train", "--arch", "feature-choice", *SAE_COMMON, "--name", "demo-sae-feature-choice"]),
    ("Train a Mutual Choice SAE (same budget)",
     ["sae", "train", "--arch", "mutual-choice", *SAE_COMMON, "--name", "demo-sae-mutual-choice"]),
    ("Precompute the feature browser's data for each SAE",
     ["sae", "analyze", "runs/demo-sae-topk"]),
    ("", ["sae", "analyze", "runs/demo-sae-feature-choice"]),
    ("", ["sae", "analyze", "runs/demo-sae-mutual-choice"]),
    ("Locate the IOI circuit in the toy model",
     ["ioi", "locate", "--n-prompts", "200", "--name", "demo-ioi-locate", "--quiet"]),
    ("Evaluate supervised dictionaries and the three SAEs on IOI (residual stream at END + the circuit)",
     ["ioi", "eval", "--locations", "runs/demo-ioi-locate", "--location", f"{HOOK}@END",
      "--sae", "runs/demo-sae-topk", "--sae", "runs/demo-sae-feature-choice", "--sae", "runs/demo-sae-mutual-choice",
      "--n-train", "600", "--n-eval", "300", "--name", "demo-ioi-eval", "--quiet"]),
    ("Train a COMET-gated multi-task MoE on MovieLens-100k (one short epoch)",
     ["moe", "train", "--task", "movielens", "--gate", "comet", "--experts", "8", "--k", "2", "--epochs", "1",
      "--max-examples", "40000", "--name", "demo-moe-comet"]),
]


def main() -> int:
    ROOT.mkdir(exist_ok=True)
    for old in ROOT.glob("demo-*"):
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    t0 = time.time()
    for title, argv in STEPS:
        print(f"\n== {title}" if title else "", f"\n$ workbench {' '.join(argv)}", flush=True)
        t_step = time.time()
        rc = cli(argv)
        print(f"({time.time() - t_step:.0f}s)", flush=True)
        if rc:
            print(f"demo: step failed with exit code {rc}", file=sys.stderr)
            return rc
    print(f"\ndemo finished in {time.time() - t0:.0f}s; runs are in {ROOT}/ (list them: .venv/bin/workbench runs)")
    print("browse them: .venv/bin/workbench app   (then open http://localhost:8501)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
