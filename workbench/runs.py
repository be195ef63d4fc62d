"""Run store: one directory per run, the contract between trainers, evals and the app.

Layout: ``config.json`` (kind + config), ``metrics.jsonl`` (one object per logged step),
``checkpoints/`` and artifacts. Every whole-file write is atomic (temp file + rename) so a crash
never leaves a half-written file behind; readers report broken runs instead of raising. Every JSON
file is strict JSON (a non-finite float is written as null). A writer holds ``run.lock`` (pid + host)
so two processes never write one run dir; a failed write raises WriteError naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from workbench.errors import ConfigError, RunError, WriteError

DEFAULT_ROOT = Path("runs")
_UMASK = os.umask(0)
os.umask(_UMASK)


_WRITE_HINTS = {errno.EACCES: "the directory is not writable; pass another --runs-dir / --out or fix its permissions",
                errno.EPERM: "the directory is not writable; pass another --runs-dir / --out or fix its permissions",
                errno.EROFS: "the file system is read-only; pass another --runs-dir / --out",
                errno.ENOTDIR: "a file stands where a directory is needed; pass another --runs-dir / --out",
                errno.EEXIST: "a file stands where a directory is needed; pass another --runs-dir / --out",
                errno.ENOSPC: "the disk is full; free space or pass another --runs-dir / --out",
                errno.EDQUOT: "the disk quota is exhausted; free space or pass another --runs-dir / --out"}


def write_error(path: str | Path, e: OSError) -> WriteError:
    """One-line WriteError for a failed write to path: what the OS said and what to do."""
    hint = _WRITE_HINTS.get(e.errno, "check the path and free space")
    return WriteError(e.errno or 0, f"cannot write {path}: {e.strerror or e}; {hint}")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError raised inside the block into a WriteError naming path (WriteErrors pass through)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise write_error(path, e) from e


def make_dir(path: str | Path) -> Path:
    """mkdir -p, with a one-line WriteError (naming the path) instead of a traceback."""
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write data to path via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    make_dir(path.parent)
    with writing(path):
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


def strict(obj: Any) -> Any:
    """obj with every non-finite float (NaN, inf) replaced by None, recursively, so it dumps as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") or hasattr(obj, "tolist") or isinstance(obj, Path):
        return strict(_json_default(obj))
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of obj (non-finite floats as null; tensors and arrays as numbers and lists)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False, default=_json_default)


def non_finite_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the non-finite floats in obj (for errors that name what went wrong)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [prefix or "(value)"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in non_finite_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in non_finite_keys(v, f"{prefix}[{i}]")]
    return []


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def read_json_file(path: str | Path) -> Any:
    """json.loads of a file; ValueError (JSONDecodeError or UnicodeDecodeError) if it is not JSON in UTF-8."""
    return json.loads(Path(path).read_bytes().decode("utf-8"))


def atomic_save_torch(path: str | Path, obj: Any) -> None:
    """torch.save through a temp file + rename (used for checkpoints)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist") and getattr(o, "ndim", 0) > 0:  # arrays and tensors
        return o.tolist()
    if hasattr(o, "item"):  # numpy / torch scalars
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
        name = check_run_name(name) if name is not None else f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid() % 10000:04d}"
        path = Path(root) / name
        if path.exists() and not exist_ok and (path / "config.json").exists():
            raise RunError(f"run dir {path} already exists; pass --resume {path} to continue it or choose another --name")
        make_dir(path / "checkpoints")
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
            data = read_json_file(self.path / "config.json")
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
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
            return read_json_file(p)
        except FileNotFoundError:
            raise RunError(f"{p} does not exist") from None
        except OSError as e:
            raise RunError(f"{p} is unreadable ({e})") from e
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise RunError(f"{p} is corrupt ({e}); re-run the command that writes it") from e

    def append_metrics(self, row: dict) -> None:
        """Append one strict-JSON line to metrics.jsonl (a line is written with one write call)."""
        line = json_text(row, indent=None) + "\n"
        p = self.path / "metrics.jsonl"
        with writing(p), open(p, "a") as f:
            f.write(line)
            f.flush()

    def metrics(self, warn: bool = True) -> list[dict]:
        """The JSON-object lines of metrics.jsonl. Other lines (a torn last line after a crash mid-write,
        a line that is not an object or not UTF-8) are dropped, with a warning naming them."""
        p = self.path / "metrics.jsonl"
        try:
            lines = p.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RunError(f"{p} is unreadable ({e})") from e
        rows, bad = [], []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(i)
        if bad and warn:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            warnings.warn(f"{p}: dropped {len(bad)} metrics row(s) that are not JSON objects (line {shown})",
                          stacklevel=2)
        return rows

    def truncate_metrics(self, max_step: int) -> None:
        """Keep the metric rows logged up to `max_step` (used on resume, so steps are not duplicated);
        rows without a numeric step and unreadable lines go."""
        rows = [r for r in self.metrics() if isinstance(r.get("step"), (int, float)) and r["step"] <= max_step]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json_text(r, indent=None) + "\n" for r in rows))

    def status(self) -> str:
        """'done' if status.json says so, else 'running/incomplete' or the recorded status."""
        p = self.path / "status.json"
        if not p.exists():
            return "incomplete"
        try:
            data = read_json_file(p)
        except (OSError, ValueError):
            return "unknown"
        return str(data.get("status", "unknown")) if isinstance(data, dict) else "unknown"

    def lock(self) -> "RunLock":
        """A context manager that holds this run dir's lock (workbench.runlock.RunLock)."""
        from workbench.runlock import RunLock

        return RunLock(self.path)

    @contextlib.contextmanager
    def running(self, **info: Any) -> Iterator[None]:
        """Status 'running' inside the block; 'done' after it, 'interrupted' on Ctrl-C / SIGTERM, 'failed' on an error."""
        self.set_status("running", **info)
        try:
            yield
        except BaseException as e:
            status = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed"
            self.set_status(status, error=str(e) or type(e).__name__)
            raise
        self.set_status("done")

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
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for p in entries:
        if not p.is_dir() or p.name.startswith("."):
            continue
        try:
            run = Run.open(p)
            yield RunListing(p, run, None, run.meta())
        except RunError as e:
            yield RunListing(p, None, str(e))


def dead_fraction(d: Any) -> float | None:
    """The fraction of dead latents in an eval.json or metrics row (None if it holds none); runs written
    before the name was unified stored it as dead_pct (percent, eval.json) or dead_frac (metrics.jsonl)."""
    for key, scale in (("dead_fraction", 1.0), ("dead_frac", 1.0), ("dead_pct", 0.01)):
        try:
            v = float(d.get(key))
        except (AttributeError, TypeError, ValueError):  # not a mapping, key missing, or NA
            continue
        if not math.isnan(v):
            return v * scale
    return None
