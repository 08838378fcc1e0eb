"""The shape of the code base: one-way imports in ``io``, declared dependencies, no dead code."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_dkan"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or inside a function (deferred imports too)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names]  # `from pkg import module`
    return out


def test_the_io_modules_import_each_other_one_way() -> None:
    """No cycle among ``napari_dkan.io`` modules, counting imports hidden inside functions."""
    modules = {_module_name(p): p for p in (PACKAGE / "io").glob("*.py") if p.name != "__init__.py"}
    graph = {m: sorted({i for i in _imports(p) if i in modules and i != m}) for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, f"import cycle: {' → '.join([*trail, m, n])}"
            if n not in state:
                visit(n, [*trail, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not any(m.endswith(("st_legacy", "visium", "anndata_io", "lattice", "formats"))
                   for m in graph["napari_dkan.io.dataset"]), graph["napari_dkan.io.dataset"]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_module_imported_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    declared = {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}
    distributions = packages_distributions()
    undeclared = {}
    for path in PACKAGE.rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            if not top or top in sys.stdlib_module_names or top == "napari_dkan":
                continue
            dists = {_normalise(d) for d in distributions.get(top, [top])}
            if not dists & declared:
                undeclared.setdefault(top, str(path.relative_to(ROOT)))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


#: definitions only napari (or Python) calls, by a name our code never spells out
CALLED_FROM_OUTSIDE = {"_type_string": "napari's Layer property, overridden in spots_layer.py",
                       "extra_repr": "torch's nn.Module hook for repr(), overridden in model/blocks.py",
                       "eventFilter": "Qt's QObject event hook, overridden in _widgets/dock_layout.py"}


def test_every_function_and_method_is_used_somewhere() -> None:
    """A function or method whose name appears nowhere but in its own definition is dead code."""
    texts = {p: p.read_text() for folder in ("src", "tests", "scripts", "benchmarks")
             for p in (ROOT / folder).rglob("*.py")}
    everything = "\n".join([*texts.values(), (ROOT / "napari.yaml").read_text()])
    counts: dict[str, int] = {}
    for word in re.findall(r"\b\w+\b", everything):
        counts[word] = counts.get(word, 0) + 1
    dead = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(texts[path])
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            defs += [n for n in cls.body if isinstance(n, ast.FunctionDef)]
        dead += [f"{path.relative_to(ROOT)}:{d.lineno} {d.name}" for d in defs
                 if not d.name.startswith("__") and d.name not in CALLED_FROM_OUTSIDE
                 and counts.get(d.name, 0) <= 1]
    assert not dead, "defined but never used:\n" + "\n".join(dead)
