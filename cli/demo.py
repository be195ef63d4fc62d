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
# each architecture in its best measured configuration at this size (docs/sae.md, "The demo's SAEs")
SAE_BEST = {"topk": ["--arch", "topk"],
            "feature-choice": ["--arch", "feature-choice", "--capacity", "zipf", "--normalize", "per_token"],
            "mutual-choice": ["--arch", "mutual-choice", "--normalize", "per_token"]}
# what each SAE should reach in its saved (inference) mode; the demo says so when one does not
SAE_BAR = {"ce_recovered": 0.95, "dead_fraction": 0.25}

STEPS: list[tuple[str, list[str]]] = [
    ("Evaluate the shipped toy model on IOI",
     ["model", "eval", "--json", "runs/demo-model-eval.json"]),
    ("Cache residual-stream activations of the toy corpus",
     ["acts", "cache", "--hook", HOOK, "--tokens", "400_000", "--name", "demo-acts"]),
    ("Train a TopK SAE (k=8) on the cache",
     ["sae", "train", *SAE_BEST["topk"], *SAE_COMMON, "--name", "demo-sae-topk"]),
    ("Train a Feature Choice SAE (same budget)",
     ["sae", "train", *SAE_BEST["feature-choice"], *SAE_COMMON, "--name", "demo-sae-feature-choice"]),
    ("Train a Mutual Choice SAE (same budget)",
     ["sae", "train", *SAE_BEST["mutual-choice"], *SAE_COMMON, "--name", "demo-sae-mutual-choice"]),
    ("Precompute the feature browser's data for each SAE",
     ["sae", "analyze", "runs/demo-sae-topk"]),
    ("", ["sae", "analyze", "runs/demo-sae-feature-choice"]),
    ("", ["sae", "analyze", "runs/demo-sae-mutual-choice"]),
    ("Locate the IOI circuit in the toy model",
     ["ioi", "locate", "--n-prompts", "200", "--name", "demo-ioi-locate", "--quiet"]),
    ("Evaluate supervised dictionaries and the three SAEs on IOI (residual stream at END + the circuit)",
     ["ioi", "eval", "--locations", "runs/demo-ioi-locate", "--location", f"{HOOK}@END",
      "--sae", "runs/demo-sae-topk", "--sae", "runs/demo-sae-feature-choice", "--sae", "runs/demo-sae-mutual-choice",
      "--n-train", "24000", "--n-eval", "3000", "--name", "demo-ioi-eval", "--quiet"]),
    ("Train a COMET-gated multi-task MoE on MovieLens-100k (one short epoch)",
     ["moe", "train", "--task", "movielens", "--gate", "comet", "--experts", "8", "--k", "2", "--epochs", "1",
      "--max-examples", "40000", "--name", "demo-moe-comet"]),
]


def sae_verdict(run: Path) -> str:
    """Whether a trained SAE reaches the demo's bar in its saved (inference) mode, and if not, why."""
    import json

    ev = json.loads((run / "eval.json").read_text())
    short = []
    if ev.get("ce_recovered") is None or ev["ce_recovered"] < SAE_BAR["ce_recovered"]:
        short.append(f"CE recovered {ev.get('ce_recovered') or float('nan'):.3f} < {SAE_BAR['ce_recovered']}")
    if ev["dead_fraction"] > SAE_BAR["dead_fraction"]:
        short.append(f"{100 * ev['dead_fraction']:.1f}% dead > {100 * SAE_BAR['dead_fraction']:.0f}%")
    where = f"{ev['mode']} mode, {ev['normalize']} normalisation"
    if not short:
        return (f"{run.name}: meets the demo's bar in its saved {where}: CE recovered {ev['ce_recovered']:.3f}, "
                f"{100 * ev['dead_fraction']:.1f}% dead")
    return (f"{run.name}: below the demo's bar in its saved {where}: {'; '.join(short)}. "
            f"{WHY.get(ev['arch'], '')} (measurements: docs/sae.md, \"The demo's SAEs\")")


# why an architecture can fall short of the bar, from what was measured (docs/sae.md); printed only when it does
WHY = {"topk": ("TopK gives every token exactly k latents, so its only known shortfall is dead latents: aux_k acts "
                "only on latents silent for --dead-window training tokens, and a run not much longer than that window "
                "leaves them dead."),
       "feature-choice": ("Feature Choice allocates each latent a share of the batch, and its saved threshold mode "
                          "(pre > a per-latent threshold) can only approximate that batch rule: where many tokens are "
                          "near-copies of one vector (toy-ioi v1's massive tokens) it admits all or none of them. "
                          "Per-token normalisation and Zipf capacities, which the demo uses, are the remedies measured."),
       "mutual-choice": ("Mutual Choice takes the k*N largest entries of the whole batch, so tokens with a large norm take "
                         "the budget and the rest get few or no latents, and latents that lose to them die. Per-token "
                         "normalisation, which the demo uses, removes that where norms differ (toy-ioi v1: CE recovered "
                         "0.31-0.40 raw, 0.997 per token).")}


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
        if argv[:2] == ["sae", "train"]:
            print(sae_verdict(ROOT / argv[argv.index("--name") + 1]), flush=True)
    print(f"\ndemo finished in {time.time() - t0:.0f}s; runs are in {ROOT}/ (list them: .venv/bin/workbench runs)")
    print("browse them: .venv/bin/workbench app   (then open http://localhost:8501)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
