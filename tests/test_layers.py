"""The layering rule of docs/design.md, checked on the source: imports only point down.

    cli (front door)  >  app  >  evals  >  sae, routing  >  workbench (core)

Every import in every module counts: imports inside functions, ``importlib.import_module("...")`` with
a literal name, and any other string literal (docstrings aside) that is exactly the dotted name of one
of the project's modules, as in a dispatch table. `sae` and `routing` do not import each other, except
that `sae` may use the gate interface (``routing.gate``, ``routing.gates`` and the gates' torch-free config
``routing.config``, which SAEConfig validates a router with) for routed SAEs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"workbench": 0, "sae": 1, "routing": 1, "evals": 2, "app": 3, "cli": 4}
ALLOWED = {("sae", "routing.gate"), ("sae", "routing.gates"), ("sae", "routing.config")}  # a routed SAE uses a gate
#                                                                                          through its interface
# entry points, not layers: `python -m workbench` (what torchrun starts) is the front door under the core's name
ENTRY_POINTS = {"workbench.__main__": {"workbench.threads", "sys", "cli.main"}}


def imported_modules(source: str, package: str, module_path: str = "",
                     known: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in source (relative ones resolved inside package), plus the
    string literals that name a module in `known` (imports by string)."""
    tree = ast.parse(source)
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_path.split(".")[: -node.level] or [package]
                out.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                out.append((node.lineno, node.module or ""))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            out.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Constant) and node.value in known and id(node) not in docstrings:
            out.append((node.lineno, node.value))
    return out


def violations(source: str, package: str, module_path: str = "", known: frozenset[str] = frozenset()) -> list[str]:
    """The imports of a module of `package` that point up or sideways."""
    bad = []
    for line, name in imported_modules(source, package, module_path, known):
        target = name.split(".")[0]
        if target not in LAYER or target == package:
            continue
        if any(name == a or name.startswith(a + ".") for p, a in ALLOWED if p == package):
            continue
        if LAYER[target] >= LAYER[package]:
            bad.append(f"line {line}: {package} imports {name} ({target} is not below {package})")
    return bad


def _modules(root: Path = ROOT):
    for package in LAYER:
        for path in sorted((root / package).rglob("*.py")):
            dotted = ".".join(path.relative_to(root).with_suffix("").parts)
            if dotted not in ENTRY_POINTS:
                yield package, path, dotted


def known_modules(root: Path = ROOT) -> frozenset[str]:
    """Dotted names of the project's modules and subpackages (not the bare top-level names)."""
    names = set()
    for _, _, dotted in _modules(root):
        parts = dotted.removesuffix(".__init__").split(".")
        names.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return frozenset(names)


@pytest.mark.parametrize("package", list(LAYER))
def test_imports_point_down(package):
    bad, known = [], known_modules()
    for pkg, path, dotted in _modules():
        if pkg == package:
            bad += [f"{path.relative_to(ROOT)} {v}" for v in violations(path.read_text(), pkg, dotted, known)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("dotted", sorted(ENTRY_POINTS))
def test_entry_points_import_only_what_they_are_allowed(dotted):
    """An exempt entry point stays a two-line door: workbench.threads first, then the CLI, nothing else."""
    path = ROOT / (dotted.replace(".", "/") + ".py")
    names = [name for _, name in imported_modules(path.read_text(), dotted.split(".")[0], dotted)]
    assert set(names) == ENTRY_POINTS[dotted] and names[0] == "workbench.threads"


def test_every_package_has_modules():
    """The scan sees the code (a renamed package would otherwise make the check vacuous)."""
    assert {pkg for pkg, _, _ in _modules()} == set(LAYER)


@pytest.mark.parametrize("package,source,flagged", [
    ("workbench", "from cli.main import main", True),
    ("workbench", "def f():\n    import sae.model", True),
    ("workbench", "import importlib\nimportlib.import_module('evals.cli')", True),
    ("workbench", "COMMANDS = {'sae': ('sae.cli', 'train SAEs')}", True),  # dispatch by string
    ("sae", "from routing.moe import MoE", True),
    ("routing", "from sae.model import SAE", True),
    ("evals", "from app import data", True),
    ("app", "from cli.app import main", True),
    ("workbench", "'See sae.cli for the flags.'", False),  # a docstring is not an import
    ("workbench", "KIND = 'sae'", False),
    ("sae", "from routing.gate import GateOutput", False),
    ("evals", "import sae\nfrom routing.gates import GATES\nfrom workbench.runs import Run", False),
    ("cli", "from evals.harness import evaluate\nimport app", False),
    ("sae", "from .model import SAE", False),
])
def test_the_check_flags_upward_imports(package, source, flagged):
    known = frozenset({"sae.cli", "sae.model", "evals.cli", "cli.main", "cli.app", "routing.moe"})
    assert bool(violations(source, package, f"{package}.mod", known)) == flagged
