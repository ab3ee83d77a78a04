"""The package's layers, read from the source: no import circle between vbp's modules (imports inside functions
included), and the engine imports nothing from the workflows built on it, nor from the command line."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "vbp"
EXTENSIONS = {"vbp._C"}  # compiled modules: leaves
APPLICATION = ("vbp", "vbp.__main__", "vbp.cli")  # the package's face and the command: may import any layer


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The vbp modules `name` imports anywhere in its source (a name imported from a package counts as the
    package, unless it is a submodule)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            candidates = [f"{base}.{a.name}" for a in node.names]
            targets = [c if c in modules else base for c in candidates if c not in EXTENSIONS]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle_from(graph, start):
    """An import path from `start` back to itself, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_circle(graph):
    assert len(graph) > 60  # the walk found the package
    cycles = [c for c in (_cycle_from(graph, name) for name in graph) if c]
    assert not cycles, " -> ".join(cycles[0])


def test_the_engine_imports_no_workflow_and_no_command(graph):
    engine = [n for n in graph if n not in APPLICATION and not n.startswith(("vbp.workflows", "vbp.commands"))]
    assert "vbp.calibrate" in engine and "vbp.families.hf" in engine
    wrong = {n: sorted(t for t in graph[n] if t.startswith(("vbp.workflows", "vbp.commands", "vbp.cli")))
             for n in engine}
    assert not {n: t for n, t in wrong.items() if t}


def test_workflows_import_no_command(graph):
    wrong = {n: sorted(t for t in graph[n] if t.startswith(("vbp.commands", "vbp.cli")))
             for n in graph if n.startswith("vbp.workflows")}
    assert not {n: t for n, t in wrong.items() if t}


def test_no_command_imports_another(graph):
    commands = [n for n in graph if n.startswith("vbp.commands.")]
    shared = {"vbp.commands.arguments", "vbp.commands.options", "vbp.commands.paths", "vbp.commands.session"}
    wrong = {n: sorted(t for t in graph[n] if t in commands and t not in shared and t != n) for n in commands}
    assert not {n: t for n, t in wrong.items() if t}


def test_every_subpackage_is_packaged():
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
