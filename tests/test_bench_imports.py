"""Every project module a bench script imports exists (benches run rarely; a moved module must not rot them)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"cli", "workbench", "sae", "routing", "evals", "app"}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_bench_imports_resolve(script):
    for module, names in _imports(ROOT / "bench" / script):
        if module.split(".")[0] not in PROJECT:
            continue
        assert importlib.util.find_spec(module) is not None, f"bench/{script} imports {module}, which does not exist"
        if names and not module.startswith("app"):
            mod = importlib.import_module(module)
            missing = [n for n in names if not hasattr(mod, n) and importlib.util.find_spec(f"{module}.{n}") is None]
            assert not missing, f"bench/{script}: {module} has no {missing}"
