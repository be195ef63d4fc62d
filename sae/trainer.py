"""The SAE training loop, top to bottom.

    source  = activations streamed from the model at the hook, or read from a cache
    first   = the first batch: sets the input scale (expected_norm: E|x| = sqrt(d_in); per_token
              normalisation happens inside the SAE), b_dec (geometric median) and the encoder's
              scale (least squares, see SAE.fit_encoder_scale)
    repeat  steps = tokens // batch_size times:
        x    = next batch * scale                        (NaN/inf -> stop, naming the last checkpoint)
        loss = FVU(x_in, x_hat_in) [+ l1_coeff * L1] [+ aux_coeff * aux] [+ cover_coeff * cover]
               (x_in: x, or x per-token normalised; the losses live in the space the SAE works in)
        backward; drop the decoder gradient along each decoder row; Adam; lr schedule;
        renormalise decoder rows; update dead counters, densities, inference thresholds
        log (metrics.jsonl, wandb, progress bar) / evaluate CE / checkpoint, every so many steps
    save    = cfg.json + sae_weights.safetensors (scale folded in) and eval.json in the run dir: the
              saved SAE evaluated in its inference mode (headline) and in batch mode

A checkpoint (``checkpoints/step-XXXXXXXX.pt``, through ``workbench.checkpoint.CheckpointStore``)
holds everything the loop reads: SAE parameters and buffers (dead counters, densities, thresholds),
optimizer, scheduler, RNG states and the data position, so ``--resume`` continues bit-identically on CPU.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from workbench.config import to_dict
from workbench.errors import ConfigError, RunError
from workbench.checkpoint import CheckpointStore, rng_state, set_rng_state
from workbench.runs import Run

from sae import io
from sae.config import TrainConfig
from sae.losses import aux_loss, aux_weights, cover_loss, fvu, l1_penalty
from sae.model import SAE, SAEOutput, build_sae, geometric_median, inference_mode
from sae.normalize import expected_norm_scale, per_token_factor

KIND = "sae"
KEEP_CHECKPOINTS = 2
COVER_ARCHS = ("feature-choice", "mutual-choice")  # allocations that can leave a token without latents


class Diverged(RunError):
    """NaN/inf in the activations or the loss."""


class Schedule:
    """lr factor: linear warm-up over `warmup` steps, constant, linear decay to 0 over the last `decay` steps."""

    def __init__(self, warmup: int, total: int, decay_frac: float):
        self.warmup, self.total = warmup, total
        self.decay_start = total - int(decay_frac * total)

    def __call__(self, step: int) -> float:
        f = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if step >= self.decay_start:
            f *= max(0.0, (self.total - step) / max(1, self.total - self.decay_start))
        return f


def make_optimizer(sae: SAE, lr: float) -> torch.optim.Adam:
    fused = sae.W_enc.device.type in ("cpu", "cuda")
    return torch.optim.Adam(sae.parameters(), lr=lr, fused=fused)


def train_step(sae: SAE, opt: torch.optim.Optimizer, sched, x: torch.Tensor, cfg: TrainConfig,
               k_aux: int) -> tuple[SAEOutput, dict[str, torch.Tensor]]:
    """One update on a (N, d_in) batch (already scaled). Raises FloatingPointError on a non-finite loss."""
    out = sae(x)
    parts = {"fvu": fvu(out.x_in, out.x_hat_in)}
    loss = parts["fvu"]
    if sae.arch == "relu-l1":
        parts["l1"] = l1_penalty(out)
        loss = loss + sae.cfg.l1_coeff * parts["l1"]
    w = aux_weights(cfg.aux, sae, cfg.dead_window)
    if w is not None and cfg.aux_coeff > 0:
        parts["aux"] = aux_loss(sae, out, w, k_aux)
        loss = loss + cfg.aux_coeff * parts["aux"]
    if sae.arch in COVER_ARCHS and cfg.cover_coeff > 0:
        parts["cover"] = cover_loss(sae, out, sae.cfg.k)
        loss = loss + cfg.cover_coeff * parts["cover"]
    parts["loss"] = loss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_parallel_grad()
    opt.step()
    sched.step()
    sae.normalize_decoder()
    sae.update_stats(out, cfg.density_ema)
    return out, parts


# ---- data ---------------------------------------------------------------------------------------
class Source:
    """Batches of activations from a stream or a cache, with a resumable position."""

    def __init__(self, cfg: TrainConfig, model):
        self.cfg = cfg
        a = cfg.acts
        if cfg.cache:
            from workbench.cache import ActivationCache

            self.cache = ActivationCache(cfg.cache)
            m = self.cache.manifest
            for key, want in (("hook", a.hook), ("model", a.model), ("head", a.head)):
                if key in m and m[key] != want:
                    raise ConfigError(f"{key}: the cache {cfg.cache} holds activations of {key} {m[key]!r}, not {want!r}; "
                                      f"pass --{key} {m[key]} or another --cache")
            self.d_in, self.where = self.cache.d, f"the cache {cfg.cache}"
            self.batch = 0
            self._it = None
        else:
            from workbench.acts import ActivationStream
            from workbench.models import hook_dim

            self.cache = None
            self.d_in, self.where = hook_dim(model, a.hook, a.head), f"hook {a.hook} of {a.model}"
            self.stream = ActivationStream(model, a)

    def __next__(self) -> torch.Tensor:
        if self.cache is None:
            return next(self.stream)
        if self._it is None:
            self._it = self.cache.batches(self.cfg.acts.batch_size, shuffle=True, seed=self.cfg.acts.seed, start_batch=self.batch)
        self.batch += 1
        return next(self._it)

    def state_dict(self) -> dict:
        return {"batch": self.batch} if self.cache is not None else {"stream": self.stream.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        if self.cache is not None:
            self.batch, self._it = s["batch"], None
        else:
            self.stream.load_state_dict(s["stream"])


# ---- checkpoints --------------------------------------------------------------------------------
CHECKPOINT_KEYS = ("scale", "sae", "opt", "sched", "rng", "data", "tokens")


def checkpoint_store(run: Run) -> CheckpointStore:
    return CheckpointStore(run.path / "checkpoints", keep=KEEP_CHECKPOINTS)


def load_latest_checkpoint(run: Run) -> dict | None:
    """The newest checkpoint that loads (a corrupt one is skipped with a warning), or None."""
    return checkpoint_store(run).load_latest(required=CHECKPOINT_KEYS)


# ---- the loop -----------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: str | Path | None = None, *, model=None, progress: bool = True,
          on_step: Callable[[int], None] | None = None) -> Run:
    """Train (or resume) an SAE run; returns the run. `on_step(completed)` is a hook for tests."""
    from tqdm.auto import tqdm

    from workbench.models import load_model
    from workbench.tracking import Tracker

    run = None
    if resume is not None:
        run = Run.open(resume)
        if run.kind != KIND:
            raise RunError(f"{resume} is a {run.kind!r} run, not an SAE run")
        run.clean_tmp()
    device = torch.device(cfg.acts.device)
    source = Source(cfg, None) if cfg.cache else None  # a missing or mismatched --cache fails before the model loads
    if source is not None:
        cfg = replace(cfg, sae=cfg.sae.resolve(source.d_in, source.where))
    model = model if model is not None else load_model(cfg.acts.model, device=cfg.acts.device)
    if source is None:
        source = Source(cfg, model)
        cfg = replace(cfg, sae=cfg.sae.resolve(source.d_in, source.where))  # k <= d_sae, d_in vs hook
    k_aux = cfg.aux_k(cfg.sae.d_in, cfg.sae.d_sae)
    cfg = replace(cfg, lr=cfg.learning_rate(cfg.sae.d_sae))  # the resolved lr, never null in config.json or wandb
    _warn_dead_window(cfg)
    if run is None:
        run = Run.create(KIND, to_dict(cfg), name=cfg.name, root=cfg.runs_dir)

    sae = build_sae(cfg.sae)
    total = cfg.steps
    store = checkpoint_store(run)
    ck = store.load_latest(required=CHECKPOINT_KEYS) if resume is not None else None
    first = None
    if ck is None:  # fresh start: scale and b_dec from the first batch
        run.truncate_metrics(0)  # a resumed run killed before its first checkpoint starts over
        first = _finite(next(source), 0, run, None)
        scale = _input_scale(first, cfg)
        sae.init_weights(torch.Generator().manual_seed(cfg.acts.seed))
        with torch.no_grad():
            x0 = first * scale
            sae.b_dec.copy_(_b_dec_init(x0 * per_token_factor(x0) if cfg.sae.normalize == "per_token" else x0, cfg.b_dec_init))
        sae.fit_encoder_scale(first * scale)
    else:
        scale = ck["scale"]
        sae.load_state_dict(ck["sae"])
    sae.to(device)
    opt = make_optimizer(sae, cfg.learning_rate(cfg.sae.d_sae))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Schedule(cfg.warmup_steps, total, cfg.decay_frac))
    start = 0
    if ck is not None:
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        source.load_state_dict(ck["data"])
        set_rng_state(ck["rng"])
        start = ck["step"]
        run.truncate_metrics(start)
    last_ckpt = ck["path"] if ck is not None else None

    wandb_id = _wandb_id(run) if resume is not None else None
    tracker = Tracker(run, cfg.wandb_project, to_dict(cfg), resume_id=wandb_id, tags=cfg.wandb_tags, group=cfg.wandb_group)
    run.set_status("running", step=start, steps=total)
    n = cfg.acts.batch_size
    bar = tqdm(total=total, initial=start, desc=f"sae {cfg.sae.arch} {run.name}", unit="step", disable=not progress,
               dynamic_ncols=True, mininterval=0.5)
    t_log, s_log = time.perf_counter(), start
    try:
        for step in range(start, total):
            x = first if first is not None else next(source)
            first = None
            x = _finite(x, step, run, last_ckpt).to(device) * scale  # (N, d_in)
            try:
                out, parts = train_step(sae, opt, sched, x, cfg, k_aux)
            except FloatingPointError as e:
                raise _diverged(run, step, last_ckpt, str(e)) from None
            completed = step + 1
            if completed % cfg.log_every == 0 or completed == total:
                now = time.perf_counter()
                row = _train_metrics(sae, out, parts, cfg, opt, completed * n)
                row["tok_per_s"] = (completed - s_log) * n / max(now - t_log, 1e-9)
                t_log, s_log = now, completed
                tracker.log(row, step=completed)
                tracker.histogram("train/latent_density_log10", _log_density(sae), step=completed)
                bar.set_postfix(fvu=f"{row['fvu']:.3f}", l0=f"{row['l0_mean']:.1f}", dead=f"{100 * row['dead_fraction']:.1f}%")
            if cfg.ce_every and completed % cfg.ce_every == 0 and completed != total:
                ev = _evaluate(sae, scale, model, cfg, modes=("batch",))["batch"]
                tracker.log({"ce_recovered": ev["ce_recovered"], "eval_fvu": ev["fvu"]}, step=completed, section="eval")
            if completed % cfg.checkpoint_every == 0 or completed == total:
                if not all(torch.isfinite(p).all() for p in sae.parameters()):
                    raise _diverged(run, step, last_ckpt, "the parameters became non-finite")
                last_ckpt = str(store.save(completed, {
                    "tokens": completed * n, "scale": scale, "sae": sae.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "rng": rng_state(), "data": source.state_dict(), "config": to_dict(cfg)}))
            bar.update(1)
            if on_step is not None:
                on_step(completed)
        bar.close()
        io.save(sae.folded(scale), run.path, _sae_meta(cfg, model))
        result = evaluate_saved(run.path, model, cfg)
        summary = eval_summary(result, cfg, total * n)
        run.write_json("eval.json", summary)
        tracker.log({f"eval/{m}/{k}": v for m, r in result.items() for k, v in r.items() if isinstance(v, (int, float))},
                    step=total)
        tracker.artifact(f"{run.name}-sae", [run.path / f for f in (io.WEIGHTS, io.CFG, io.STATS)], metadata={
            "arch": cfg.sae.arch, "k": cfg.sae.k, "d_sae": cfg.sae.d_sae, "hook": cfg.acts.hook, "model": cfg.acts.model,
            **{k: summary.get(k) for k in ("mode", "fvu", "ce_recovered", "l0_mean", "dead_fraction")}})
        run.set_status("done", step=total, steps=total)
    except BaseException as e:
        bar.close()
        status = "failed" if isinstance(e, Diverged) else "interrupted"
        run.set_status(status, error=str(e) or type(e).__name__, last_checkpoint=last_ckpt)
        raise
    finally:
        tracker.finish()
    return run


def _warn_dead_window(cfg: TrainConfig) -> None:
    """A dead window as long as the run means no latent can ever count as dead: say so."""
    if cfg.dead_window >= cfg.tokens:
        what = "aux_k never acts and " if cfg.aux == "aux_k" else ""
        warnings.warn(f"--dead-window {cfg.dead_window} is not shorter than --tokens {cfg.tokens}: no latent can count as "
                      f"dead during this run, so {what}the training dead fraction stays 0; pass e.g. "
                      f"--dead-window {max(cfg.acts.batch_size, cfg.tokens // 10)}", stacklevel=3)


def _finite(x: torch.Tensor, step: int, run: Run, last_ckpt: str | None) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise _diverged(run, step, last_ckpt, f"{int((~torch.isfinite(x)).sum())} non-finite activation values")
    return x


def _diverged(run: Run, step: int, last_ckpt: str | None, what: str) -> Diverged:
    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    return Diverged(f"step {step + 1}: {what}; training stopped, nothing was overwritten ({where}); "
                    f"check the activations or lower --lr, then `workbench sae train --resume {run.path}`")


def _input_scale(x: torch.Tensor, cfg: TrainConfig) -> float:
    """The scalar the trainer multiplies inputs by: sqrt(d_in) / E|x| for expected_norm, else 1."""
    return expected_norm_scale(x) if cfg.sae.normalize == "expected_norm" else 1.0


def _b_dec_init(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "median":
        return geometric_median(x.double()).float()
    if how == "mean":
        return x.mean(0)
    return torch.zeros(x.shape[1])


def _log_density(sae: SAE) -> torch.Tensor:
    """log10 of each latent's running density (clipped at 1e-7 so that never-firing latents show as the lowest bin)."""
    return sae.density.detach().float().clamp_min(1e-7).log10().cpu()


