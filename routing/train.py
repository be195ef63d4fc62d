"""MoE trainer: one loop from data to a run directory.

Run dir (kind "moe"): config.json, metrics.jsonl (loss, aux losses, per-expert load of every gate
every `log_every` steps), load.json (per-epoch expert load on the test split + a token x expert
weight sample for the app's heatmaps), results.json (test AUC or loss at the best validation epoch,
NMI/ARI for the planted task), ot_plan.json (sparse-ot: one small transport plan),
checkpoints/final.pt (model state, written atomically), status.json.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.nn import functional as F

from routing.config import MoETrainConfig
from routing.data import Split, TaskData
from workbench.config import to_dict
from workbench.runs import Run, atomic_save_torch
from workbench.tracking import Tracker

def load_task(cfg: MoETrainConfig) -> TaskData:
    if cfg.task == "movielens":
        from routing.data.movielens import load_movielens

        return load_movielens(cfg.data_seed, cfg.max_examples or None)
    if cfg.task == "synthetic":
        from routing.data.synthetic import make_synthetic

        return make_synthetic(cfg.n_train, correlation=cfg.correlation, seed=cfg.data_seed)
    from routing.data.planted import make_planted

    return make_planted(cfg.n_train, clusters=cfg.clusters, seed=cfg.data_seed)


def task_losses(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """(T,) masked mean loss per task: BCE-with-logits (classification) or MSE (regression)."""
    if kind == "classification":
        per = F.binary_cross_entropy_with_logits(pred, y, reduction="none")
    else:
        per = (pred - y).pow(2)
    m = mask.to(per.dtype)
    return (per * m).sum(0) / m.sum(0).clamp(min=1)


@torch.no_grad()
def evaluate(model, split: Split, data: TaskData, device: str, batch: int = 4096) -> dict:
    """Per-task AUC (classification) or MSE, mean loss, test load per gate, and NMI/ARI when clusters exist."""
    from routing.metrics import ari, nmi, roc_auc

    model.eval()
    preds, tops, loads, sample = [], [], None, None
    for lo in range(0, len(split.y), batch):
        x = split.x[lo:lo + batch].to(device)
        ids = split.ids[lo:lo + batch].to(device) if split.ids is not None else None
        p, routes = model(x, ids)
        preds.append(p.float().cpu())
        tops.append(routes[0].weights.argmax(-1).cpu())
        batch_load = torch.stack([r.allocation.col_counts().float().cpu() for r in routes])  # (gates, E)
        loads = batch_load if loads is None else loads + batch_load
        if sample is None:
            sample = routes[0].weights[:64].float().cpu()
    model.train()
    pred = torch.cat(preds)
    losses = task_losses(pred, split.y, split.y_mask, data.kind)
    out = {"loss": float(losses.mean()), "task_loss": {t: float(v) for t, v in zip(data.tasks, losses)},
           "load": loads.tolist(), "weights_sample": sample.tolist()}
    if data.kind == "classification":
        aucs = {t: roc_auc(pred[split.y_mask[:, j], j].numpy(), split.y[split.y_mask[:, j], j].numpy())
                for j, t in enumerate(data.tasks)}
        out["auc"] = aucs
        out["auc_mean"] = float(np.mean(list(aucs.values())))
    if split.cluster is not None:
        top = torch.cat(tops).numpy()
        out["nmi"] = nmi(split.cluster.numpy(), top)
        out["ari"] = ari(split.cluster.numpy(), top)
    return out


def _scalar_metrics(routes, aux_by_name: dict) -> dict:
    row = {k: float(v.detach()) for k, v in aux_by_name.items()}
    for g, r in enumerate(routes):
        for k, v in r.metrics.items():
            row[f"gate{g}/{k}"] = v.tolist() if v.ndim else float(v)
    return row


def train(cfg: MoETrainConfig, run: Run | None = None) -> dict:
    """Train the MoE model of cfg.task with gate cfg.routing; write the run dir; return results.json."""
    from routing.models import MultiTaskMoE

    if cfg.task == "toy":
        from routing.toy_moe import train_toy

        return train_toy(cfg, run)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = load_task(cfg)
    gate_tag = cfg.routing.gate + ("+" if cfg.routing.local_search else "")
    run = run or Run.create("moe", to_dict(cfg), name=cfg.name or None, root=cfg.out)
    tracker = Tracker(run, cfg.wandb_project or None, to_dict(cfg))
    device = cfg.device
    model = MultiTaskMoE(data.train.x.shape[1], len(data.tasks), cfg.routing, cfg.d_hidden, cfg.d_expert_out,
                         data.info.get("cardinalities"), cfg.d_emb, shared_gate=cfg.task == "planted",
                         seed=cfg.seed).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    tr = data.train
    n = len(tr.y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    best, history, step, t0 = None, [], 0, time.time()
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"moe {cfg.task} {gate_tag} s{cfg.seed}", leave=False)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for lo in range(0, n, cfg.batch_size):
            idx = perm[lo:lo + cfg.batch_size]
            model.set_progress(step / total)
            x, y, m = tr.x[idx].to(device), tr.y[idx].to(device), tr.y_mask[idx].to(device)
            ids = tr.ids[idx].to(device) if tr.ids is not None else None
            pred, routes = model(x, ids)
            losses = task_losses(pred, y, m, data.kind)
            aux = {}
            for g, r in enumerate(routes):
                for k, v in r.aux_losses.items():
                    aux[f"aux/{k}"] = aux.get(f"aux/{k}", 0.0) + v
            loss = losses.sum() + sum(aux.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower --lr or the aux weights")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % cfg.log_every == 0:
                tracker.log({"epoch": epoch, "loss": loss.item(), **{f"loss/{t}": v.item() for t, v in
                                                                     zip(data.tasks, losses)},
                             **_scalar_metrics(routes, aux)}, step)
            step += 1
            if bar is not None:
                bar.update(1)
        model.set_progress(step / total)
        val = evaluate(model, data.val, data, device)
        score = val["auc_mean"] if data.kind == "classification" else -val["loss"]
        test = None
        if best is None or score > best["score"]:
            test = evaluate(model, data.test, data, device)
            best = {"score": score, "epoch": epoch, "val": val, "test": test}
        history.append({"epoch": epoch, "val_loss": val["loss"], "val_auc_mean": val.get("auc_mean"),
                        "load": val["load"], "weights_sample": val["weights_sample"] if epoch == cfg.epochs - 1 else None})
        tracker.log({"epoch": epoch, "val/loss": val["loss"], **({"val/auc_mean": val["auc_mean"]} if "auc_mean" in val
                                                                 else {}), **({"val/nmi": val["nmi"]} if "nmi" in val else {})},
                    step)
    if bar is not None:
        bar.close()
    final_test = evaluate(model, data.test, data, device)
    results = {"task": cfg.task, "gate": gate_tag, "seed": cfg.seed, "experts": cfg.routing.experts,
               "k": cfg.routing.k, "best_epoch": best["epoch"], "train_time_s": time.time() - t0, "steps": step,
               "n_params": sum(p.numel() for p in model.parameters()),
               "test": {k: v for k, v in best["test"].items() if k not in ("weights_sample",)},
               "final_test": {k: v for k, v in final_test.items() if k not in ("weights_sample", "load")}}
    if data.kind == "classification":
        results["test_auc_mean"] = best["test"]["auc_mean"]
    results["test_loss"] = best["test"]["loss"]
    if "nmi" in final_test:
        results["nmi"], results["ari"] = final_test["nmi"], final_test["ari"]
    run.write_json("load.json", {"experts": cfg.routing.experts, "gates": [f"{gate_tag}:{t}" for t in
                                                                         (data.tasks if cfg.task != "planted" else ["all"])],
                                 "epochs": [{"epoch": h["epoch"], "load": h["load"]} for h in history],
                                 "weights_sample": final_test["weights_sample"]})
    run.write_json("results.json", results)
    atomic_save_torch(run.file("checkpoints") / "final.pt", {"model": model.state_dict(), "config": to_dict(cfg)})
    gate0 = model.moe.gates[0]
    gate0 = getattr(gate0, "inner", gate0)
    if getattr(gate0, "last_plan", None) is not None:
        plan = gate0.last_plan[:32].cpu()
        run.write_json("ot_plan.json", {"orientation": gate0.orientation, "gamma": gate0.gamma, "k": gate0.k,
                                        "rows": "tokens", "cols": "experts", "plan": plan.tolist()})
    tracker.finish()
    run.set_status("done")
    return results
