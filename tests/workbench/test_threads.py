"""Every entry point sets a passive OpenMP wait policy before torch loads, unless the user chose one."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env_over) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env_over)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("entry", ["import cli.main", "import cli.demo", "from cli.main import main"])
def test_the_cli_sets_passive_unless_the_user_chose(entry):
    code = f"{entry}\nimport os, sys\nprint(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    assert _python(code).stdout.split() == ["PASSIVE", "False"]  # set, and torch not loaded yet
    assert _python(code, OMP_WAIT_POLICY="ACTIVE").stdout.split()[0] == "ACTIVE"


def test_too_late_is_a_warning():
    out = _python("import torch, warnings\nwarnings.simplefilter('error')\nimport workbench.threads")
    assert out.returncode != 0 and "torch was imported before workbench.threads" in out.stderr


def _first_import(path: Path) -> str | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Import):
            return node.names[0].name
        if isinstance(node, ast.ImportFrom):
            return node.module
    return None


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.py")) + [ROOT / "cli" / "__init__.py", ROOT / "app" / "data.py",
                                                                   ROOT / "workbench" / "__main__.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_entry_points_import_it_first(path):
    assert _first_import(path) == "workbench.threads"


def test_every_app_page_imports_data_before_anything_of_ours():
    """Pages reach workbench.threads through app/data.py (they import no torch themselves)."""
    for page in [ROOT / "app" / "Home.py", *sorted((ROOT / "app" / "pages").glob("*.py"))]:
        mods = [n.names[0].name if isinstance(n, ast.Import) else n.module
                for n in ast.parse(page.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert "data" in mods and "torch" not in mods, page.name