def _wandb_id(run: Run) -> str | None:
    try:
        return run.read_json("wandb.json").get("id")
    except RunError:
        return None


def _train_metrics(sae: SAE, out: SAEOutput, parts: dict, cfg: TrainConfig, opt, tokens: int) -> dict:
    from sae.metrics import density_histogram, l0_stats

    row = {"tokens": tokens, **{k: v.item() for k, v in parts.items()}, **l0_stats(out.l0()),
           "dead_fraction": sae.dead_mask(cfg.dead_window).float().mean().item(), "lr": opt.param_groups[0]["lr"]}
    h = density_histogram(sae.density)
    row.update({f"density_1e{e:.0f}": c for e, c in zip(h["density_decades"], h["density_counts"])})
    return row


def _sae_meta(cfg: TrainConfig, model) -> dict:
    return {"model_name": cfg.acts.model, "hook_name": cfg.acts.hook, "hook_head_index": cfg.acts.head,
            "context_size": int(model.cfg.n_ctx)}


def _evaluate(sae: SAE, scale: float, model, cfg: TrainConfig, modes: tuple[str, ...] | None = None) -> dict:
    from sae.metrics import evaluate

    folded = sae.folded(scale)
    return evaluate(folded, model, cfg.acts, cfg.eval_tokens, modes=modes)


