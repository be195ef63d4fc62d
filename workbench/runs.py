"""Run store: one directory per run, the contract between trainers, evals and the app.

Layout: ``config.json`` (kind + config), ``metrics.jsonl`` (one object per logged step),
``checkpoints/`` and artifacts. Every whole-file write is atomic (temp file + rename) so a crash
never leaves a half-written file behind; readers report broken runs instead of raising.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from workbench.errors import ConfigError, RunError

DEFAULT_ROOT = Path("runs")
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write data to path via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_tmp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files (``.NAME.XXXX.tmp``) that atomic writes killed before their rename left in
    directory; returns them. Call it when the directory's writer starts or resumes, not while one runs."""
    directory = Path(directory)
    gone = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default))


def atomic_save_torch(path: str | Path, obj: Any) -> None:
    """torch.save through a temp file + rename (used for checkpoints)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,199}")


def check_run_name(name: str) -> str:
    """Raise ConfigError unless name is one directory name that `workbench runs` and the app will list."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ConfigError(f"name: {name!r} is not a valid run name (one directory name under the runs directory: "
                          f"letters, digits and - _ . + = @, not starting with '.' or '-'); pass e.g. --name my-run")
    return name


@dataclass
class Run:
    """A handle on one run directory."""

    path: Path

    @classmethod
    def create(cls, kind: str, config: dict, name: str | None = None, root: str | Path = DEFAULT_ROOT,
               exist_ok: bool = False) -> "Run":
        """Make runs/<name>/ with config.json = {"kind": kind, "config": config, "created": ...}."""
        name = check_run_name(name) if name else f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid() % 10000:04d}"
        path = Path(root) / name
        if path.exists() and not exist_ok and (path / "config.json").exists():
            raise RunError(f"run dir {path} already exists; pass --resume {path} to continue it or choose another --name")
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir(exist_ok=True)
        run = cls(path)
        if not (path / "config.json").exists():
            atomic_write_json(path / "config.json", {"kind": kind, "config": config, "created": time.time()})
        return run

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise RunError(f"{path} is not a run directory (no config.json); pass a directory made by a workbench command")
        return cls(path)

    @property
    def name(self) -> str:
        return self.path.name

    def meta(self) -> dict:
        """config.json as a dict; RunError if unreadable."""
        try:
            data = json.loads((self.path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunError(f"{self.path / 'config.json'} is unreadable: {e}") from e
        if not isinstance(data, dict) or "kind" not in data:
            raise RunError(f"{self.path / 'config.json'} has no 'kind' field; not a workbench run")
        return data

    @property
    def kind(self) -> str:
        return self.meta()["kind"]

    @property
    def config(self) -> dict:
        return self.meta().get("config", {})

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write_json(self.path / name, obj)
        return self.path / name

    def read_json(self, name: str) -> Any:
        p = self.path / name
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise RunError(f"{p} does not exist") from None
        except json.JSONDecodeError as e:
            raise RunError(f"{p} is corrupt ({e}); re-run the command that writes it") from e

    def append_metrics(self, row: dict) -> None:
        """Append one JSON line to metrics.jsonl (a line is written with one write call)."""
        line = json.dumps(row, default=_json_default) + "\n"
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(line)
            f.flush()

    def metrics(self) -> list[dict]:
        """All complete lines of metrics.jsonl; a torn last line (crash mid-write) is skipped."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        rows = []
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def truncate_metrics(self, max_step: int) -> None:
        """Drop metric rows logged after `max_step` (used on resume, so steps are not duplicated)."""
        rows = [r for r in self.metrics() if r.get("step", -1) <= max_step]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def status(self) -> str:
        """'done' if status.json says so, else 'running/incomplete' or the recorded status."""
        p = self.path / "status.json"
        if not p.exists():
            return "incomplete"
        try:
            return json.loads(p.read_text()).get("status", "unknown")
        except (OSError, json.JSONDecodeError):
            return "unknown"

    def clean_tmp(self) -> list[Path]:
        """Delete leftover temp files of killed atomic writes in the run dir and its checkpoints/."""
        return remove_tmp_files(self.path) + remove_tmp_files(self.path / "checkpoints")

    def set_status(self, status: str, **info: Any) -> None:
        atomic_write_json(self.path / "status.json", {"status": status, "time": time.time(), **info})


@dataclass
class RunListing:
    """A run as seen by a listing: the handle, or why it could not be read."""

    path: Path
    run: Run | None = None
    error: str | None = None
    meta: dict = field(default_factory=dict)


def list_runs(root: str | Path = DEFAULT_ROOT) -> Iterator[RunListing]:
    """Every subdirectory of root, readable or not (broken ones carry `error`); never raises."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        try:
            run = Run.open(p)
            yield RunListing(p, run, None, run.meta())
        except RunError as e:
            yield RunListing(p, None, str(e))
