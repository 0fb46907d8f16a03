"""The package's layers: every import of every lt_det module (function-local ones included, read
with ``ast``) goes down the layer order, and no modules import each other in a circle.

    config, errors, registry, class_stats, lvis_json  <  data, modeling, evaluation, coco_to_lvis,
    checkpoint
    <  decouple  <  engine, model_zoo  <  benchmark  <  tools

Modules of one layer may import each other as long as no circle forms.
"""
import ast
import os
from typing import Dict, List, Set

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lt_det")

LAYERS = [
    {"config", "errors", "files", "registry", "class_stats", "fidelity", "lvis_json"},
    {"data", "modeling", "evaluation", "coco_to_lvis", "checkpoint"},
    {"decouple"},
    {"engine", "model_zoo"},  # model_zoo loads shipped configs with the engine's loader
    {"benchmark"},
    {"tools"},  # the programs (lt_det.tools.train_net, ...): on top of everything
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _modules() -> Dict[str, str]:
    """{dotted module name: path} of every .py file under lt_det/."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(ROOT))
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = os.path.join(folder, f)
    return out


MODULES = _modules()


def _resolve(importer: str, is_package: bool, node: ast.AST) -> List[str]:
    """The lt_det modules an import statement loads (deepest existing module per name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = importer.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("lt_det"):
            out.append(name)
    return out


def _graph() -> Dict[str, Set[str]]:
    graph = {}
    for mod, path in MODULES.items():
        with open(path) as f:
            tree = ast.parse(f.read(), filename=path)
        is_package = path.endswith("__init__.py")
        deps = set()
        for node in ast.walk(tree):  # also imports inside functions and classes
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(_resolve(mod, is_package, node))
        deps.discard(mod)
        graph[mod] = deps
    return graph


GRAPH = _graph()


def _component(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "lt_det"


def test_every_module_has_a_layer():
    unknown = sorted({_component(m) for m in MODULES} - set(RANK) - {"lt_det"})
    assert not unknown, f"add {unknown} to LAYERS in tests/test_layers.py"


def test_imports_go_down_the_layers():
    bad = []
    for mod, deps in GRAPH.items():
        if mod == "lt_det":  # the package's public face re-exports every layer
            continue
        for dep in deps:
            if dep == "lt_det":
                bad.append(f"{mod} imports the package root (import the module it needs)")
            elif RANK[_component(dep)] > RANK[_component(mod)]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def _find_cycle(graph: Dict[str, Set[str]]):
    colour, stack = {}, []

    def visit(node):
        colour[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if colour.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in colour:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_components():
    comps: Dict[str, Set[str]] = {}
    for mod, deps in GRAPH.items():
        if mod == "lt_det":
            continue
        comps.setdefault(_component(mod), set()).update(
            _component(d) for d in deps if _component(d) != _component(mod)
        )
    cycle = _find_cycle(comps)
    assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_between_modules():
    # A package's __init__ importing its own submodules is how registration works; a
    # submodule importing back its package (or a sibling that does) would be a circle.
    cycle = _find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ..engine.defaults import load_config", "lt_det.engine.defaults"),
        ("from . import method_crt", "lt_det.decouple.method_crt"),
        ("import lt_det.modeling", "lt_det.modeling"),
    ],
)
def test_import_resolution(source, expected):
    # The checker itself: relative, package-relative and absolute imports resolve.
    node = ast.parse(source).body[0]
    assert expected in _resolve("lt_det.decouple.norms", False, node) or expected in _resolve(
        "lt_det.decouple", True, node
    )