def evaluate_saved(path, model, cfg: TrainConfig, n_tokens: int | None = None, modes: tuple[str, ...] | None = None,
                   ce: bool = True, device: str | None = None) -> dict:
    """Evaluate the SAE saved in `path` as a user loads it: its inference mode first, then batch mode.

    Dead latents are counted over cfg.dead_window held-out tokens (the one definition of dead).
    """
    from sae.metrics import evaluate

    saved = io.load(path, device=device or cfg.acts.device)
    modes = modes or tuple(dict.fromkeys((saved.mode, *saved.modes)))  # inference mode first
    return evaluate(saved, model, cfg.acts, n_tokens or cfg.eval_tokens, modes=modes, ce=ce, dead_tokens=cfg.dead_window)


def eval_summary(result: dict, cfg: TrainConfig, tokens_trained: int) -> dict:
    """eval.json: identity of the SAE, the headline (the saved SAE's inference mode) and every mode's metrics.

    Headline keys: mode, fvu, ce_recovered, l0_mean, l0_std, dead_fraction, dead_window; batch-mode numbers
    (the training rule, which depends on the rest of the batch) only under modes.batch.
    """
    mode = inference_mode(cfg.sae.arch)
    mode = mode if mode in result else next(iter(result))
    head = result[mode]
    return {"arch": cfg.sae.arch, "k": cfg.sae.k, "d_in": cfg.sae.d_in, "d_sae": cfg.sae.d_sae, "aux": cfg.aux,
            "capacity": cfg.sae.capacity, "normalize": cfg.sae.normalize, "model": cfg.acts.model, "hook": cfg.acts.hook,
            "head": cfg.acts.head, "corpus": cfg.acts.corpus, "tokens_trained": tokens_trained, "eval_tokens": head["tokens"],
            "mode": mode, "fvu": head["fvu"], "ce_recovered": head.get("ce_recovered"), "l0_mean": head["l0_mean"],
            "l0_std": head["l0_std"], "dead_fraction": head["dead_fraction"], "dead_window": head.get("dead_window"),
            "modes": result}
