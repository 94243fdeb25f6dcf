"""Imports run one way: core -> engine -> recipes -> cli, with no cycle between jaxft's subpackages.

Every ``import`` in ``jaxft/`` and ``configs/`` counts, at module level or inside a function (a lazy import
is still a dependency). A unit is a top-level subpackage or module of jaxft (``jaxft.models.decoder`` is
``models``); a unit may import units of its own layer or of layers below it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, tuple[str, ...]] = {
    # Model code, checkpoints, adapters, decoding, tokenizers, data: usable without a training run.
    # "jaxft" is the package itself (its __init__ re-exports core names).
    "core": ("jaxft", "api", "assets", "checkpoint", "data", "errors", "files", "lora", "models", "quant",
             "interrupts", "quiet", "sampling", "tokenization"),
    # What runs any recipe: the config, the loaders, the train loop, export and the run report.
    "engine": ("config", "export", "loaders", "report", "settings", "train"),
    # The jobs, and their configs (configs/*.py).
    "recipes": ("recipes", "configs"),
    # Entry points: the training CLI and the benchmarks / inspection tools.
    "cli": ("bench", "main", "console"),
}
RANK = {unit: rank for rank, units in enumerate(LAYERS.values()) for unit in units}

# (importing module, imported module) -> why the edge is there. Nothing else may go against the layers
# or close a cycle.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclasses.dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    importer: str  # dotted module name
    target: str  # dotted module name (a name imported from a package resolves to its submodule when one exists)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.target}"


def unit(module: str) -> str:
    parts = module.split(".")
    return "configs" if parts[0] == "configs" else (parts[1] if len(parts) > 1 else "jaxft")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the importer's package, one level up per extra dot
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]


@functools.cache
def project_imports() -> tuple[Import, ...]:
    files = sorted((ROOT / "jaxft").rglob("*.py")) + sorted((ROOT / "configs").glob("*.py"))
    found = []
    for path in files:
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(node, module, path.name == "__init__.py"):
                if target.split(".")[0] == "jaxft":
                    found.append(Import(str(path.relative_to(ROOT)), node.lineno, module, target))
    return tuple(found)


def _counted(imports) -> list[Import]:
    return [i for i in imports if (i.importer, i.target) not in ALLOWED]


def test_every_unit_has_a_layer():
    units = {unit(i.importer) for i in project_imports()} | {unit(i.target) for i in project_imports()}
    assert units - set(RANK) == set(), "add these to LAYERS in tests/test_layering.py"


def test_imports_point_down_the_layers():
    upward = [f"{i}  ({unit(i.importer)} is {_layer(i.importer)}, {unit(i.target)} is {_layer(i.target)})"
              for i in _counted(project_imports()) if RANK.get(unit(i.importer), 0) < RANK.get(unit(i.target), 0)]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def _layer(module: str) -> str:
    return next(name for name, units in LAYERS.items() if unit(module) in units)


def find_cycle(imports: list[Import]) -> list[Import]:
    """One cycle between units, as the imports that make it (empty when there is none)."""
    edges: dict[str, dict[str, Import]] = {}
    for i in imports:
        if unit(i.importer) != unit(i.target):
            edges.setdefault(unit(i.importer), {}).setdefault(unit(i.target), i)
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after

    def visit(node: str, path: list[Import]) -> list[Import]:
        state[node] = "open"
        for nxt, imp in sorted(edges.get(node, {}).items()):
            if state.get(nxt) == "open":  # nxt is on the path: the cycle runs from it to here and back
                trail = path + [imp]
                return trail[next(k for k, p in enumerate(trail) if unit(p.importer) == nxt):]
            if nxt not in state and (cycle := visit(nxt, path + [imp])):
                return cycle
        state[node] = "done"
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return []


def test_no_cycle_between_subpackages():
    cycle = find_cycle(_counted(project_imports()))
    assert not cycle, "import cycle " + " -> ".join([unit(cycle[0].importer)] + [unit(i.target) for i in cycle]) + \
        ":\n" + "\n".join(map(str, cycle))


def test_allowed_imports_exist_and_say_why():
    present = {(i.importer, i.target) for i in project_imports()}
    stale = [edge for edge in ALLOWED if edge not in present]
    assert not stale, f"ALLOWED names imports that are gone: {stale}; drop them"
    assert all(reason.strip() for reason in ALLOWED.values())


def test_the_checks_find_what_they_look_for():
    """An upward import and a two-unit cycle, made up, are both found."""
    up = Import("jaxft/models/x.py", 1, "jaxft.models.x", "jaxft.train.step")
    assert RANK[unit(up.importer)] < RANK[unit(up.target)]
    back = Import("jaxft/train/y.py", 2, "jaxft.train.y", "jaxft.models.x")
    assert find_cycle([up, back]) == [up, back]
    assert find_cycle([back]) == []
    third = Import("jaxft/data/z.py", 3, "jaxft.data.z", "jaxft.models.w")
    to_data = Import("jaxft/train/y.py", 4, "jaxft.train.y", "jaxft.data.z")
    assert find_cycle([up, to_data, third]) == [third, up, to_data]  # data -> models -> train -> data
    assert _targets(ast.parse("from . import paths").body[0], "jaxft.models.decoder", False) == \
        ["jaxft.models.paths"]
    assert _targets(ast.parse("from jaxft import lora").body[0], "jaxft.bench.plan", False) == ["jaxft.lora"]
