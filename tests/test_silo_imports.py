"""The silo agent's modules import one another without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SILO = Path(__file__).resolve().parent.parent / "silo_agent"


def silo_imports(path: Path) -> set[str]:
    """The silo_agent modules `path` imports, anywhere in it (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("silo_agent.")}
    return found


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for dep in sorted(edges.get(name, ())):
            if (cycle := visit(dep, [*path, name])) is not None:
                return cycle
        done.add(name)
        return None

    for name in sorted(edges):
        if (cycle := visit(name, [])) is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"agent": {"distributed"}, "distributed": {"agent"}}) == [
        "agent",
        "distributed",
        "agent",
    ]
    assert find_cycle({"agent": {"backend"}, "distributed": {"agent", "backend"}}) is None


def test_silo_agent_modules_import_without_a_cycle() -> None:
    edges = {path.stem: silo_imports(path) for path in SILO.glob("*.py")}
    assert "backend" in edges["agent"], "the walk must see the agent's imports"
    assert find_cycle(edges) is None
