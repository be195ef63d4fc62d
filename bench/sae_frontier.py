"""The SAE frontier: k x {TopK, Feature Choice (uniform, Zipf), Mutual Choice} x seeds on one model and hook.

    .venv/bin/python bench/sae_frontier.py                       # toy-ioi, k 4 8 16 32, 3 seeds, 2M tokens each
    .venv/bin/python bench/sae_frontier.py --model MODEL --out runs/frontier-MODEL
    .venv/bin/python bench/sae_frontier.py --smoke               # minutes: k 4 8, 1 seed, 100k tokens

Caches the activations once (``workbench acts cache``) so every run trains on the same tokens, then
trains each (variant, k, seed) with ``workbench sae train --cache ...`` in its default configuration
(each architecture's default normalisation; ``--normalize`` overrides it for all). Every run is
evaluated as ``sae train`` does: the saved SAE in its inference mode (threshold for FC/MC) and in batch
mode, on held-out text: FVU, CE loss recovered, dead % (silent on all of ``--dead-window`` held-out
tokens), per-token L0 mean / std / p05-p95 and the fraction of tokens with no latent.

Resumable: each finished run appends one JSON row to ``<out>/results.jsonl``; rerunning the same
command skips those, resumes an interrupted run from its last checkpoint and trains the rest. The
markdown table (mean ± std over seeds) is rewritten to ``<out>/frontier.md`` after every run, and
``--table`` only prints it.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json
import sys
import time
from pathlib import Path

# variant -> `workbench sae train` flags
VARIANTS = {"topk": ["--arch", "topk"],
            "fc-uniform": ["--arch", "feature-choice", "--capacity", "uniform"],
            "fc-zipf": ["--arch", "feature-choice", "--capacity", "zipf"],
            "mc": ["--arch", "mutual-choice"]}
METRICS = ("fvu", "ce_recovered", "dead_pct", "l0_mean", "l0_std", "l0_p05", "l0_p95", "l0_zero_frac")


def _int(s: str) -> int:
    return int(s.replace("_", ""))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tokens", type=_int, default=2_000_000, help="training tokens per run (and cached tokens)")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--batch-size", type=_int, default=4096)
    p.add_argument("--normalize", default="auto", help="none, expected_norm, per_token or auto (each arch's default)")
    p.add_argument("--eval-tokens", type=_int, default=65_536)
    p.add_argument("--dead-window", type=_int, default=1_000_000)
    p.add_argument("--out", default="runs/frontier", help="runs, cache, results.jsonl and frontier.md go here")
    p.add_argument("--cache", default=None, help="train on this activation cache (`workbench acts cache`) instead of <out>/cache")
    p.add_argument("--smoke", action="store_true", help="a quick check: k 4 8, seed 0, 100k tokens, small evaluation")
    p.add_argument("--table", action="store_true", help="only print the table of the results so far")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `workbench sae train` flags, for every run")
    a = p.parse_args(argv)
    if a.smoke:
        a.ks, a.seeds, a.tokens, a.eval_tokens, a.dead_window, a.batch_size = [4, 8], [0], 100_000, 8192, 50_000, 2048
    return a


def run_name(variant: str, k: int, seed: int, normalize: str) -> str:
    return f"{variant}-k{k}-{normalize}-s{seed}"


def done_rows(results: Path) -> dict[str, dict]:
    """Rows already in results.jsonl by run name (a torn last line is ignored)."""
    rows = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[r["name"]] = r
    return rows


def row_of(run_dir: Path, variant: str, k: int, seed: int, seconds: float | None) -> dict:
    """One results row from a finished run's eval.json: every metric per mode (inference, batch)."""
    ev = json.loads((run_dir / "eval.json").read_text())
    row = {"name": run_dir.name, "variant": variant, "k": k, "seed": seed, "model": ev["model"], "hook": ev["hook"],
           "normalize": ev.get("normalize"), "aux": ev["aux"], "tokens_trained": ev["tokens_trained"],
           "inference_mode": ev["mode"], "dead_window": ev.get("dead_window"), "train_seconds": seconds}
    for label, mode in (("inference", ev["mode"]), ("batch", "batch")):
        r = ev["modes"].get(mode)
        if r is not None:
            row.update({f"{label}_{m}": (100 * r["dead_fraction"] if m == "dead_pct" else r.get(m)) for m in METRICS})
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one line per (variant, k), mean ± std over seeds, inference mode then batch mode."""
    import statistics

    def cell(vals, nd):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "–"
        m = statistics.fmean(vals)
        return f"{m:.{nd}f} ± {statistics.stdev(vals):.{nd}f}" if len(vals) > 1 else f"{m:.{nd}f}"

    cols = [("fvu", 4, "FVU"), ("ce_recovered", 4, "CE recovered"), ("dead_pct", 1, "dead %"),
            ("l0_mean", 2, "L0"), ("l0_std", 2, "L0 std"), ("l0_zero_frac", 3, "no-latent tokens")]
    head = ["variant", "k", "norm", "seeds", "dead window"] + [f"{t} (inference)" for _, _, t in cols] + \
           [f"{t} (batch)" for _, _, t in cols if t in ("FVU", "CE recovered", "dead %", "L0 std", "no-latent tokens")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((list(VARIANTS).index(r["variant"]), r["k"], r["normalize"], r.get("dead_window") or 0), []).append(r)
    for (vi, k, norm, window), rs in sorted(groups.items()):
        cells = [list(VARIANTS)[vi], str(k), str(norm), str(len(rs)), f"{window:,}" if window else "?"]
        cells += [cell([r.get(f"inference_{m}") for r in rs], nd) for m, nd, _ in cols]
        batch_same = all(r["inference_mode"] == "batch" for r in rs)  # TopK: one mode
        cells += ["(same)" if batch_same else cell([r.get(f"batch_{m}") for r in rs], nd)
                  for m, nd, t in cols if t in ("FVU", "CE recovered", "dead %", "L0 std", "no-latent tokens")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    from cli.acts import ensure_cache
    from cli.main import main as wb

    out = Path(a.out)
    results = out / "results.jsonl"
    if a.table:
        print(table(list(done_rows(results).values())))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache) if a.cache else out / "cache"
    rc = ensure_cache(cache, a.model, a.hook, a.tokens)
    if rc:
        return rc
    todo = [(v, k, s) for k in a.ks for v in a.variants for s in a.seeds]
    for i, (variant, k, seed) in enumerate(todo):
        # the name carries the normalisation actually used (auto resolves per arch)
        from sae.config import SAEConfig

        arch = VARIANTS[variant][1]
        norm = SAEConfig(arch=arch, normalize=a.normalize).normalize
        name = run_name(variant, k, seed, norm)
        if name in done_rows(results):
            continue
        run = out / name
        seconds = None
        if not (run / "eval.json").is_file():
            flags = ["sae", "train", "--model", a.model, "--hook", a.hook, *VARIANTS[variant], "--k", str(k),
                     "--expansion", str(a.expansion), "--tokens", str(a.tokens), "--batch-size", str(a.batch_size),
                     "--normalize", norm, "--seed", str(seed), "--eval-tokens", str(a.eval_tokens),
                     "--dead-window", str(a.dead_window), "--cache", str(cache), "--runs-dir", str(out), "--quiet", *a.extra]
            print(f"[{i + 1}/{len(todo)}] {name}", flush=True)
            t0 = time.perf_counter()
            rc = wb(flags + (["--resume", str(run)] if (run / "config.json").is_file() else ["--name", name]))
            if rc:
                return rc
            seconds = time.perf_counter() - t0
        with open(results, "a") as f:
            f.write(json.dumps(row_of(run, variant, k, seed, seconds)) + "\n")
        (out / "frontier.md").write_text(table(list(done_rows(results).values())) + "\n")
    print(table(list(done_rows(results).values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
