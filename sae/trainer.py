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

import contextlib
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from workbench.config import to_dict
from workbench.errors import ConfigError, RunError
from workbench.checkpoint import CheckpointStore, rng_state, set_rng_state
from workbench.distributed import SINGLE, Dist
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
               k_aux: int, group: Dist = SINGLE, module: torch.nn.Module | None = None,
               check_finite: bool = True) -> tuple[SAEOutput, dict[str, torch.Tensor]]:
    """One update on a (N, d_in) batch (already scaled). Raises FloatingPointError on a non-finite loss.

    check_finite=False skips that check (it reads the loss back to the host: on a GPU, a sync per step
    that stalls the queue of kernels); the caller then checks parts["loss"] itself (see DeferredCheck).

    Data parallel (`group` active, `module` the DDP wrapper of `sae`): x is this rank's shard of the
    global batch; FVU denominators and latent statistics are global, so the averaged gradients and the
    statistics are those of one process on the global batch.
    """
    w = aux_weights(cfg.aux, sae, cfg.dead_window)
    aux_on = w is not None and cfg.aux_coeff > 0 and (cfg.aux != "aux_k" or sae.any_dead(cfg.dead_window))
    if hasattr(sae, "keep_pre"):  # routed SAEs skip the dense pre-activations when no aux loss reads them
        sae.keep_pre = aux_on
    out = (module or sae)(x)
    den = (lambda t: group.centered_sq_sum(t) / group.world) if group.active else None
    parts = {"fvu": fvu(out.x_in, out.x_hat_in, den)}
    loss = parts["fvu"]
    if sae.arch == "relu-l1":
        parts["l1"] = l1_penalty(out)
        loss = loss + sae.cfg.l1_coeff * parts["l1"]
    if w is not None and cfg.aux_coeff > 0:
        # aux_k with no dead latent is 0: skip the call (it reads the candidate latents back to the host)
        parts["aux"] = aux_loss(sae, out, w, k_aux, den) if aux_on else out.x_in.new_zeros(())
        loss = loss + cfg.aux_coeff * parts["aux"]
    if sae.arch in COVER_ARCHS and cfg.cover_coeff > 0:
        parts["cover"] = cover_loss(sae, out, sae.cfg.k)
        loss = loss + cfg.cover_coeff * parts["cover"]
    if out.route is not None:  # routed SAEs: the gate's aux losses (Switch balance, z-loss, ...), weights inside
        for name, v in out.route.aux_losses.items():
            parts[f"route_{name}"] = v
        loss = loss + out.route.aux_loss()
    parts["loss"] = loss
    if check_finite and not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_parallel_grad()
    opt.step()
    sched.step()
    sae.normalize_decoder()
    sae.update_stats(out, cfg.density_ema, group.sum if group.active else None)
    return out, parts


class DeferredCheck:
    """Finiteness of the losses on a GPU, read back only every so many steps instead of every step.

    ``add(loss)`` folds a step's loss into a device flag without a sync; ``failed()`` reads it (one sync).
    The loop reads it before it logs or checkpoints, so no checkpoint holds weights from a non-finite step.
    """

    def __init__(self):
        self.ok: torch.Tensor | None = None
        self.since = 0  # first step folded in since the last read

    def add(self, loss: torch.Tensor, step: int) -> None:
        f = torch.isfinite(loss.detach())
        if self.ok is None:
            self.ok, self.since = f, step
        else:
            self.ok = self.ok & f

    def failed(self) -> int | None:
        """The first step folded in since the last read if a loss since then was not finite, else None."""
        if self.ok is None:
            return None
        bad = not bool(self.ok)
        self.ok = None
        return self.since if bad else None


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x on the device; a CPU batch bound for a GPU goes through pinned memory, asynchronously."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


