"""The layers of the code base: no import runs upward, core never imports a task, no private name crosses a package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: lower layers first; a module may import its own layer and any layer below it
LAYERS = [
    ("core.engine",),
    ("core.api", "core.data"),
    ("core.cost", "core.ops"),
    ("core.zoo", "core.distill", "core.predictors"),
    ("core.task",),
    ("core.supernet",),
    ("core.evaluation", "core.objective"),
    ("core.strategies", "core.oneshot"),
    ("core.journal", "core.executors"),
    ("core.search",),
    ("core.pipeline", "core.testing"),
    ("core.cli",),
]


def layer_of(module: str) -> int | None:
    if module == "core":  # the package itself (its version string)
        return len(LAYERS)
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every import statement, at any depth (lazy imports count)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            folder = ROOT / base.replace(".", "/")
            submodules = [a.name for a in node.names
                          if (folder / f"{a.name}.py").is_file() or (folder / a.name / "__init__.py").is_file()]
            out += [(f"{base}.{name}", [], node.lineno) for name in submodules]
            names = [a.name for a in node.names if a.name not in submodules]
            if names:
                out.append((base, names, node.lineno))
    return out


def top_package(module: str) -> str:
    """`core.zoo.darts.ops` -> `core.zoo`; `tasks.detection.search` -> `tasks.detection`."""
    return ".".join(module.split(".")[:2])


CORE = modules("core")
TASKS = modules("tasks")


@pytest.mark.parametrize("module,path", CORE, ids=[m for m, _ in CORE])
def test_core_imports_run_downward(module, path):
    here = layer_of(module)
    assert here is not None, f"{module} is in no layer of tests/test_layers.py"
    for target, _, line in imports(path, module):
        assert not (target == "tasks" or target.startswith("tasks.")), f"{path}:{line}: core imports {target}"
        there = layer_of(target)
        if there is not None:
            assert there <= here, f"{path}:{line}: {module} (layer {here}) imports {target} (layer {there})"


@pytest.mark.parametrize("module,path", CORE + TASKS, ids=[m for m, _ in CORE + TASKS])
def test_no_private_name_crosses_a_package(module, path):
    for target, names, line in imports(path, module):
        if not (target.startswith("core.") or target.startswith("tasks.")):
            continue
        if top_package(target) == top_package(module):
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{path}:{line}: {module} imports private {private} from {target}"


@pytest.mark.parametrize("module,path", TASKS, ids=[m for m, _ in TASKS])
def test_a_task_imports_no_other_task(module, path):
    mine = top_package(module)
    for target, _, line in imports(path, module):
        if target.startswith("tasks."):
            assert top_package(target) == mine, f"{path}:{line}: {module} imports {target}"
