"""`--help` of every group and subcommand builds its parser without importing torch or TransformerLens.

Each group runs in a fresh interpreter (`python -m cli`-style, through cli.main) that reports which heavy
modules were imported; no wall-clock assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import all_parsers, groups

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformer_lens", "transformers", "datasets")
PROBE = """
import json, sys
from cli.main import main
report = {}
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
    report[" ".join(argv)] = [m for m in %r if m in sys.modules]
print("REPORT" + json.dumps(report))
""" % (HEAVY,)


def _commands_of(group: str) -> list[list[str]]:
    return [[*key, "--help"] for key in all_parsers() if key[0] == group]


@pytest.mark.parametrize("group", list(groups()))
def test_help_imports_no_torch(group):
    cmds = _commands_of(group)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cmds)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.rsplit("REPORT", 1)[1])
    assert set(report) == {" ".join(c) for c in cmds}
    loaded = {cmd: mods for cmd, mods in report.items() if mods}
    assert not loaded, f"--help imported heavy modules: {loaded}"
    assert "usage: workbench" in out.stdout  # the help was printed, not an error


def test_every_subcommand_is_probed():
    keys = set(all_parsers())
    assert {("sae", "train"), ("sae", "eval"), ("sae", "analyze"), ("ioi", "locate"), ("ioi", "eval"), ("moe", "train"),
            ("moe", "bench"), ("moe", "solve-bench"), ("acts", "cache"), ("acts", "info"), ("model", "train"),
            ("model", "eval"), ("runs",), ("app",)} <= keys


def test_the_probe_sees_an_import(tmp_path):
    """The probe would catch a group that imports torch (here: a stand-in command)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = PROBE.replace("from cli.main import main", "def main(argv):\n    import torch")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([["x", "--help"]])], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert json.loads(out.stdout.rsplit("REPORT", 1)[1]) == {"x --help": ["torch"]}
