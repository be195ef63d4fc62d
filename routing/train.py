"""MoE trainer: one loop for every task, from data to a run directory.

What differs between tasks lives in a small task object (the multi-task recommender / regression /
planted-routing model here, the tiny MoE transformer in routing/toy_moe.py): it owns the model and the
data order, says how many steps make an epoch, which optimizer and learning rate to use, computes a
batch's task loss, and evaluates. The loop itself is the same for all of them:

    for each step: set the gates' training progress -> learning rate -> task loss + every gate's aux
    losses -> backward (gradient clip if the task asks) -> optimizer step -> metrics.jsonl row every
    `log_every` steps -> at each epoch end the task's evaluation

Run dir (kind "moe"): config.json, metrics.jsonl (loss, aux losses, per-expert load of every gate
every `log_every` steps), load.json (expert load on the evaluation split + a token x expert weight
sample for the app's heatmaps), results.json, ot_plan.json (sparse-ot: one small transport plan),
checkpoints/step-XXXXXXXX.pt (the last two; workbench.checkpoint.CheckpointStore) and checkpoints/final.pt
(model state, written atomically), status.json.

Checkpoints are written every `checkpoint_every` steps, at every epoch end and at the last step; each holds
the model, the optimizer, the global RNG states, the task's own state (batch order, best epoch so far) and
the training seconds so far, so `train(cfg, resume=run_dir)` continues an interrupted run to the same
numbers as an uninterrupted one (on CPU; the sparse-OT gate's compile="auto" solves its first problems
again eagerly after a resume, which can move its results in the last float digits). metrics.jsonl rows
carry the number of completed steps, so a resume drops the rows after its checkpoint.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from routing.config import MoETrainConfig
from routing.data import Split, TaskData
from routing.gate import GateOutput
from workbench.checkpoint import CheckpointStore, rng_state, set_rng_state
from workbench.config import to_dict
from workbench.errors import RunError
from workbench.runs import Run, atomic_save_torch
from workbench.tracking import Tracker

KIND = "moe"
CHECKPOINT_KEYS = ("model", "optimizer", "rng", "task", "train_time")


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


class MultiTask:
    """MovieLens (two classification tasks), the synthetic regression tasks and planted routing: a
    multi-gate MoE (routing/models.py), epochs over the training split in a seeded random order, Adam at
    a constant learning rate, validation after every epoch, test metrics at the best validation epoch."""

    grad_clip: float | None = None

    def __init__(self, cfg: MoETrainConfig):
        from routing.models import MultiTaskMoE

        self.cfg, self.device = cfg, cfg.device
        self.data = load_task(cfg)
        self.model = MultiTaskMoE(self.data.train.x.shape[1], len(self.data.tasks), cfg.routing, cfg.d_hidden,
                                  cfg.d_expert_out, self.data.info.get("cardinalities"), cfg.d_emb,
                                  shared_gate=cfg.task == "planted", seed=cfg.seed).to(cfg.device)
        self.n = len(self.data.train.y)
        self.steps_per_epoch = math.ceil(self.n / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.gen = torch.Generator().manual_seed(cfg.seed)  # the batch order of every epoch
        self.perm: Tensor | None = None
        self.best: dict | None = None
        self.history: list[dict] = []

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.cfg.lr)

    def state_dict(self) -> dict:
        """What the loop needs besides the model and optimizer to continue exactly: the batch order, the
        current epoch's permutation, the best epoch so far and the per-epoch history."""
        return {"gen": self.gen.get_state(), "perm": self.perm, "best": self.best, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.best, self.history = state["perm"], state["best"], state["history"]

    def lr(self, step: int) -> float:
        return self.cfg.lr

    def batch_loss(self, step: int) -> tuple[Tensor, dict, list[GateOutput]]:
        i = step % self.steps_per_epoch
        if i == 0:
            self.perm = torch.randperm(self.n, generator=self.gen)
        idx = self.perm[i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size]
        tr, dev = self.data.train, self.device
        ids = tr.ids[idx].to(dev) if tr.ids is not None else None
        pred, routes = self.model(tr.x[idx].to(dev), ids)
        losses = task_losses(pred, tr.y[idx].to(dev), tr.y_mask[idx].to(dev), self.data.kind)
        return losses.sum(), {f"loss/{t}": float(v.detach()) for t, v in zip(self.data.tasks, losses)}, routes

    def end_epoch(self, epoch: int) -> dict:
        """Validation (and test when it is the best epoch so far); the row logged for the epoch."""
        val = evaluate(self.model, self.data.val, self.data, self.device)
        score = val["auc_mean"] if self.data.kind == "classification" else -val["loss"]
        if self.best is None or score > self.best["score"]:
            test = evaluate(self.model, self.data.test, self.data, self.device)
            self.best = {"score": score, "epoch": epoch, "val": val, "test": test}
        self.history.append({"epoch": epoch, "val_loss": val["loss"], "val_auc_mean": val.get("auc_mean"),
                             "load": val["load"]})
        return {"val/loss": val["loss"], **({"val/auc_mean": val["auc_mean"]} if "auc_mean" in val else {}),
                **({"val/nmi": val["nmi"]} if "nmi" in val else {})}

    def finish(self, run: Run, train_time: float, steps: int) -> dict:
        cfg, data, tag = self.cfg, self.data, self.cfg.routing.tag
        final_test = evaluate(self.model, data.test, data, self.device)
        best = self.best
        results = {"task": cfg.task, "gate": tag, "seed": cfg.seed, "experts": cfg.routing.experts,
                   "k": cfg.routing.k, "best_epoch": best["epoch"], "train_time_s": train_time, "steps": steps,
                   "n_params": sum(p.numel() for p in self.model.parameters()),
                   "test": {k: v for k, v in best["test"].items() if k not in ("weights_sample",)},
                   "final_test": {k: v for k, v in final_test.items() if k not in ("weights_sample", "load")}}
        if data.kind == "classification":
            results["test_auc_mean"] = best["test"]["auc_mean"]
        results["test_loss"] = best["test"]["loss"]
        if "nmi" in final_test:
            results["nmi"], results["ari"] = final_test["nmi"], final_test["ari"]
        gates = [f"{tag}:{t}" for t in (data.tasks if cfg.task != "planted" else ["all"])]
        run.write_json("load.json", {"experts": cfg.routing.experts, "gates": gates,
                                     "epochs": [{"epoch": h["epoch"], "load": h["load"]} for h in self.history],
                                     "weights_sample": final_test["weights_sample"]})
        gate0 = self.model.moe.gates[0]
        gate0 = getattr(gate0, "inner", gate0)
        if getattr(gate0, "last_plan", None) is not None:
            plan = gate0.last_plan[:32].cpu()
            run.write_json("ot_plan.json", {"orientation": gate0.orientation, "gamma": gate0.gamma, "k": gate0.k,
                                            "rows": "tokens", "cols": "experts", "plan": plan.tolist()})
        return results


def make_task(cfg: MoETrainConfig):
    """The task object for cfg.task (routing/toy_moe.py's ToyTask for --task toy)."""
    if cfg.task == "toy":
        from routing.toy_moe import ToyTask

        return ToyTask(cfg)
    return MultiTask(cfg)


def _gate_metrics(routes: list[GateOutput]) -> dict:
    row = {}
    for g, r in enumerate(routes):
        for k, v in r.metrics.items():
            row[f"gate{g}/{k}"] = v.tolist() if v.ndim else float(v)
    return row


def checkpoint_store(run: Run) -> CheckpointStore:
    return CheckpointStore(run.path / "checkpoints")


def fit(task, run: Run, cfg: MoETrainConfig, tracker: Tracker, ck: dict | None = None) -> tuple[int, float]:
    """The training loop (module docstring), from checkpoint `ck` when given; returns the steps taken and
    the training seconds (over every session of the run)."""
    model: nn.Module = task.model
    opt = task.optimizer()
    total, per_epoch = task.total_steps, task.steps_per_epoch
    start, before = 0, 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        task.load_state_dict(ck["task"])
        set_rng_state(ck["rng"])
        start, before = ck["step"], ck["train_time"]
    store = checkpoint_store(run)
    every = cfg.checkpoint_every or total
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=f"moe {cfg.task} {cfg.routing.tag} s{cfg.seed}", leave=False)
    t0 = time.time()
    for step in range(start, total):
        model.set_progress(step / total)
        lr = task.lr(step)
        for group in opt.param_groups:
            group["lr"] = lr
        task_loss, logs, routes = task.batch_loss(step)
        aux: dict[str, Tensor] = {}
        for r in routes:
            for name, v in r.aux_losses.items():
                aux[f"aux/{name}"] = aux.get(f"aux/{name}", 0.0) + v
        loss = task_loss + sum(aux.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower --lr or the aux weights")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if task.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
        opt.step()
        done = step + 1  # rows and checkpoints are numbered by completed steps
        if step % cfg.log_every == 0 or done == total:
            tracker.log({"epoch": step // per_epoch, "loss": loss.item(), "task_loss": task_loss.item(), "lr": lr,
                         **logs, **{k: float(v.detach()) for k, v in aux.items()}, **_gate_metrics(routes)}, done)
        if bar is not None:
            bar.update(1)
        if done % per_epoch == 0:
            model.set_progress(done / total)
            row = task.end_epoch(step // per_epoch)
            if row:
                tracker.log({"epoch": step // per_epoch, **row}, done, section="eval")
        if done % every == 0 or done % per_epoch == 0 or done == total:
            path = store.save(done, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
                                     "task": task.state_dict(), "train_time": before + time.time() - t0,
                                     "config": to_dict(cfg)})
            run.set_status("running", step=done, steps=total, last_checkpoint=str(path))
    if bar is not None:
        bar.close()
    return total, before + time.time() - t0


def open_resume(path) -> tuple[Run, MoETrainConfig]:
    """The run to resume and its stored config (one-line errors for a run of another kind)."""
    run = Run.open(path)
    if run.kind != KIND:
        raise RunError(f"{path} is a {run.kind!r} run, not a moe run; pass a run made by `workbench moe train`")
    return run, MoETrainConfig(**run.config)


def train(cfg: MoETrainConfig, run: Run | None = None, resume: bool = False) -> dict:
    """Train the MoE model of cfg.task with gate cfg.routing; write the run dir; return results.json.

    With resume=True, `run` is an existing run dir: training continues from its newest checkpoint (from
    the start if it has none). A kill or an error leaves status "interrupted" / "failed" with the last
    checkpoint named in status.json."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg)  # data and model first: a config they reject leaves no run dir behind
    ck = None
    if resume:
        run.clean_tmp()
        ck = checkpoint_store(run).load_latest(required=CHECKPOINT_KEYS)
    run = run or Run.create(KIND, to_dict(cfg), name=cfg.name or None, root=cfg.out)
    run.truncate_metrics(ck["step"] if ck is not None else 0)
    wandb_id = _wandb_id(run) if resume else None
    tracker = Tracker(run, cfg.wandb_project or None, to_dict(cfg), resume_id=wandb_id, tags=cfg.wandb_tags, group=cfg.wandb_group)
    run.set_status("running", step=ck["step"] if ck is not None else 0, steps=task.total_steps)
    try:
        steps, train_time = fit(task, run, cfg, tracker, ck)
        task.model.set_progress(1.0)
        results = task.finish(run, train_time, steps)
        run.write_json("results.json", results)
        atomic_save_torch(run.file("checkpoints") / "final.pt", {"model": task.model.state_dict(), "config": to_dict(cfg)})
        tracker.artifact(f"{run.name}-moe", [run.file("checkpoints") / "final.pt"], metadata={"task": cfg.task, "gate": cfg.routing.gate})
    except BaseException as e:
        last = checkpoint_store(run).paths()
        run.set_status("failed" if not isinstance(e, KeyboardInterrupt) else "interrupted", error=str(e) or type(e).__name__,
                       last_checkpoint=str(last[-1]) if last else None)
        raise
    finally:
        tracker.finish()
    run.set_status("done", step=steps, steps=steps)
    return results


def _wandb_id(run: Run) -> str | None:
    try:
        return run.read_json("wandb.json").get("id")
    except RunError:
        return None
