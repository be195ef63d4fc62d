"""Tracking: always metrics.jsonl in the run dir, plus wandb when asked for.

wandb runs offline unless the user configured it (an API key or WANDB_MODE set), so nothing ever
waits on the network. Online, the server is probed first (a TCP connect bounded by PROBE_S seconds):
if it cannot be reached the run goes offline with a warning instead of waiting out wandb's 90 s init
timeout, and an online start that fails anyway is retried offline. Any other wandb failure becomes a
warning and training continues.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any
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
                 name: str | None = None, resume_id: str | None = None):
        self.run = run
        self.wandb_run = None
        if project:
            self._start_wandb(project, config or {}, name or run.name, resume_id)

    def _start_wandb(self, project: str, config: dict, name: str, resume_id: str | None) -> None:
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
                                  f"(upload later with `wandb sync {self.run.path}/wandb/offline-run-*`)", stacklevel=3)
                    os.environ["WANDB_MODE"] = online = "offline"
            kw = dict(project=project, name=name, config=config, dir=str(self.run.path), id=resume_id,
                      resume="allow" if resume_id else None, reinit=True)
            try:
                self.wandb_run = wandb.init(**kw, settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S) if online else None)
            except Exception as e:  # noqa: BLE001 - e.g. a bogus API key: keep the run, offline
                if not online:
                    raise
                warnings.warn(f"wandb could not start online ({e}); logging offline under {self.run.path}/wandb", stacklevel=3)
                os.environ["WANDB_MODE"] = "offline"
                self.wandb_run = wandb.init(**kw)
            self.run.write_json("wandb.json", {"id": self.wandb_run.id, "project": project,
                                               "mode": os.environ.get("WANDB_MODE", "online")})
        except Exception as e:  # noqa: BLE001 - wandb must never stop training
            warnings.warn(f"wandb could not start ({e}); logging to metrics.jsonl only")
            self.wandb_run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, **metrics}
        self.run.append_metrics(row)
        if self.wandb_run is not None:
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
