"""The package's import structure: no import cycles, and imports at the top of each module.

Read from the source with ``ast`` (nothing is imported): a function-local import is allowed only
where it saves start-up time for a heavy or optional dependency, and then says so in a comment
containing ``NOTE: lazy`` on its line or in the comment lines just above it.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "nerf_dist"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _targets(mod: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> set[str]:
    """Package modules an import statement loads (the module itself and its parent packages)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
            pkg = pkg[:len(pkg) - node.level + 1]
            base = ".".join(pkg + ([node.module] if node.module else []))
        # NOTE: `from pkg import name` loads the submodule pkg.name when there is one.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            out.add(".".join(parts[:i]))
    # NOTE: a module's own parent packages are already being imported when it runs (the normal
    # `__init__` imports `.sub` pattern), so edges to them are not cycles.
    own = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
    return {t for t in out if t in mods and t != mod and t not in own}


def _graph():
    """(top-level edges, all edges incl. function-local, function-local imports without a note)."""
    mods = _modules()
    top = {m: set() for m in mods}
    every = {m: set() for m in mods}
    unexplained = []
    for mod, path in mods.items():
        src = path.read_text()
        lines = src.splitlines()
        for node, in_function in _imports(ast.parse(src)):
            if getattr(node, "module", None) == "__future__":
                continue
            targets = _targets(mod, path, node, mods)
            every[mod] |= targets
            if not in_function:
                top[mod] |= targets
            elif not _has_lazy_note(lines, node.lineno):
                unexplained.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: "
                                   f"{lines[node.lineno - 1].strip()}")
    return top, every, unexplained


def _imports(tree: ast.AST, in_function: bool = False):
    """(import node, inside a function?) for every import statement; an import under a
    module-level `if` or `try` runs at import time, so it counts as top-level."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        else:
            yield from _imports(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def _has_lazy_note(lines: list[str], lineno: int) -> bool:
    """A `NOTE: lazy` comment on the import's line or in the comment block right above it."""
    if "NOTE: lazy" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        if "NOTE: lazy" in lines[i]:
            return True
        i -= 1
    return False


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_through_function_local_imports():
    top, every, _ = _graph()
    assert len(top) > 30                                    # the walk found the package
    assert _cycles(every) == [], "modules that import each other (directly or in a ring)"


def test_function_local_imports_say_why():
    _, _, unexplained = _graph()
    assert unexplained == [], ("move these imports to the top of the module, or say why they "
                               "must stay lazy with a `# NOTE: lazy because ...` comment:\n"
                               + "\n".join(unexplained))
