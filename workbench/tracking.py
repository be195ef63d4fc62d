"""Tracking: always metrics.jsonl in the run dir, plus wandb when asked for.

wandb runs offline unless the user configured it (an API key or WANDB_MODE set), so nothing ever
waits on the network; any wandb failure becomes a warning and training continues.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from workbench.runs import Run


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

            self.wandb_run = wandb.init(project=project, name=name, config=config, dir=str(self.run.path),
                                        id=resume_id, resume="allow" if resume_id else None, reinit=True)
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
