"""`workbench app [--runs-dir runs]`: start the Streamlit app on a runs directory."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from cli.common import add_runs_dir


def app_home() -> Path | None:
    """app/Home.py of the installed (or checked-out) `app` package, found without importing it; None if absent."""
    import importlib.util

    spec = importlib.util.find_spec("app")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        home = Path(folder) / "Home.py"
        if home.is_file():
            return home.resolve()
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench app", description=__doc__)
    add_runs_dir(p, old=("--runs",))
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    home = app_home()
    if home is None:
        print("workbench app: the `app` package (app/Home.py) is not installed; reinstall the project "
              "(pip install -e .) or run from the repository checkout", file=sys.stderr)
        return 2
    env = {**os.environ, "WORKBENCH_RUNS": str(Path(args.runs_dir).resolve())}  # incl. OMP_WAIT_POLICY
    cmd = streamlit_command(home, args.port, args.headless)
    if hasattr(os, "execve"):
        # Become Streamlit (same pid): a SIGTERM or Ctrl-C to `workbench app` reaches the server itself, so no
        # orphaned child is left holding the port.
        sys.stdout.flush(), sys.stderr.flush()
        os.execve(sys.executable, cmd, env)
    return subprocess.call(cmd, env=env)  # no exec on this platform


def streamlit_command(home: Path, port: int, headless: bool) -> list[str]:
    """The `streamlit run` command line: no usage statistics, and a viewer toolbar (no Deploy button)."""
    return [sys.executable, "-m", "streamlit", "run", str(home), "--server.port", str(port),
            "--browser.gatherUsageStats", "false", "--server.headless", str(headless).lower(),
            "--client.toolbarMode", "viewer"]
