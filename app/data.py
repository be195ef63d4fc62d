"""Everything the app reads, in one place: run listings, JSON files, Parquet tables, metrics.

All run-directory IO goes through :mod:`workbench.runs` (``list_runs``, ``Run.read_json``,
``Run.metrics``); Parquet tables are read with pandas. Each loader is wrapped in ``st.cache_data`` and
keyed by the file's (mtime, size), so a page re-reads only what changed, and a page opens in about a
second. Nothing here raises on a bad run dir: a missing or corrupt file comes back as
``Missing(reason)`` (falsy) and the page shows "not available for this run (reason)".
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - every page imports this module first of ours: OMP_WAIT_POLICY=PASSIVE

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from workbench.errors import RunError
from workbench.runs import Run, dead_fraction, list_runs

KINDS = ("sae", "ioi", "moe", "model", "acts")
SAE_ANALYSIS = "analysis.json"  # written last by `workbench sae analyze` (sae/analyze.py)


@dataclass(frozen=True)
class Missing:
    """A file or table that could not be read; ``reason`` says which and why."""

    reason: str

    def __bool__(self) -> bool:
        return False


def runs_root() -> Path:
    """The runs directory: $WORKBENCH_RUNS (set by `workbench app --runs`), else ./runs."""
    return Path(os.environ.get("WORKBENCH_RUNS") or "runs")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return (s.st_mtime_ns, s.st_size)


# ---- single files -------------------------------------------------------------------------------
def read_json(run_dir: str | Path, name: str) -> Any:
    """A JSON file of a run dir, or Missing."""
    stamp = _stamp(Path(run_dir) / name)
    if stamp is None:
        return Missing(f"missing {name}")
    return _read_json(str(run_dir), name, stamp)


@st.cache_data(show_spinner=False, max_entries=4000)
def _read_json(run_dir: str, name: str, stamp: tuple) -> Any:
    try:
        return Run(Path(run_dir)).read_json(name)
    except (RunError, OSError) as e:
        return Missing(f"{name} is unreadable: {e}")


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame | Missing:
    """``name.parquet`` of a run dir (or ``name.json``, a list of rows, when there is no Parquet file)."""
    for fname in (f"{name}.parquet", f"{name}.json"):
        stamp = _stamp(Path(run_dir) / fname)
        if stamp is not None:
            return _read_table(str(run_dir), fname, stamp)
    return Missing(f"missing {name}.parquet")


@st.cache_data(show_spinner=False, max_entries=500)
def _read_table(run_dir: str, fname: str, stamp: tuple) -> pd.DataFrame | Missing:
    try:
        if fname.endswith(".parquet"):
            return pd.read_parquet(Path(run_dir) / fname)
        rows = Run(Path(run_dir)).read_json(fname)
        if not isinstance(rows, list):
            return Missing(f"{fname} is not a list of rows")
        return pd.DataFrame(rows)
    except Exception as e:  # noqa: BLE001 - any unreadable file (truncated Parquet, bad JSON) is "unreadable"
        return Missing(f"{fname} is unreadable: {type(e).__name__}: {e}")


def read_metrics(run_dir: str | Path) -> pd.DataFrame | Missing:
    """metrics.jsonl as a DataFrame (a torn last line is skipped), or Missing."""
    stamp = _stamp(Path(run_dir) / "metrics.jsonl")
    if stamp is None:
        return Missing("missing metrics.jsonl")
    return _read_metrics(str(run_dir), stamp)


@st.cache_data(show_spinner=False, max_entries=500)
def _read_metrics(run_dir: str, stamp: tuple) -> pd.DataFrame | Missing:
    try:
        rows = Run(Path(run_dir)).metrics()
    except OSError as e:
        return Missing(f"metrics.jsonl is unreadable: {e}")
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return Missing("metrics.jsonl has no complete rows yet")
    return pd.DataFrame(rows)


# ---- the run listing ----------------------------------------------------------------------------
def scan(root: str | Path | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """(one row per readable run, [{"name", "path", "error"} for each unreadable dir]).

    Directories that are not runs but hold runs (``workbench moe bench`` writes <bench>/<gate>-s<seed>/)
    are listed one level down, with ``group`` set to the directory's name.
    """
    root = Path(root or runs_root())
    return _scan(str(root), _signature(root))


def _signature(root: Path) -> tuple:
    """Changes whenever a run is added, removed or rewritten (atomic writes rename into the run dir)."""
    sig = []
    try:
        entries = sorted(root.iterdir()) if root.is_dir() else []
    except OSError:
        entries = []
    for p in entries:
        if not p.is_dir():
            continue
        sig.append((p.name, _stamp(p), _stamp(p / "metrics.jsonl")))
        if not (p / "config.json").exists():
            try:
                sig.extend((p.name, c.name, _stamp(c), _stamp(c / "metrics.jsonl")) for c in sorted(p.iterdir()) if c.is_dir())
            except OSError:
                pass
    return tuple(sig)


@st.cache_data(show_spinner=False, max_entries=20)
def _scan(root: str, signature: tuple) -> tuple[pd.DataFrame, list[dict]]:
    rows, bad = [], []

    def visit(listing, group: str | None) -> None:
        name = f"{group}/{listing.path.name}" if group else listing.path.name
        if listing.error is not None:
            bad.append({"name": name, "path": str(listing.path), "error": listing.error})
            return
        try:
            rows.append({"name": name, "group": group or "", "path": str(listing.path), **summarize(listing.run, listing.meta)})
        except Exception as e:  # noqa: BLE001 - a run we cannot summarise is listed as unreadable, the rest goes on
            bad.append({"name": name, "path": str(listing.path), "error": f"{type(e).__name__}: {e}"})

    for listing in list_runs(root):
        if listing.error is not None and _holds_runs(listing.path):
            for child in list_runs(listing.path):
                visit(child, listing.path.name)
        else:
            visit(listing, None)
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["name", "group", "path", *COLUMNS])
    df["k"] = pd.to_numeric(df["k"], errors="coerce").astype("Int64")
    return df, bad


def _holds_runs(path: Path) -> bool:
    try:
        return any((c / "config.json").is_file() for c in path.iterdir() if c.is_dir())
    except OSError:
        return False


COLUMNS = ("kind", "model", "hook", "corpus", "arch", "k", "mode", "fvu", "ce_recovered", "l0", "dead_fraction", "metric",
           "value", "status", "note", "created")


def sae_headline(ev: dict) -> dict:
    """An SAE's first numbers from its eval.json: the saved SAE's inference mode (threshold for FC/MC).

    eval.json files written before the headline moved to the inference mode held batch-mode numbers at
    the top level; for those the inference mode's numbers are read from ``modes``.
    """
    modes = ev.get("modes") if isinstance(ev.get("modes"), dict) else {}
    mode = ev.get("mode") or ("threshold" if "threshold" in modes else "batch")
    r = modes.get(mode) if "mode" not in ev else None
    if r is None:
        return {"mode": mode, "fvu": ev.get("fvu"), "ce_recovered": ev.get("ce_recovered"), "l0": ev.get("l0_mean"),
                "dead_fraction": dead_fraction(ev), "dead_window": ev.get("dead_window")}
    return {"mode": mode, "fvu": r.get("fvu"), "ce_recovered": r.get("ce_recovered"), "l0": r.get("l0_mean"),
            "dead_fraction": dead_fraction(r), "dead_window": r.get("dead_window")}


def summarize(run: Run, meta: dict) -> dict:
    """The Runs table's columns for one run (values that do not apply are None)."""
    kind = meta.get("kind")
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    row = {c: None for c in COLUMNS}
    row.update(kind=kind, status=run.status(), created=meta.get("created"), note="")
    if kind == "sae":
        acts, sae = cfg.get("acts", {}), cfg.get("sae", {})
        head = acts.get("head")
        row.update(model=acts.get("model"), hook=acts.get("hook") + (f"[{head}]" if head is not None else "") if acts.get("hook") else None,
                   corpus=acts.get("corpus", "toy"), arch=sae.get("arch"), k=sae.get("k"))
        ev = read_json(run.path, "eval.json")
        if isinstance(ev, dict):
            h = sae_headline(ev)
            row.update({k: h[k] for k in ("mode", "fvu", "ce_recovered", "l0", "dead_fraction")})
        else:
            m = read_metrics(run.path)
            if isinstance(m, pd.DataFrame) and "fvu" in m:
                last = m.dropna(subset=["fvu"]).iloc[-1] if m["fvu"].notna().any() else None
                if last is not None:
                    row.update(mode="training batch", fvu=last.get("fvu"), l0=last.get("l0_mean"),
                               dead_fraction=dead_fraction(last))
                    row["note"] = (f"training metrics (batch mode, step {int(last.get('step', 0))}; dead = silent on the last "
                                   f"{cfg.get('dead_window', '?')} training tokens); {ev.reason}")
            else:
                row["note"] = ev.reason
        row["analysis"] = (run.path / SAE_ANALYSIS).is_file()
    elif kind == "moe":
        routing = cfg.get("routing", {})
        row.update(model=cfg.get("task"), arch=(routing.get("gate") or "?") + ("+" if routing.get("local_search") else ""),
                   k=routing.get("k"))
        res = read_json(run.path, "results.json")
        if isinstance(res, dict):
            metric = "test_auc_mean" if "test_auc_mean" in res else "test_loss"
            row.update(metric=metric, value=res.get(metric))
        else:
            row["note"] = res.reason
    elif kind == "ioi":
        row.update(model=cfg.get("model"), arch=cfg.get("command"))
        if cfg.get("command") == "eval":
            row["hook"] = ", ".join(cfg.get("location") or []) or None
    elif kind == "model":
        row.update(model=f"toy {cfg.get('n_layers', '?')}L d{cfg.get('d_model', '?')}", arch="transformer")
    elif kind == "acts":
        row.update(model=cfg.get("model"), hook=cfg.get("hook"))
    else:
        raise RunError(f"unknown run kind {kind!r} (known: {', '.join(KINDS)})")
    return row


