"""The routing package's modules import each other without cycles (module- and function-level imports)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _routing_imports(path: Path) -> set[str]:
    """Modules of the routing package that `path` imports, anywhere in the file (lazy imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "routing":
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from routing import ot_solvers`
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "routing")
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (module -> imported modules) as a path, or None."""
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n, stack + [n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_routing_has_no_import_cycles():
    modules = {}
    for path in (ROOT / "routing").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {m: {i for i in _routing_imports(p) if i in modules and i != m} for m, p in modules.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_reports_a_lazy_import_cycle(tmp_path):
    """A function-level import counts (the old sparse_ot <-> ot_solvers cycle was one)."""
    lazy = tmp_path / "sparse_ot.py"
    lazy.write_text("from routing.ot_duals import semi_dual\n\ndef f():\n    from routing import ot_solvers\n")
    assert _routing_imports(lazy) >= {"routing.ot_duals", "routing.ot_solvers"}
    graph = {"routing.sparse_ot": {"routing.ot_solvers"}, "routing.ot_solvers": {"routing.sparse_ot"}, "x": set()}
    assert _cycle(graph) == ["routing.ot_solvers", "routing.sparse_ot", "routing.ot_solvers"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
