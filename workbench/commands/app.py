"""`workbench app [--runs runs/]`: start the Streamlit app on a runs directory."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app" / "Home.py"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workbench app", description=__doc__)
    p.add_argument("--runs", default="runs", help="runs directory to browse (default: runs)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    args = p.parse_args(argv)
    if not APP.is_file():
        print(f"workbench app: {APP} not found; the app ships in the repository checkout (app/)", file=sys.stderr)
        return 2
    env = {**os.environ, "WORKBENCH_RUNS": str(Path(args.runs).resolve())}
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(args.port),
           "--browser.gatherUsageStats", "false", "--server.headless", str(args.headless).lower()]
    return subprocess.call(cmd, env=env)
