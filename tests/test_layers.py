"""The package's structure, read from its source: layers only import downwards, no import cycle, imports at
the top of files, no module over 400 lines and no function over 80 (docs/architecture.md, "Layers").

Every ``import`` statement counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ajuste

SRC = Path(ajuste.__file__).parent

# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS = [
    ("base", {"errors", "lazy", "io", "locks", "registry", "durations", "metrics", "tasks"}),
    ("config", {"config"}),
    ("data and backbones", {"data", "backbones"}),
    ("strategies", {"strategies"}),
    ("training", {"training"}),
    ("export", {"export"}),
    ("search and study", {"search", "study"}),
    ("report", {"report"}),
    ("interfaces", {"api", "cli", "docs", "__main__"}),
]
RANK = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}

# Imports of ajuste modules that stay inside functions, with the reason. The CLI (cli/) keeps all of its
# own lazy: `ajuste --help` must not import torch, optuna or transformers (DESIGN: start-up time).
LAZY = {
    ("ajuste.training.stored_weights", "ajuste.training.run_eval"):
        "run_eval loads runs through stored_weights; materialising a run reads it back through run_eval",
    ("ajuste.search", "ajuste.search.runner"):
        "the package's lazy attributes: `import ajuste.search` must not import optuna",
    ("ajuste.search", "ajuste.search.space"): "the package's lazy attributes",
    ("ajuste", "ajuste.api"): "the package's lazy attributes: `import ajuste` must not import torch",
}
# The Python API likewise: ajuste.train(...) must not pay for optuna, nor ajuste.tune(...) for the report.
LAZY_PACKAGES = {"ajuste.cli", "ajuste.api"}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _target(node: ast.ImportFrom | ast.Import, alias: ast.alias, here: str, is_package: bool) -> str | None:
    """The ajuste module an import names (``from ajuste.x import y``: ajuste.x.y when y is a module)."""
    if isinstance(node, ast.Import):
        name = alias.name
    else:
        if node.level:
            base = here.split(".") if is_package else here.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        if f"{name}.{alias.name}" in MODULES:
            name = f"{name}.{alias.name}"
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name if name.startswith("ajuste") else None


def _imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every import of an ajuste module."""
    edges = []
    for here, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    there = _target(node, alias, here, path.name == "__init__.py")
                    if there and there != here:
                        edges.append((here, there, node.lineno, id(node) in inner))
    return edges


EDGES = _imports()


def _layer(module: str) -> int:
    # The package itself is the facade over the Python API (its names load ajuste.api on first use): the top.
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 else len(LAYERS) - 1


def test_every_module_has_a_layer():
    assert not [m for m in MODULES if m != "ajuste" and m.split(".")[1] not in RANK]


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} (layer {LAYERS[_layer(a)][0]}) imports {b} (layer {LAYERS[_layer(b)][0]}), line {line}"
              for a, b, line, _ in sorted(set(EDGES)) if _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in EDGES:
        graph.setdefault(a, set()).add(b)
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 and not _lazy_only(component, graph):
                cycles.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _lazy_only(component: list[str], graph: dict[str, set[str]]) -> bool:
    """A cycle closed only by an import the LAZY table allows (it runs after both modules are loaded)."""
    inside = set(component)
    closing = [(a, b) for a, b, _, lazy in EDGES if a in inside and b in inside and lazy]
    return bool(closing) and all((a, b) in LAZY for a, b in closing)


def test_imports_are_at_the_top():
    lazy = [f"{a} imports {b} inside a function, line {line}" for a, b, line, inner in sorted(set(EDGES))
            if inner and (a, b) not in LAZY and not any(a == p or a.startswith(p + ".") for p in LAZY_PACKAGES)]
    assert not lazy, "\n".join(lazy)


def test_no_module_over_400_lines_and_no_function_over_80():
    long_modules = [f"{m}: {n} lines" for m, p in MODULES.items()
                    if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    long_functions = []
    for m, p in MODULES.items():
        for fn in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = fn.end_lineno - fn.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{m}.{fn.name} (line {fn.lineno}): {n} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The import reader finds an upward import inside a function (what the tests above would reject)."""
    fake = tmp_path / "ajuste" / "data" / "reach_up.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ajuste.training.loop import fit\n    return fit\n", encoding="utf-8")
    monkeypatch.setitem(MODULES, "ajuste.data.reach_up", fake)
    edges = [e for e in _imports() if e[0] == "ajuste.data.reach_up"]
    assert edges == [("ajuste.data.reach_up", "ajuste.training.loop", 2, True)]
    assert _layer("ajuste.training.loop") > _layer("ajuste.data.reach_up")
