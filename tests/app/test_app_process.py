"""`workbench app` as a real process: SIGTERM stops the Streamlit server it started (no orphan keeps the port)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.app.helpers import free_port, start_app


def _port_free(port: int) -> bool:
    """Whether a new server could listen on the port (SO_REUSEADDR, as Streamlit's own server: the health check's
    closed connections in TIME_WAIT do not count, a socket still listening does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def _streamlits_on(port: int) -> list[int]:
    """pids of processes whose command line runs streamlit on this port."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"streamlit" in b" ".join(argv) and str(port).encode() in argv:
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to look for orphaned processes")
def test_sigterm_to_workbench_app_stops_the_server(tmp_path):
    port = free_port()
    proc = start_app(tmp_path / "runs", port, tmp_path / "app.log")
    try:
        assert _streamlits_on(port), "no streamlit process found for the running app"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while (_streamlits_on(port) or not _port_free(port)) and time.time() < deadline:
            time.sleep(0.3)
        assert _streamlits_on(port) == [], "a Streamlit process outlived `workbench app` (orphan)"
        assert _port_free(port), f"port {port} is still held after SIGTERM"
    finally:
        for pid in _streamlits_on(port):  # clean up after a failure: only the processes of this test's port
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
