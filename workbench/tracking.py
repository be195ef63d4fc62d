"""Tracking: always metrics.jsonl in the run dir, plus wandb when asked for.

wandb runs offline unless the user configured it (an API key or WANDB_MODE set), so nothing ever
waits on the network. Online, the server is probed first (a TCP connect bounded by PROBE_S seconds):
if it cannot be reached the run goes offline with a warning instead of waiting out wandb's 90 s init
timeout, and an online start that fails anyway is retried offline. Any other wandb failure becomes a
warning and training continues. In wandb, metrics are namespaced by section (``train/fvu``,
``eval/ce_recovered``); metrics.jsonl keeps the bare names. An offline run's folder and the command
that uploads it are printed at the end and kept in wandb.json.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from workbench.runs import Run

PROBE_S = 3.0  # seconds to reach the wandb server before going offline
ONLINE_INIT_TIMEOUT_S = 20.0  # wandb.init's own timeout once the server answered (default 90 s)


def reachable(url: str, timeout: float = PROBE_S) -> str | None:
    """None if a TCP connection to url's host and port opens within timeout seconds, else why not.

    Name resolution and the connect run in a daemon thread, so a resolver that hangs cannot hold us longer."""
    import socket

    u = urlparse(url)
    if not u.hostname:
        return f"{url!r} is not a URL"
    port = u.port or (443 if u.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((u.hostname, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(str(e) or type(e).__name__)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else f"no answer within {timeout:.0f} s"


def _base_url() -> str:
    import wandb

    return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


class Tracker:
    """Log scalar dicts to the run's metrics.jsonl and (optionally) to wandb."""

    def __init__(self, run: Run, project: str | None = None, config: dict | None = None,
                 name: str | None = None, resume_id: str | None = None, tags: Iterable[str] = (), group: str | None = None):
        self.run = run
        self.wandb_run = None
        self.offline_dir: Path | None = None
        if project:
            self._start_wandb(project, config or {}, name or run.name, resume_id, list(tags or ()), group or None)

    def _start_wandb(self, project: str, config: dict, name: str, resume_id: str | None, tags: list[str],
                     group: str | None) -> None:
        if "WANDB_MODE" not in os.environ and not os.environ.get("WANDB_API_KEY"):
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            online = os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun")
            if online:
                url = _base_url()
                why = reachable(url)
                if why is not None:
                    warnings.warn(f"wandb: cannot reach {url} ({why}); logging offline under {self.run.path}/wandb "
                                  f"(the folder and its `wandb sync` command are printed at the end)", stacklevel=3)
                    os.environ["WANDB_MODE"] = online = "offline"
            kw = dict(project=project, name=name, config=config, dir=str(self.run.path), id=resume_id,
                      resume="allow" if resume_id else None, reinit=True, tags=tags or None, group=group)
            try:
                self.wandb_run = wandb.init(**kw, settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S) if online else None)
            except Exception as e:  # noqa: BLE001 - e.g. a bogus API key: keep the run, offline
                if not online:
                    raise
                warnings.warn(f"wandb could not start online ({e}); logging offline under {self.run.path}/wandb", stacklevel=3)
                os.environ["WANDB_MODE"] = "offline"
                self.wandb_run = wandb.init(**kw)
            mode = os.environ.get("WANDB_MODE", "online")
            info = {"id": self.wandb_run.id, "project": project, "mode": mode, "tags": tags, "group": group}
            if mode in ("offline", "dryrun"):
                self.offline_dir = Path(self.wandb_run.dir).resolve().parent  # .../wandb/offline-run-*/ (dir is its files/)
                info.update(dir=str(self.offline_dir), sync=sync_command(self.offline_dir))
            self.run.write_json("wandb.json", info)
        except Exception as e:  # noqa: BLE001 - wandb must never stop training
            warnings.warn(f"wandb could not start ({e}); logging to metrics.jsonl only")
            self.wandb_run = None

    def log(self, metrics: dict[str, Any], step: int, section: str = "train", sections: dict[str, str] | None = None) -> None:
        """One metrics.jsonl row (bare names); in wandb each name goes under its section, `section` unless
        `sections` names another for it (see :func:`wandb_key`)."""
        row = {"step": step, **metrics}
        self.run.append_metrics(row)
        sections = sections or {}
        self._wandb_log({wandb_key(k, sections.get(k, section)): v for k, v in metrics.items()}, step)

    def histogram(self, key: str, values, step: int, bins: int = 64) -> None:
        """A histogram of `values` (array-like) in wandb only, e.g. the latents' log10 density."""
        if self.wandb_run is None:
            return
        try:
            import numpy as np
            import wandb

            self._wandb_log({key: wandb.Histogram(np.asarray(values, dtype=np.float64), num_bins=bins)}, step)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"wandb histogram {key} failed ({e}); continuing")

    def artifact(self, name: str, files: Iterable[str | Path], kind: str = "model", metadata: dict | None = None) -> None:
        """Save files (e.g. the trained weights) as a wandb artifact of this run; no-op without wandb."""
        if self.wandb_run is None:
            return
        try:
            import wandb

            art = wandb.Artifact(artifact_name(name), type=kind, metadata=metadata or {})
            for f in files:
                if Path(f).is_file():
                    art.add_file(str(f))
            self.wandb_run.log_artifact(art)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"wandb artifact {name} could not be saved ({e}); the files stay in {self.run.path}")

    def _wandb_log(self, metrics: dict[str, Any], step: int) -> None:
        if self.wandb_run is None:
            return
        try:
            self.wandb_run.log(metrics, step=step)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"wandb.log failed ({e}); continuing with metrics.jsonl only")
            self.wandb_run = None

    def finish(self) -> None:
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish()
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"wandb.finish failed ({e})")
            self.wandb_run = None
            if self.offline_dir is not None:
                print(f"wandb: offline run saved in {self.offline_dir}; upload it with `{sync_command(self.offline_dir)}`",
                      file=sys.stderr)


SECTIONS = ("train", "eval")


def wandb_key(name: str, section: str) -> str:
    """The wandb name of a metric: names already under a section are kept, others go under `section`/
    (a leading "`section`_" is dropped: eval_fvu -> eval/fvu)."""
    if name.split("/", 1)[0] in SECTIONS:
        return name
    return f"{section}/{name.removeprefix(section + '_')}"


def sync_command(offline_dir: Path) -> str:
    return f"wandb sync {offline_dir}"


def artifact_name(name: str) -> str:
    """wandb artifact names allow letters, digits, '-', '_' and '.' only."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
