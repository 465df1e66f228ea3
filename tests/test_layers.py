"""Layers never import upward: every import of every module, lazy ones included, is checked.

    photon/cli/   the top layer: click commands; may import anything
    aggregator/   the server daemon       on bandwidth/ and photon/
    silo_agent/   the institution's daemon on bandwidth/ and photon/
    bandwidth/    moving bytes             on photon/
    photon/       the shared core          on nothing of ours but itself

The checker parses source with `ast` (nothing is imported), so an import inside a function,
under `if TYPE_CHECKING:`, relative (`from .. import x`) or by `importlib.import_module("...")`
with a literal name counts the same as one at the top of a file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("photon", "bandwidth", "aggregator", "silo_agent")

#: What each layer may import, among our own packages; the longest matching prefix rules.
ALLOWED: dict[str, frozenset[str]] = {
    "photon.cli": frozenset(PACKAGES),
    "photon": frozenset({"photon"}),
    "bandwidth": frozenset({"bandwidth", "photon"}),
    "aggregator": frozenset({"aggregator", "bandwidth", "photon"}),
    "silo_agent": frozenset({"silo_agent", "bandwidth", "photon"}),
}


def module_name(path: Path, root: Path) -> str:
    """`photon/cli/config.py` -> `photon.cli.config`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute names an ImportFrom brings in (`from . import x` names `pkg.x`)."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    if node.module is None:
        return [".".join(filter(None, (base, alias.name))) for alias in node.names]
    return [base]


def _import_module_target(node: ast.Call) -> str | None:
    """The literal name passed to `importlib.import_module(...)` or `__import__(...)`."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def imports_of(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in `source`, wherever it sits."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield from ((node.lineno, name) for name in _resolve(node, module, is_package))
        elif isinstance(node, ast.Call) and (target := _import_module_target(node)):
            yield node.lineno, target


def _layer(module: str) -> str | None:
    matches = [key for key in ALLOWED if module == key or module.startswith(f"{key}.")]
    return max(matches, key=len, default=None)


def violations_in(source: str, module: str, where: str, *, is_package: bool = False) -> list[str]:
    """`where:line: module imports target` for each import that reaches a layer above."""
    layer = _layer(module)
    if layer is None:
        return []
    found = []
    for line, target in imports_of(source, module, is_package=is_package):
        top = target.split(".")[0]
        if top in PACKAGES and top not in ALLOWED[layer]:
            found.append(f"{where}:{line}: {module} ({layer}) imports {target}")
    return found


def python_files(root: Path) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def violations(root: Path) -> list[str]:
    """Every layering violation under `root`'s packages."""
    found: list[str] = []
    for path in python_files(root):
        source = path.read_text(encoding="utf-8")
        where = path.relative_to(root).as_posix()
        module = module_name(path, root)
        found += violations_in(source, module, where, is_package=path.name == "__init__.py")
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    found = violations(ROOT)
    assert not found, "imports reaching a layer above:\n" + "\n".join(found)


def test_the_walk_reaches_every_package_and_sees_their_imports() -> None:
    files = python_files(ROOT)
    seen = {module_name(p, ROOT).split(".")[0] for p in files}
    assert seen == set(PACKAGES)
    agent = (ROOT / "silo_agent" / "agent.py").read_text(encoding="utf-8")
    names = {name for _, name in imports_of(agent, "silo_agent.agent")}
    assert {"photon.trainer", "bandwidth.codec", "silo_agent.config"} <= names


PLANTED = {
    # photon/ (the core) reaching up, lazily, inside a function
    "photon/core.py": "def f():\n    from aggregator.config import AggregatorConfig\n",
    # the core reaching bandwidth/ under TYPE_CHECKING
    "photon/typed.py": "import typing\nif typing.TYPE_CHECKING:\n    import bandwidth.codec\n",
    # bandwidth/ reaching a daemon through importlib
    "bandwidth/dyn.py": "import importlib\nimportlib.import_module('silo_agent.agent')\n",
    # one daemon importing the other, relatively
    "aggregator/sub/__init__.py": "",
    "aggregator/sub/peek.py": "from ... import silo_agent\n",
    "silo_agent/peek.py": "from aggregator import engine\n",
    # allowed: the CLI imports anything; a daemon imports the core and bandwidth/
    "photon/cli/ok.py": "import aggregator.server\nfrom silo_agent import agent\n",
    "aggregator/ok.py": "from bandwidth.codec import write_object\nfrom photon import trainer\n",
    "silo_agent/ok.py": "from . import agent\nfrom .config import SiloConfig\n",
    "bandwidth/ok.py": "from photon.errors import CodecError\n",
}


def test_the_checker_catches_planted_violations(tmp_path: Path) -> None:
    for rel, source in PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(source, encoding="utf-8")
    assert violations(tmp_path) == [
        "aggregator/sub/peek.py:1: aggregator.sub.peek (aggregator) imports silo_agent",
        "bandwidth/dyn.py:2: bandwidth.dyn (bandwidth) imports silo_agent.agent",
        "photon/core.py:2: photon.core (photon) imports aggregator.config",
        "photon/typed.py:3: photon.typed (photon) imports bandwidth.codec",
        "silo_agent/peek.py:1: silo_agent.peek (silo_agent) imports aggregator",
    ]