# ---- data ---------------------------------------------------------------------------------------
class Source:
    """Batches of activations from a stream or a cache, with a resumable position.

    ``next(source)``: the (N, d_in) batch of the first hook; :meth:`next_all`: {hook: batch} for every
    hook this process trains (one model forward serves them all). Data parallel, N is this rank's
    shard of the global batch; with hook groups, N is the global batch gathered from all ranks.
    """

    def __init__(self, cfg: TrainConfig, model, hooks: list[str] | None = None, group: Dist = SINGLE,
                 keep: list[str] | None = None):
        self.cfg = cfg
        self.group = group
        a = cfg.acts
        self.hooks = list(hooks or [a.hook])
        self.keep = list(keep if keep is not None else self.hooks)
        data_parallel = cfg.distribute == "data"
        local = replace(a, batch_size=a.batch_size // group.world) if data_parallel else a
        if cfg.cache:
            from workbench.cache import ActivationCache

            self.cache = ActivationCache(cfg.cache)
            self.cache.verify()  # checksums, finite and not huge: fail before training, not at the end
            m = self.cache.manifest
            for key, want in (("hook", a.hook), ("model", a.model), ("head", a.head)):
                if key in m and m[key] != want:
                    raise ConfigError(f"{key}: the cache {cfg.cache} holds activations of {key} {m[key]!r}, not {want!r}; "
                                      f"pass --{key} {m[key]} or another --cache")
            self.d_in, self.where = {a.hook: self.cache.d}, {a.hook: f"the cache {cfg.cache}"}
            self.batch = 0
            self._it = None
        else:
            from workbench.acts import ActivationStream
            from workbench.distributed import rank_device
            from workbench.models import hook_dim

            self.cache = None
            self.d_in = {h: hook_dim(model, h, a.head) for h in self.keep}
            self.where = {h: f"hook {h} of {a.model}" for h in self.keep}
            # each rank reads its own text (rank 0 the one-process text)
            local = replace(local, seed=a.seed + RANK_SEED * group.rank)
            gather = group.cat if (group.active and not data_parallel) else None
            on_gpu = torch.device(a.device).type == "cuda"  # batches stay on the model's GPU, shuffled there
            self.stream = ActivationStream(model, local, hooks=self.hooks, keep=self.keep, gather=gather,
                                           buffer_device=rank_device(a.device, group) if on_gpu else "cpu")

    def __next__(self) -> torch.Tensor:
        if self.cache is None:
            return next(self.stream)
        if self._it is None:
            a, g = self.cfg.acts, self.group
            self._it = self.cache.batches(a.batch_size, shuffle=True, seed=a.seed, start_batch=self.batch, rank=g.rank, world=g.world)
        self.batch += 1
        return next(self._it)

    def next_all(self) -> dict[str, torch.Tensor]:
        if self._queue is not None:
            item = self._take()
            if isinstance(item, BaseException):
                raise item
            if item is not None:
                batch, self._state = item
                for t in batch.values():
                    if t.is_cuda:  # made on the prefetch stream: its memory is not reused while this stream reads it
                        t.record_stream(torch.cuda.current_stream(t.device))
                return batch
            batch = self._produce()  # prefetch paused and nothing made ahead: make it here
            self._state = self._snapshot()
            return batch
        return self._produce()

    def _produce(self) -> dict[str, torch.Tensor]:
        if len(self.keep) == 1:
            return {self.keep[0]: next(self)}
        return self.stream.next_all()

    # ---- prefetch: the next batches are made (text, model forward, shuffle) while the GPU trains ----
    _queue = None
    _thread = None
    _state: dict | None = None

    def prefetch(self, depth: int = 2) -> None:
        """Make the next `depth` batches in a background thread (one process on a GPU: the model forward
        runs on its own CUDA stream, beside the SAE step). Batches come in the same order as without it,
        and state_dict() is the state after the last batch taken, so resume stays exact. The model is the
        thread's while it runs: :meth:`pause` before using the model elsewhere (evaluation)."""
        import collections
        import queue
        import threading

        if self._thread is not None:
            return
        if self._queue is None:
            self._state = self._snapshot()
            self._queue, self._leftover, self._ready = queue.Queue(maxsize=depth), collections.deque(), collections.deque()
        q, leftover = self._queue, self._leftover
        model_cfg = getattr(getattr(self.stream, "model", None), "cfg", None) if self.cache is None else None
        side = torch.cuda.Stream() if model_cfg is not None and "cuda" in str(model_cfg.device) else None
        self._stop = stop = threading.Event()

        def work():
            try:
                with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                    while not stop.is_set():
                        item = (self._produce(), self._snapshot())
                        if side is not None:
                            side.synchronize()  # the batch is ready before the training thread's stream reads it
                        while True:
                            try:
                                q.put(item, timeout=0.05)
                                break
                            except queue.Full:
                                if stop.is_set():  # made but not queued: kept, in order, for next_all
                                    leftover.append(item)
                                    return
            except BaseException as e:  # noqa: BLE001 - handed to the training thread, raised there
                leftover.append(e)

        self._thread = threading.Thread(target=work, name="sae-prefetch", daemon=True)
        self._thread.start()

    def _take(self):
        """The next prefetched item (batch, state) or exception; None when paused and nothing is left."""
        import queue

        if self._ready:
            return self._ready.popleft()
        while True:
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._thread is None or not self._thread.is_alive():
                    try:
                        return self._queue.get_nowait()
                    except queue.Empty:
                        return self._leftover.popleft() if self._leftover else None

    def pause(self) -> None:
        """Stop the prefetch thread (batches already made are kept and come next); prefetch() restarts it."""
        import queue

        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            while True:  # made before the pause, oldest first: queued ones, then the one that found the queue full
                try:
                    self._ready.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._ready.extend(self._leftover)
            self._leftover.clear()

    def _snapshot(self) -> dict:
        """The state after the batch just made (references, not copies: the stream replaces its buffers)."""
        if self.cache is not None:
            return {"batch": self.batch}
        s = self.stream
        return {"stream": {"text": s.text.state_dict(), "gen": s.gen.get_state(), "buffers": dict(s.buffers),
                           "tokens_seen": s.tokens_seen}}

    def state_dict(self) -> dict:
        if self._queue is not None:
            return self._state
        return {"batch": self.batch} if self.cache is not None else {"stream": self.stream.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        if self._queue is not None:
            raise RuntimeError("load_state_dict after prefetch() started")
        if self.cache is not None:
            self.batch, self._it = s["batch"], None
        else:
            self.stream.load_state_dict(s["stream"])


RANK_SEED = 7919  # rank r streams text seeded with seed + RANK_SEED * r


# ---- checkpoints --------------------------------------------------------------------------------
CHECKPOINT_KEYS = ("scale", "sae", "opt", "sched", "rng", "data", "tokens")


def checkpoint_store(run: Run) -> CheckpointStore:
    return CheckpointStore(run.path / "checkpoints", keep=KEEP_CHECKPOINTS)


def load_latest_checkpoint(run: Run) -> dict | None:
    """The newest checkpoint that loads (a corrupt one is skipped with a warning), or None."""
    return checkpoint_store(run).load_latest(required=CHECKPOINT_KEYS)


# ---- the loop -----------------------------------------------------------------------------------
@dataclass
class Job:
    """One SAE being trained: its config, run dir, weights, optimiser and bookkeeping."""

    cfg: TrainConfig
    run: Run
    writes: bool  # this process writes the run dir (rank 0 when data parallel; the hook's owner with hook groups)
    sae: SAE | None = None
    module: torch.nn.Module | None = None  # the DDP wrapper when data parallel
    opt: torch.optim.Optimizer | None = None
    sched: object = None
    store: CheckpointStore | None = None
    tracker: object = None
    scale: float = 1.0
    k_aux: int = 0
    last_ckpt: str | None = None
    ck: dict | None = None
    check: "DeferredCheck | None" = None

    @property
    def hook(self) -> str:
        return self.cfg.acts.hook


def train(cfg: TrainConfig, resume: str | Path | None = None, *, model=None, progress: bool = True,
          on_step: Callable[[int], None] | None = None, group: Dist | None = None) -> Run:
    """Train (or resume) an SAE run; returns the run. `on_step(completed)` is a hook for tests.

    The run dir's lock (workbench.runs.RunLock) is held throughout: a second writer gets a one-line error.
    """
    return train_many([cfg], [resume] if resume is not None else None, model=model, progress=progress,
                      on_step=on_step, group=group)[0]


def train_many(cfgs: list[TrainConfig], resume: list[str | Path] | None = None, *, model=None, progress: bool = True,
               on_step: Callable[[int], None] | None = None, group: Dist | None = None) -> list[Run]:
    """Train one SAE per config, every config reading a different hook of the same model and text, from
    one model forward pass per batch; under torchrun data parallel or in hook groups (cfg.distribute).

    Returns the runs of every config (with hook groups: the runs this process trained). Every run dir
    this process writes is locked while it trains.
    """
    with contextlib.ExitStack() as locks:
        return _train_many(cfgs, resume, model, progress, on_step, group, locks)


def _train_many(cfgs, resume, model, progress: bool, on_step, group, locks: contextlib.ExitStack) -> list[Run]:
    from tqdm.auto import tqdm

    from workbench.devices import check_device
    from workbench.distributed import from_env, rank_device, world_size_from_env
    from workbench.models import load_model

    cfg = cfgs[0]
    _check_together(cfgs, resume)
    check_device(cfg.acts.device)
    _check_group(cfgs, group.world if group is not None else world_size_from_env())  # before joining the group
    group = group or from_env(cfg.acts.device, cfg.backend, cfg.acts.batch_size, cfg.distribute)
    data_parallel = cfg.distribute == "data"
    hooks = [c.acts.hook for c in cfgs]
    mine = hooks if data_parallel else group.shard(hooks)
    device = torch.device(rank_device(cfg.acts.device, group))

    runs = [None] * len(cfgs)
    if resume is not None:
        runs = [Run.open(p) for p in resume]
        for r, p in zip(runs, resume):
            if r.kind != KIND:
                raise RunError(f"{p} is a {r.kind!r} run, not an SAE run")
        if group.main or not data_parallel:
            for r in runs:
                locks.enter_context(r.lock())
                r.clean_tmp()
        if all(r.status() == "done" and (r.path / io.WEIGHTS).is_file() and (r.path / "eval.json").is_file() for r in runs):
            warnings.warn(f"{', '.join(str(r.path) for r in runs)} already finished ({cfg.steps} steps); nothing to resume "
                          f"(re-evaluate with `workbench sae eval RUN`)", stacklevel=4)
            return runs
    source = Source(cfgs[0], None, group=group) if cfg.cache else None  # a bad --cache fails before the model loads
    model = model if model is not None else load_model(cfg.acts.model, device=str(device))
    if source is None:
        source = Source(cfg, model, hooks=hooks, group=group, keep=mine)
    jobs = []
    for c, r in zip(cfgs, runs):
        if c.acts.hook not in mine:
            continue
        c = replace(c, sae=c.sae.resolve(source.d_in[c.acts.hook], source.where[c.acts.hook]))  # k <= d_sae, d_in vs hook
        c = replace(c, lr=c.learning_rate(c.sae.d_sae))  # the resolved lr, never null in config.json or wandb
        _warn_dead_window(c)
        writes = group.main or not data_parallel
        if r is None and writes:
            r = Run.create(KIND, to_dict(c), name=c.name, root=c.runs_dir)
            locks.enter_context(r.lock())
        jobs.append(Job(c, r, writes))
    if data_parallel and group.active:  # the other ranks learn rank 0's run dirs (names may be generated there)
        paths = group.broadcast([str(j.run.path) if j.run is not None else None for j in jobs])
        for j, p in zip(jobs, paths):
            j.run = j.run or Run(Path(p))

    total = cfg.steps
    first = None
    for j in jobs:
        if j.writes and resume is not None:
            j.run.clean_tmp()
        j.store = checkpoint_store(j.run)
        j.ck = j.store.load_latest(required=CHECKPOINT_KEYS) if resume is not None else None
        j.sae = build_sae(j.cfg.sae)
        j.k_aux = j.cfg.aux_k(j.cfg.sae.d_in, j.cfg.sae.d_sae)
    starts = {j.ck["step"] if j.ck else 0 for j in jobs}
    if len(starts) > 1:
        raise RunError(f"the runs were last checkpointed at different steps ({sorted(starts)}); resume each with its own "
                       f"`workbench sae train --resume RUN` (or start them again together)")
    start = starts.pop() if starts else 0
    for j in jobs:
        if j.ck is None:  # fresh start: scale and b_dec from the first (global) batch
            if j.writes:
                j.run.truncate_metrics(0)  # a resumed run killed before its first checkpoint starts over
            if first is None:
                first = source.next_all()
            x0 = first[j.hook].cpu()  # the SAE is initialised on the host, then moved
            _finite(x0, 0, j.run, None)
            xg = group.cat(x0.to(device)).cpu() if data_parallel else x0  # (N_global, d_in)
            _init_sae(j, xg)
        else:
            j.scale = j.ck["scale"]
            j.sae.load_state_dict(j.ck["sae"])
            _check_world(j, group)
        j.sae.to(device)
        j.module = _wrap(j.sae, group, device) if data_parallel and group.active else None
        j.opt = make_optimizer(j.sae, j.cfg.learning_rate(j.cfg.sae.d_sae))
        j.sched = torch.optim.lr_scheduler.LambdaLR(j.opt, Schedule(j.cfg.warmup_steps, total, j.cfg.decay_frac))
        if j.ck is not None:
            j.opt.load_state_dict(j.ck["opt"])
            j.sched.load_state_dict(j.ck["sched"])
            j.last_ckpt = j.ck["path"]
            if j.writes:
                j.run.truncate_metrics(start)
    ck = jobs[0].ck
    if ck is not None:  # the data position and RNG are shared by the jobs: the first job's checkpoint holds them
        own = ck["ranks"][group.rank] if "ranks" in ck else {"data": ck["data"], "rng": ck["rng"]}
        source.load_state_dict(own["data"])
        set_rng_state(own["rng"])
    _start_tracking(jobs, resume is not None, start, total)

    n = cfg.acts.batch_size
    show = progress and (group.main or not data_parallel)
    what = f"sae {cfg.sae.arch} {jobs[0].run.name}" if len(jobs) == 1 else f"sae {cfg.sae.arch} x{len(jobs)} hooks"
    bar = tqdm(total=total, initial=start, desc=what, unit="step", disable=not show, dynamic_ncols=True, mininterval=0.5)
    t_log, s_log = time.perf_counter(), start
    for j in jobs:  # on a GPU the loss is checked every log/checkpoint step, not every step (no sync per step)
        j.check = DeferredCheck() if device.type == "cuda" else None
    depth = cfg.prefetch if cfg.prefetch is not None else (2 if device.type == "cuda" else 0)
    if depth and not group.active:  # collectives (hook groups) stay on the training thread
        source.prefetch(depth)
    try:
        for step in range(start, total):
            batch = first if first is not None else source.next_all()
            first = None
            completed = step + 1
            log = completed % cfg.log_every == 0 or completed == total
            results = []
            for j in jobs:
                x = batch[j.hook]
                if j.check is None or not x.is_cuda:  # a GPU batch: the deferred loss check covers it (no sync)
                    x = _finite(x, step, j.run, j.last_ckpt)
                x = to_device(x, device) * j.scale  # (N, d_in)
                j.sae.set_progress(step / total)
                try:
                    results.append(train_step(j.sae, j.opt, j.sched, x, j.cfg, j.k_aux, group if data_parallel else SINGLE,
                                              j.module, check_finite=j.check is None))
                except FloatingPointError as e:
                    raise _diverged(j.run, step, j.last_ckpt, str(e)) from None
                if j.check is not None:
                    j.check.add(results[-1][1]["loss"], step)
            if log or completed % cfg.checkpoint_every == 0 or completed == total or (cfg.ce_every and completed % cfg.ce_every == 0):
                for j in jobs:  # GPU: the losses since the last read, before anything is logged or saved
                    first_bad = j.check.failed() if j.check is not None else None
                    if first_bad is not None:
                        raise _diverged(j.run, step, j.last_ckpt, f"a non-finite loss at a step from {first_bad + 1} to {completed}")
            now = time.perf_counter()
            for j, (out, parts) in zip(jobs, results):
                if log:
                    if data_parallel and group.active:  # every rank's mean: the global batch's values
                        vals = group.mean(torch.stack([v.detach().float() for v in parts.values()]))
                        parts = dict(zip(parts, vals))
                    if j.writes:
                        row = _train_metrics(j.sae, out, parts, j.cfg, j.opt, completed * n)
                        row["tok_per_s"] = (completed - s_log) * n / max(now - t_log, 1e-9)
                        j.tracker.log(row, step=completed)
                        j.tracker.histogram("train/latent_density_log10", _log_density(j.sae), step=completed)
                        bar.set_postfix(fvu=f"{row['fvu']:.3f}", l0=f"{row['l0_mean']:.1f}", dead=f"{100 * row['dead_fraction']:.1f}%")
                if j.cfg.ce_every and completed % j.cfg.ce_every == 0 and completed != total and j.writes:
                    source.pause()  # the evaluation runs the model: the prefetch thread must not
                    ev = _evaluate(j.sae, j.scale, model, j.cfg, modes=("batch",))["batch"]
                    j.tracker.log({"ce_recovered": ev["ce_recovered"], "eval_fvu": ev["fvu"]}, step=completed, section="eval")
            if log:
                t_log, s_log = now, completed
            if depth and not group.active:
                source.prefetch(depth)  # (again, after an evaluation paused it; a no-op while it runs)
            if completed % cfg.checkpoint_every == 0 or completed == total:
                _checkpoint(jobs, source, group, completed, n)
            bar.update(1)
            if on_step is not None:
                on_step(completed)
        bar.close()
        source.pause()  # the final evaluation runs the model
        for j in jobs:
            if j.writes:
                _finish(j, model, total, n)
        group.barrier()  # the other ranks wait for rank 0's evaluation
    except BaseException as e:
        bar.close()
        status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"  # SIGTERM: KeyboardInterrupt
        for j in jobs:
            if j.writes and j.run is not None:
                j.run.set_status(status, error=str(e) or type(e).__name__, last_checkpoint=j.last_ckpt)
        raise
    finally:
        source.pause()  # the prefetch thread (if any) stops with the run
        for j in jobs:
            if j.tracker is not None:
                j.tracker.finish()
    return [j.run for j in jobs]


def _check_together(cfgs: list[TrainConfig], resume) -> None:
    """Configs trained together differ only in their hook and run name (one model, one text stream)."""
    if resume is not None and len(resume) != len(cfgs):
        raise ConfigError(f"resume: {len(resume)} run dirs for {len(cfgs)} configs; pass one --resume per run")
    hooks = [c.acts.hook for c in cfgs]
    if len(set(hooks)) != len(hooks):
        raise ConfigError(f"hook: {hooks} names a hook twice; pass each --hook once")
    if len(cfgs) > 1 and cfgs[0].cache:
        raise ConfigError("cache: a --cache holds one hook; pass one --hook with --cache, or stream several hooks from the model")
    base = {**to_dict(cfgs[0]), "name": None}
    for c in cfgs[1:]:
        d = {**to_dict(c), "name": None}
        d["acts"] = {**d["acts"], "hook": cfgs[0].acts.hook}
        if d != base:
            diff = sorted(k for k in d if d[k] != base[k])
            raise ConfigError(f"SAEs trained from one forward pass share every setting but --hook and --name; "
                              f"they differ in {', '.join(diff)}: train them separately")


def _check_group(cfgs: list[TrainConfig], world: int) -> None:
    if world == 1:
        return
    cfg = cfgs[0]
    if cfg.distribute == "data" and cfg.sae.arch in COVER_ARCHS:
        raise ConfigError(f"arch: {cfg.sae.arch} allocates over the whole batch, which data-parallel processes split; "
                          f"train it in one process, or with several --hook values and --distribute hooks")
    if cfg.distribute == "hooks":
        if cfg.cache:
            raise ConfigError("distribute: --distribute hooks streams every hook from the model; drop --cache "
                              "(or use --distribute data to shard a cache over the processes)")
        if len(cfgs) < world:
            raise ConfigError(f"distribute: {len(cfgs)} hook(s) cannot be split over {world} processes; pass at "
                              f"least {world} --hook values or --nproc-per-node {len(cfgs)}")


def _check_world(j: Job, group: Dist) -> None:
    saved = len(j.ck.get("ranks", [None]))
    if saved != group.world and (j.cfg.distribute == "data" or "ranks" in j.ck):
        raise ConfigError(f"resume: {j.run.path} was checkpointed by {saved} process(es), this is {group.world}; "
                          f"resume it with torchrun --nproc-per-node {saved}" if saved > 1 else
                          f"resume: {j.run.path} was checkpointed by one process; resume it without torchrun")


def _init_sae(j: Job, x: torch.Tensor) -> None:
    """Scale, weights, b_dec and the encoder's scale from the first global batch x (N, d_in)."""
    j.scale = _input_scale(x, j.cfg)
    j.sae.init_weights(torch.Generator().manual_seed(j.cfg.acts.seed))
    with torch.no_grad():
        x0 = x * j.scale
        j.sae.b_dec.copy_(_b_dec_init(x0 * per_token_factor(x0) if j.cfg.sae.normalize == "per_token" else x0, j.cfg.b_dec_init))
    j.sae.fit_encoder_scale(x * j.scale)


def _wrap(sae: SAE, group: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the SAE; latent statistics are synchronised by train_step, not as buffers."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    # buffers are equal on every rank at the start (the same init / checkpoint) and kept equal by train_step
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    return DistributedDataParallel(sae, device_ids=ids, **({"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}))


def _start_tracking(jobs: list[Job], resumed: bool, start: int, total: int) -> None:
    from workbench.tracking import Tracker

    for j in jobs:
        if j.writes:
            wandb_id = _wandb_id(j.run) if resumed else None
            j.tracker = Tracker(j.run, j.cfg.wandb_project, to_dict(j.cfg), resume_id=wandb_id, tags=j.cfg.wandb_tags,
                                group=j.cfg.wandb_group)
            j.run.set_status("running", step=start, steps=total)


def _checkpoint(jobs: list[Job], source: Source, group: Dist, completed: int, n: int) -> None:
    """Every job's checkpoint; the data position and RNG of every rank go into each (a collective)."""
    ranks = group.objects({"data": source.state_dict(), "rng": rng_state()})
    for j in jobs:
        if not all(torch.isfinite(p).all() for p in j.sae.parameters()):
            raise _diverged(j.run, completed - 1, j.last_ckpt, "the parameters became non-finite")
        if j.writes:
            j.last_ckpt = str(j.store.save(completed, {
                "tokens": completed * n, "scale": j.scale, "sae": j.sae.state_dict(), "opt": j.opt.state_dict(),
                "sched": j.sched.state_dict(), "rng": ranks[0]["rng"], "data": ranks[0]["data"], "ranks": ranks,
                "config": to_dict(j.cfg)}))


def _finish(j: Job, model, total: int, n: int) -> None:
    io.save(j.sae.folded(j.scale), j.run.path, _sae_meta(j.cfg, model))
    result = evaluate_saved(j.run.path, model, j.cfg)
    summary = eval_summary(result, j.cfg, total * n)
    check_finite_eval(summary, j.run)
    j.run.write_json("eval.json", summary)
    j.tracker.log({f"eval/{m}/{k}": v for m, r in result.items() for k, v in r.items() if isinstance(v, (int, float))},
                  step=total)
    c = j.cfg
    j.tracker.artifact(f"{j.run.name}-sae", [j.run.path / f for f in (io.WEIGHTS, io.CFG, io.STATS)], metadata={
        "arch": c.sae.arch, "k": c.sae.k, "d_sae": c.sae.d_sae, "hook": c.acts.hook, "model": c.acts.model,
        **{k: summary.get(k) for k in ("mode", "fvu", "ce_recovered", "l0_mean", "dead_fraction")}})
    j.run.set_status("done", step=total, steps=total)


def check_finite_eval(summary: dict, run: Run) -> None:
    """Non-finite evaluation numbers are errors, not results: raise Diverged naming them."""
    from workbench.runs import non_finite_keys

    bad = non_finite_keys(summary)
    if bad:
        raise Diverged(f"the evaluation of {run.path} gave non-finite {', '.join(bad[:4])}"
                       f"{' ...' if len(bad) > 4 else ''}: the activations are too large or not finite "
                       f"(check the cache with `workbench acts info`); nothing was written to eval.json")


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
           **({"route_load_cv": out.route.metrics["load_cv"].item(), "route_frac_dropped": out.route.metrics["frac_dropped"].item()}
              if out.route is not None else {}),
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


def merge_eval(old: dict, new: dict) -> dict:
    """eval.json after a re-evaluation: the new numbers win, and nothing stored is lost.

    A field the new evaluation did not compute (None or absent: CE recovered under --no-ce, a mode left
    out of --modes) keeps its stored value, recursively, so a partial re-evaluation never drops a field.
    """
    if not isinstance(old, dict):
        return new
    out = dict(old)
    for k, v in new.items():
        if v is None and k in old:
            continue
        out[k] = merge_eval(old[k], v) if isinstance(v, dict) and isinstance(old.get(k), dict) else v
    return out