def runs_of(kind: str, root: str | Path | None = None) -> pd.DataFrame:
    df, _ = scan(root)
    return df[df["kind"] == kind] if len(df) else df


# ---- helpers shared by the pages -----------------------------------------------------------------
def flatten(d: Any, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b": v} (lists are kept as values)."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def number(v: Any, nd: int = 3) -> str:
    """A number for display ("–" for None/NaN)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def same_run(recorded: str, run_path: str | Path, root: str | Path | None = None) -> bool:
    """Whether a path recorded by another command (e.g. `ioi eval --sae runs/x`) points at run_path."""
    rec, target = Path(recorded.rstrip("/")), Path(run_path)
    for cand in (rec, Path(root or runs_root()).parent / rec, Path(root or runs_root()) / rec.name):
        try:
            if cand.resolve() == target.resolve():
                return True
        except OSError:
            continue
    return False


def ioi_evals_of_sae(sae_path: str | Path) -> list[dict]:
    """IOI eval runs that evaluated this SAE: [{"run", "path", "label"}] (label = its dictionary name)."""
    out = []
    for r in runs_of("ioi").itertuples():
        d = read_json(r.path, "dictionaries.json")
        if not isinstance(d, dict):
            continue
        for fam in d.get("sae_families", []):
            if any(same_run(s.get("path", ""), sae_path) for s in fam.get("saes", [])):
                out.append({"run": r.name, "path": r.path, "label": fam.get("label")})
    return out


# ---- SAE analysis (sae/analyze.py) --------------------------------------------------------------
def contexts_of(run_dir: str | Path, latent: int) -> pd.DataFrame | Missing:
    """The stored contexts of one latent: column `sample` 0 = its top contexts, q >= 1 = samples of its q-th
    activation quantile (older analyses have top contexts only); strongest first within each."""
    stamp = _stamp(Path(run_dir) / "analysis_contexts.parquet")
    if stamp is None:
        return Missing("missing analysis_contexts.parquet")
    return _contexts_of(str(run_dir), int(latent), stamp)


@st.cache_data(show_spinner=False, max_entries=2000)
def _contexts_of(run_dir: str, latent: int, stamp: tuple) -> pd.DataFrame | Missing:
    ctx = _read_table(run_dir, "analysis_contexts.parquet", stamp)
    if isinstance(ctx, Missing):
        return ctx
    mine = ctx[ctx["latent"] == latent]
    if "sample" not in mine:
        mine = mine.assign(sample=0)
    return mine.sort_values(["sample", "rank"]).reset_index(drop=True)


def peak_consistency(run_dir: str | Path) -> pd.DataFrame:
    """Per latent: how many of its top contexts peak on its most common peak token (latent, token, share)."""
    stamp = _stamp(Path(run_dir) / "analysis_contexts.parquet")
    return _peak_consistency(str(run_dir), stamp) if stamp else pd.DataFrame(columns=["latent", "token", "share"])


@st.cache_data(show_spinner=False, max_entries=50)
def _peak_consistency(run_dir: str, stamp: tuple) -> pd.DataFrame:
    ctx = _read_table(run_dir, "analysis_contexts.parquet", stamp)
    if isinstance(ctx, Missing):
        return pd.DataFrame(columns=["latent", "token", "share"])
    if "sample" in ctx:
        ctx = ctx[ctx["sample"] == 0]
    peak = pd.DataFrame({"latent": ctx["latent"], "token": [str(t[p]).strip() for t, p in zip(ctx["tokens"], ctx["pos"])]})
    counts = peak.groupby(["latent", "token"]).size().rename("n").reset_index()
    best = counts.sort_values(["latent", "n"], ascending=[True, False], kind="stable").drop_duplicates("latent")
    return best.assign(share=best["n"] / best["latent"].map(peak.groupby("latent").size()))[["latent", "token", "share"]]


def latents_firing_on(run_dir: str | Path, token: str) -> pd.DataFrame:
    """Latents whose top contexts peak on `token`: (latent, score = how many of its top contexts do)."""
    stamp = _stamp(Path(run_dir) / "analysis_contexts.parquet")
    return _latents_firing_on(str(run_dir), token, stamp) if stamp else pd.DataFrame(columns=["latent", "score"])


@st.cache_data(show_spinner=False, max_entries=200)
def _latents_firing_on(run_dir: str, token: str, stamp: tuple) -> pd.DataFrame:
    ctx = _read_table(run_dir, "analysis_contexts.parquet", stamp)
    if isinstance(ctx, Missing):
        return pd.DataFrame(columns=["latent", "score"])
    if "sample" in ctx:
        ctx = ctx[ctx["sample"] == 0]  # "in its top contexts"
    peak = pd.Series([str(t[p]).strip() for t, p in zip(ctx["tokens"], ctx["pos"])], index=ctx.index)
    hits = ctx.loc[peak == token].groupby("latent").size().rename("score").reset_index()
    return hits.sort_values("score", ascending=False, kind="stable")


def latents_promoting(run_dir: str | Path, token: str) -> pd.DataFrame:
    """Latents with `token` among their promoted output tokens: (latent, score = its logit)."""
    lat = read_table(run_dir, "analysis_latents")
    if isinstance(lat, Missing) or "promoted" not in lat:
        return pd.DataFrame(columns=["latent", "score"])
    rows = [(r.latent, float(r.promoted_logit[i])) for r in lat.itertuples()
            for i, t in enumerate(r.promoted) if str(t).strip() == token]
    return pd.DataFrame(rows, columns=["latent", "score"]).sort_values("score", ascending=False, kind="stable")
