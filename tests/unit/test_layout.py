"""The shape of the code (the README's "Layout"): every project module's imports, read with ast, point one way.

    cli -> workflow -> sweeps -> training -> registry -> cluster -> tracking -> config -> errors, signals
        -> models, datamodules

A module imports its own folder and the layers below it, never one above; there is no import circle anywhere
(function-local imports count: they only hide a circle); models/ and datamodules/ import nothing from
pipelines/; `ray.train` lives in training/, `ray.tune` in sweeps/, and Ray at all only there and in cluster/;
no source file is over 300 lines and no function over 60.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "models", "datamodules")
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60

# top to bottom; a name is a folder (every module under it) or a single module
LAYERS = [
    ("pipelines.cli",),
    ("pipelines.workflow",),
    ("pipelines.sweeps",),
    ("pipelines.training",),
    ("pipelines.registry",),
    ("pipelines.cluster",),
    ("pipelines.tracking",),
    ("pipelines.config",),
    ("pipelines.errors", "pipelines.signals"),
    ("models", "datamodules"),
]
# which folders may import Ray's parts
RAY_HOMES = {"ray.train": ("pipelines.training",), "ray.tune": ("pipelines.sweeps",),
             "ray": ("pipelines.cluster", "pipelines.training", "pipelines.sweeps")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _imported(module: str, path: Path) -> list:
    """(line, dotted name) of every import in the file, relative ones resolved, function-local ones included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` imports module a.b when there is one, else a name of module a
            out += [(node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base)
                    for alias in node.names]
    return list(dict.fromkeys(out))   # `from a import (b, c)` of one module once


def _project_target(name: str):
    """The project module an imported dotted name lands in (the longest module prefix), or None."""
    while name and name not in SOURCES:
        name = name.rpartition(".")[0]
    return name or None


IMPORTS = {module: _imported(module, path) for module, path in SOURCES.items()}
GRAPH = {module: {t for _, name in imports if (t := _project_target(name)) and t != module}
         for module, imports in IMPORTS.items()}


def _layer(module: str):
    for rank, names in enumerate(LAYERS):
        for name in names:
            if _under(module, name):
                return rank, name
    return None


def _cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_reader_sees_the_whole_project():
    assert {"pipelines", "models", "datamodules", "models.base", "datamodules.base"} <= set(SOURCES)
    assert len(SOURCES) > 20 and sum(map(len, GRAPH.values())) > 50


def test_no_import_circle():
    circles = _cycles(GRAPH)
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_models_and_datamodules_import_nothing_from_pipelines():
    up = [f"{SOURCES[m].relative_to(REPO)}:{line} imports {name}" for m, imports in IMPORTS.items()
          if m.split(".")[0] in ("models", "datamodules") for line, name in imports if _under(name, "pipelines")]
    assert not up, "\n".join(up)


def test_every_module_has_a_layer():
    homeless = [m for m in SOURCES if m != "pipelines" and _layer(m) is None]
    assert not homeless, "\n".join(homeless)


def test_dependencies_point_down_the_layers():
    up = []
    for module, imports in IMPORTS.items():
        here = _layer(module)
        for line, name in imports:
            target = _project_target(name)
            there = _layer(target) if target else None
            if here is None or there is None or there[1] == here[1]:
                continue
            if there[0] <= here[0]:
                up.append(f"{SOURCES[module].relative_to(REPO)}:{line} ({here[1]}) imports {name} ({there[1]})")
    assert not up, "\n".join(up)


@pytest.mark.parametrize("part", sorted(RAY_HOMES))
def test_ray_is_imported_only_where_it_belongs(part):
    homes = RAY_HOMES[part]
    strays = [f"{SOURCES[m].relative_to(REPO)}:{line} imports {name}" for m, imports in IMPORTS.items()
              for line, name in imports if _under(name, part) and not any(_under(m, h) for h in homes)]
    assert not strays, "\n".join(strays)


def test_no_source_file_over_300_lines():
    long = {str(p.relative_to(REPO)): n for p in SOURCES.values()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, "\n".join(f"{p}: {n} lines" for p, n in long.items())


def test_no_function_over_60_lines():
    long = []
    for path in SOURCES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)
