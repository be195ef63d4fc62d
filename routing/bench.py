"""Quality benchmark: train every gate over several seeds on one task; mean +- std per gate.

Each (gate, seed) is a normal `moe` run dir under <out>/<bench name>/; the summary (per-run numbers,
mean and std per gate, the command) goes to <out>/<bench name>/summary.json and a markdown table.
A gate name ending in "+" means the same gate with local search (e.g. comet+).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from routing.config import BenchConfig, MoETrainConfig
from routing.train import train
from workbench.runs import atomic_write_json

def metric_of(results: dict) -> tuple[str, float]:
    if "test_auc_mean" in results:
        return "test_auc_mean", results["test_auc_mean"]
    return "test_loss", results["test_loss"]


def row_of(gate: str, seed: int, res: dict) -> dict:
    """One bench row from a run's results.json: the metric, per-task numbers, NMI, experts in use."""
    key, value = metric_of(res)
    load = np.array(res["test"]["load"][0])  # gate 0's test load per expert
    return {"gate": gate, "seed": seed, key: value, "nmi": res.get("nmi"), "time_s": res["train_time_s"],
            "per_task": res["test"].get("auc", res["test"].get("task_loss")),
            "experts_used": int((load > 0).sum()), "load_cv": float(load.std() / max(load.mean(), 1e-12)),
            "topk_load_share": float(np.sort(load)[::-1][:res["k"]].sum() / max(load.sum(), 1e-12))}


def summarize(rows: list[dict], task: str, command: str = "", config: dict | None = None) -> dict:
    key = "test_auc_mean" if "test_auc_mean" in rows[0] else "test_loss"
    summary = {"task": task, "metric": key, "command": command, "config": config or {}, "gates": {}, "runs": rows}
    for gate in dict.fromkeys(r["gate"] for r in rows):
        rs = [r for r in rows if r["gate"] == gate]
        vals = np.array([r[key] for r in rs])
        nmis = [r["nmi"] for r in rs if r["nmi"] is not None]
        summary["gates"][gate] = {
            "mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals),
            "time_s_mean": float(np.mean([r["time_s"] for r in rs])),
            "experts_used_mean": float(np.mean([r["experts_used"] for r in rs])),
            "topk_load_share_mean": float(np.mean([r["topk_load_share"] for r in rs])),
            **({"nmi_mean": float(np.mean(nmis)), "nmi_std": float(np.std(nmis, ddof=1)) if len(nmis) > 1 else 0.0}
               if nmis else {})}
    return summary


def _write(root: Path, summary: dict) -> None:
    atomic_write_json(root / "summary.json", summary)
    (root / "summary.md").write_text(markdown_table(summary) + "\n")


def run_bench(bench: BenchConfig, base: MoETrainConfig, command: str = "") -> dict:
    name = bench.bench_name or f"bench-{base.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(base.out) / name
    rows = []
    for gate in bench.gate_list():
        routing = dataclasses.replace(base.routing, gate=gate.rstrip("+"), local_search=gate.endswith("+"))
        for seed in range(bench.seeds):
            cfg = dataclasses.replace(base, routing=routing, seed=seed, name=f"{gate}-s{seed}", out=str(root),
                                      progress=False, wandb_group=base.wandb_group or name,  # one wandb group per bench
                                      wandb_tags=tuple(dict.fromkeys((*base.wandb_tags, gate))))
            res = train(cfg)
            rows.append(row_of(gate, seed, res))
            key, value = metric_of(res)
            print(f"  {gate:14s} seed {seed}: {key} {value:.4f}" + (f"  nmi {res['nmi']:.3f}" if "nmi" in res else "")
                  + f"  ({res['train_time_s']:.1f}s)", flush=True)
    summary = summarize(rows, base.task, command, dataclasses.asdict(base))
    _write(root, summary)
    print(markdown_table(summary))
    return summary


def markdown_table(summary: dict) -> str:
    key = summary["metric"]
    has_nmi = any("nmi_mean" in g for g in summary["gates"].values())
    head = (f"| gate | {key} mean ± std | n |" + (" NMI mean ± std |" if has_nmi else "")
            + " experts used | top-k load share | s/run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for gate, s in summary["gates"].items():
        nmi = f" {s['nmi_mean']:.3f} ± {s['nmi_std']:.3f} |" if has_nmi else ""
        lines.append(f"| {gate} | {s['mean']:.4f} ± {s['std']:.4f} | {s['n']} |{nmi} {s['experts_used_mean']:.1f} |"
                     f" {s['topk_load_share_mean']:.2f} | {s['time_s_mean']:.1f} |")
    return "\n".join(lines)

