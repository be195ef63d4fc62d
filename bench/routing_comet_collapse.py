"""Why COMET routes almost every MovieLens example to the same two experts: per-node measurements.

    .venv/bin/python bench/routing_comet_collapse.py runs/<bench>/comet-s0 [more run dirs] [--json out.json]

For each finished `moe` run of a COMET gate (with or without local search) this reloads the trained
model (checkpoints/final.pt) and, on the run's test split, measures gate 0 (task "watch"):

- per tree: how many examples reach each leaf (the share of the busiest leaf, the number of leaves that
  get 1% of the examples), and the resulting top-k expert share;
- per internal node on the busiest path and overall: the node pre-activation t = u.x + b over examples,
  its mean and standard deviation in units of gamma/2 (|mean| > 1 with std << 1 means the node sends
  every example the same way: a constant split), and the share of examples that the smooth step leaves
  soft (|t| < gamma/2);
- how much of the mean comes from the bias b and how much from u.mean(x) (the embeddings' mean).

Run it with the code version that trained the run (PYTHONPATH at that checkout) when the gate's
parameters changed since.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json
import sys
from pathlib import Path

import torch



def analyse(run_dir: Path) -> dict:
    from routing.config import GateConfig, MoETrainConfig
    from routing.models import MultiTaskMoE
    from routing.train import load_task

    ck = torch.load(run_dir / "checkpoints" / "final.pt", map_location="cpu", weights_only=False)
    cfg_d = dict(ck["config"])
    cfg_d["routing"] = GateConfig(**cfg_d["routing"])
    cfg = MoETrainConfig(**{k: v for k, v in cfg_d.items() if k in MoETrainConfig.__dataclass_fields__})
    data = load_task(cfg)
    model = MultiTaskMoE(data.train.x.shape[1], len(data.tasks), cfg.routing, cfg.d_hidden, cfg.d_expert_out,
                         data.info.get("cardinalities"), cfg.d_emb, shared_gate=cfg.task == "planted", seed=cfg.seed)
    model.load_state_dict(ck["model"])
    model.eval()
    gate = model.moe.gates[0]
    gate = getattr(gate, "inner", gate)
    k, e, gamma = gate.k, gate.n_experts, gate.gamma
    with torch.no_grad():
        x = model.features(data.test.x)  # (N, d) the gate's input
        xc = gate._centred(x) if getattr(gate, "center", None) is not None else x  # what the trees see
        w = gate.nodes.weight.detach()  # (k (E-1), d)
        bias = gate.nodes.bias.detach() if getattr(gate.nodes, "bias", None) is not None else torch.zeros(w.shape[0])
        t = (xc @ w.T + bias).view(len(x), k, e - 1)  # node pre-activations u.x + b, in the smooth step's units
        logp = gate.log_reach(x)  # (N, k, E)
        leaf = logp.argmax(-1)  # (N, k) most likely leaf per tree
        weights = torch.cat([gate(x[i:i + 4096]).weights for i in range(0, len(x), 4096)])  # (N, E)
    half = gamma / 2
    tag = cfg.routing.gate + ("+" if cfg.routing.local_search else "")
    out = {"run": str(run_dir), "gate": tag, "gamma": gamma, "lambda": cfg.routing.entropy_reg,
           "test_auc_mean": json.loads((run_dir / "results.json").read_text()).get("test_auc_mean"), "trees": []}
    load = (weights > 0).float().sum(0)
    out["topk_share"] = float(load.sort(descending=True).values[:k].sum() / load.sum())
    out["experts_per_example"] = float((weights > 0).float().sum(1).mean())
    x_mean = xc.mean(0)
    for j in range(k):
        counts = torch.bincount(leaf[:, j], minlength=e).float() / len(x)
        nodes = []
        for i in range(e - 1):
            ti = t[:, j, i]
            row = j * (e - 1) + i
            nodes.append({"node": i, "mean": float(ti.mean() / half), "std": float(ti.std() / half),
                          "soft": float((ti.abs() < half).float().mean()),
                          "bias": float(bias[row] / half), "u_dot_mean_x": float(w[row] @ x_mean / half)})
        out["trees"].append({"busiest_leaf_share": float(counts.max()), "leaves_over_1pct": int((counts > 0.01).sum()),
                             "root": nodes[0], "nodes": nodes,
                             "constant_nodes": sum(1 for n in nodes if abs(n["mean"]) > 1 and n["std"] < 0.5)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run dirs of finished COMET runs")
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [analyse(Path(r)) for r in args.runs]
    for r in rows:
        trees = "; ".join(f"tree {j}: busiest leaf {t['busiest_leaf_share']:.2f}, {t['leaves_over_1pct']} leaves >1%, "
                          f"root mean {t['root']['mean']:+.2f} std {t['root']['std']:.2f} (bias {t['root']['bias']:+.2f}, "
                          f"u.mean(x) {t['root']['u_dot_mean_x']:+.2f}), soft {t['root']['soft']:.2f}, "
                          f"constant nodes {t['constant_nodes']}/{len(t['nodes'])}" for j, t in enumerate(r["trees"]))
        print(f"{r['run']}: {r['gate']} AUC {r['test_auc_mean']:.4f} top-k share {r['topk_share']:.2f} "
              f"experts/example {r['experts_per_example']:.2f} | {trees}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
