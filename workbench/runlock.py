"""One writer per run dir: ``run.lock`` holds the pid, host, start time and command of the process writing it.

Two trainers on one run dir interleave metrics.jsonl and overwrite each other's checkpoints; the lock
turns the second into a one-line error naming the first. A lock left by a killed process (its pid is
gone on this host) is taken over with a warning.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from workbench.errors import RunError
from workbench.runs import json_text, make_dir, read_json_file, writing

LOCK = "run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _link_or_create(src: str, dst: Path) -> None:
    """Put src's content at dst unless dst exists (FileExistsError): a hard link, which appears complete, or,
    on file systems without hard links, an exclusive create."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:
        data = Path(src).read_bytes()
        fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


class RunLock:
    """``run.lock`` in a run dir: {pid, host, started, command} of the one process writing it.

    Taken atomically (a complete temp file hard-linked to the lock name, which fails if it exists). A
    lock held by a live process, or by any process on another host, raises RunError naming it; a lock
    whose pid is dead on this host is stale (a killed writer) and is taken over with a warning.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def holder(self) -> dict | None:
        """The lock file's contents, {} if unreadable, None if there is no lock."""
        try:
            data = read_json_file(self.path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def live(self) -> bool:
        """Whether a process (this host: alive; another host: assumed so) holds the lock now."""
        info = self.holder()
        return info is not None and not self._stale(info)

    def _stale(self, info: dict) -> bool:
        if not info:  # unreadable: the lock is always written complete, so only corruption gets here
            return True
        pid = info.get("pid")
        return info.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(sys.argv)[:300]}
        make_dir(self.path.parent)
        with writing(self.path):
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{LOCK}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json_text(me))
                for _ in range(3):
                    try:
                        _link_or_create(tmp, self.path)
                        self.held = True
                        return self
                    except FileExistsError:
                        info = self.holder()
                        if info is None:
                            continue  # released meanwhile
                        if not self._stale(info):
                            raise self._busy(info) from None
                        warnings.warn(f"{self.path}: removing a stale lock of pid {info.get('pid', '?')} on "
                                      f"{info.get('host', '?')} (that process is gone)", stacklevel=3)
                        self.path.unlink(missing_ok=True)
            finally:
                Path(tmp).unlink(missing_ok=True)
        raise RunError(f"could not take the lock {self.path}; another process keeps taking it; try again")

    def _busy(self, info: dict) -> RunError:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if isinstance(info.get("started"), (int, float)) else "?"
        cmd = f" ({info['command']})" if info.get("command") else ""
        return RunError(f"{self.path.parent} is in use by pid {info.get('pid', '?')} on host {info.get('host', '?')} "
                        f"since {since}{cmd}; wait for it to finish or stop it (if that process is gone, delete {self.path})")

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            info = self.holder()
            if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
