"""The layout rules, read from the source: no import loops between ttpa_ray's modules, no
private names imported across modules, and in every stage folder only ``stage.py`` imports
ray, vllm or deepspeed (the rest is pure and testable without a cluster)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ttpa_ray"
STAGE_FOLDERS = ("probe", "construct", "sample", "score", "train", "evaluate", "report")
HEAVY = {"ray", "vllm", "deepspeed"}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import in the file, at any depth (lazy ones too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _module(path).split(".")
                pkg = pkg if path.name == "__init__.py" else pkg[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _targets(module: str, names: list[str]) -> list[str]:
    """The ttpa_ray modules an import statement loads (``from pkg import mod`` names a module)."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return found or ([module] if module in MODULES else [])


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, names, _ in _imports(path):
            if target.startswith("ttpa_ray"):
                graph[mod] |= {t for t in _targets(target, names) if t != mod and MODULES[t].name != "__init__.py"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_package_imports():
    g = import_graph()
    assert "ttpa_ray.train.plan" in g["ttpa_ray.train.stage"]       # from ttpa_ray.train import plan
    assert "ttpa_ray.construct.stage" in g["ttpa_ray.pipeline"]     # imported inside a function


def test_no_import_loops():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("folder", STAGE_FOLDERS)
def test_only_stage_py_imports_ray_vllm_or_deepspeed(folder):
    files = sorted((ROOT / folder).glob("*.py"))
    assert len(files) > 1 and (folder == "report" or ROOT / folder / "stage.py" in files)  # report uses no Ray
    offenders = [f"{p.name}:{line} imports {mod}" for p in files if p.name != "stage.py"
                 for mod, _, line in _imports(p) if mod.split(".")[0] in HEAVY]
    assert offenders == []


def test_package_init_files_are_empty():
    inits = list(ROOT.rglob("__init__.py"))
    assert inits and [str(p) for p in inits if p.read_text().strip()] == []


def test_no_private_names_across_modules():
    offenders = [f"{_module(p)}:{line} imports {n} from {mod}" for p in MODULES.values()
                 for mod, names, line in _imports(p) if mod.startswith("ttpa_ray")
                 for n in names if n.startswith("_") and not n.startswith("__")]
    assert offenders == []
