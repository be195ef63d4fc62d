"""Checkpoint/resume for every trainer: numbered, atomic checkpoints in a run's ``checkpoints/``.

A checkpoint is one dict (model / optimizer / scheduler states, RNG states, data position, anything
else the loop reads) saved with ``torch.save`` as ``step-XXXXXXXX.pt`` through a temp file and a
rename, so a kill never leaves a half-written checkpoint under its real name. The store keeps the
newest ``keep`` files; on resume it loads the newest one that reads, falls back past a corrupt one
with a warning, refuses one that lacks keys the trainer needs (one line naming the file and the keys),
and removes temp files that killed writes left behind. A trainer adopts it in a few lines::

    store = CheckpointStore(run.path / "checkpoints")
    ck = store.load_latest(required=("model", "optimizer", "rng")) if resume else None
    if ck is not None:
        model.load_state_dict(ck["model"]); opt.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"]); start = ck["step"]
    ...
    store.save(step, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state()})
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any, Iterable

from workbench.errors import RunError

PATTERN = "step-*.pt"


class CheckpointError(RunError):
    """A checkpoint that reads but is not what the trainer needs (missing keys, not a dict)."""


def _load(path: Path, map_location: Any) -> Any:
    import torch

    # our own files: they hold Python RNG states and data-position dicts, so not weights_only
    return torch.load(path, map_location=map_location, weights_only=False)


class CheckpointStore:
    """The numbered checkpoints in one directory (a run's ``checkpoints/``)."""

    def __init__(self, directory: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir, self.keep = Path(directory), keep

    def path(self, step: int) -> Path:
        return self.dir / f"step-{step:08d}.pt"

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        return sorted(self.dir.glob(PATTERN)) if self.dir.is_dir() else []

    def save(self, step: int, state: dict) -> Path:
        """Write {**state, "step": step} atomically, then delete all but the newest `keep` checkpoints."""
        import io

        import torch

        from workbench.runs import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({**state, "step": step}, buf)
        path = self.path(step)
        atomic_write_bytes(path, buf.getvalue())
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, required: Iterable[str] = (), map_location: Any = "cpu") -> dict | None:
        """The newest checkpoint that reads, with "step" and "path" (str) set; None if there is none.

        Cleans up leftover temp files first. An unreadable file (truncated, corrupt) is skipped with a
        warning and the previous one is tried; a readable one without a `required` key raises
        CheckpointError: it was written by other code, and an older checkpoint would not be better.
        """
        self.clean_tmp()
        required = tuple(required)
        for p in reversed(self.paths()):
            try:
                ck = _load(p, map_location)
            except Exception as e:  # noqa: BLE001 - any unreadable file: fall back to the previous one
                warnings.warn(f"checkpoint {p} is unreadable ({type(e).__name__}: {e}); trying the previous one",
                              stacklevel=2)
                continue
            if not isinstance(ck, dict):
                raise CheckpointError(f"checkpoint {p} holds a {type(ck).__name__}, not a checkpoint dict; "
                                      f"move it away to resume from an older one, or start a new run")
            missing = [k for k in (*required, "step") if k not in ck]
            if missing:
                raise CheckpointError(f"checkpoint {p} lacks {', '.join(missing)} (it has {', '.join(sorted(map(str, ck)))}); "
                                      f"it was not written by this trainer: move it away to resume from an older one, "
                                      f"or start a new run")
            ck["path"] = str(p)
            return ck
        return None

    def clean_tmp(self) -> list[Path]:
        """Delete temp files of interrupted atomic writes (``.*.tmp``); returns what was deleted."""
        from workbench.runs import remove_tmp_files

        return remove_tmp_files(self.dir)


def rng_state() -> dict:
    """The global RNG states a training loop draws from: Python's `random`, torch CPU and, if in use, CUDA."""
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
