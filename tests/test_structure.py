"""The package's shape, as the structure issue set it: rooms without import cycles, command
modules that stay thin, and no class, function or module past the sizes a reader can hold.

Sizes count lines of the definition including its docstring. ``LONGER_ALLOWED`` may name a
function that is longer for a reason (the style guide allows it for an outer loop that reads
top to bottom in sections); today none needs it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "wgan_dist"
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 400, 250, 60
LONGER_ALLOWED: dict[str, int] = {}
COMMANDS = ("train", "generate", "evaluate", "shard", "toy")


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Package modules ``name`` imports (at any depth of the file: lazy imports count too)."""
    tree, known = ast.parse(path.read_text()), modules()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known and m != name}


def test_no_import_cycles():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    # A package's __init__ re-exporting its own modules is not a cycle between rooms.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _sizes():
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        yield "module", name, len(path.read_text().splitlines()), MAX_MODULE
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                yield "class", f"{name}.{node.name}", node.end_lineno - node.lineno + 1, MAX_CLASS
                for f in node.body:
                    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        full = f"{name}.{node.name}.{f.name}"
                        yield "function", full, f.end_lineno - f.lineno + 1, \
                            LONGER_ALLOWED.get(full, MAX_FUNCTION)
        for f in tree.body:
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield "function", f"{name}.{f.name}", f.end_lineno - f.lineno + 1, MAX_FUNCTION


def test_sizes():
    over = [f"{kind} {name}: {n} lines (limit {limit})" for kind, name, n, limit in _sizes()
            if n > limit]
    assert not over, "\n".join(over)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_modules_hold_no_library_code(command):
    """A command module parses, calls the library and returns an exit code: no classes, and
    nothing from it is imported by the library."""
    tree = ast.parse((PKG / f"{command}.py").read_text())
    assert not [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    users = [name for name, path in modules().items()
             if f"wgan_dist.{command}" in imports_of(name, path) and name.split(".")[1:2] != [command]]
    assert not users, f"library modules import the command module wgan_dist.{command}: {users}"
