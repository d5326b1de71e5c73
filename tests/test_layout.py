"""invoke, Python and the type checker agree on where `tasks` lives, and the package keeps its
floors: each imports only from the floors below it, with no circle and no import hidden
inside a function."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tasks
from tasks.steps import release

ROOT = Path(__file__).resolve().parent.parent

# The floors of the deploy package, from the ground up (tasks/*/__init__.py say what each
# holds), with sandbox/, the local machinery, under the top one: a module imports from its
# own floor and those below.
FLOORS = (
    "tasks.core",
    "tasks.config",
    "tasks.adapters",
    "tasks.steps",
    "tasks.flows",
    "sandbox",
    "tasks.cli",
)


def _python_files() -> list[Path]:
    found = [ROOT / "tasks.py"]
    for folder in ("tasks", "sandbox", "tests", "benchmarks"):
        found += sorted((ROOT / folder).rglob("*.py"))
    return found


def _floor(module: str) -> int:
    floors = [i for i, floor in enumerate(FLOORS) if module.startswith(floor + ".")]
    return floors[0] if floors else len(FLOORS)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """The project modules `path` imports, each with whether the import is inside a function."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module and not child.level:
                if child.module.split(".")[0] in ("tasks", "sandbox"):
                    found.extend((f"{child.module}.{alias.name}", inside) for alias in child.names)
            elif isinstance(child, ast.Import):
                found.extend((a.name, inside) for a in child.names if a.name.startswith("tasks."))
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports() -> dict[str, list[tuple[str, bool]]]:
    modules = {
        _module(p): p for folder in ("tasks", "sandbox") for p in (ROOT / folder).rglob("*.py")
    }
    graph = {}
    for name, path in modules.items():
        targets = []
        for target, inside in _imports(path):
            # `from tasks.steps import lock` names a module; `from tasks.core.run import current`
            # a name of one.
            module = target if target in modules else target.rsplit(".", 1)[0]
            if module != name and module in modules:
                targets.append((module, inside))
        graph[name] = targets
    return graph


def test_python_imports_the_tasks_package_the_type_checker_sees():
    assert Path(tasks.__file__) == ROOT / "tasks" / "__init__.py"
    assert Path(release.__file__) == ROOT / "tasks" / "steps" / "release.py"


@pytest.mark.parametrize("folder", [".", "tests", "tasks", "tasks/steps", "sandbox"])
def test_invoke_lists_the_tasks_from_the_root_and_from_a_subfolder(folder):
    listing = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"],
        cwd=ROOT / folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("deploy", "upgrade", "wait-rollout", "cluster.up", "test"):
        assert f"  {name} " in listing or f"  {name}\n" in listing, listing


def test_no_module_is_named_like_one_of_the_standard_library():
    # Run from its folder, such a module hides the real one from everything imported there.
    clashes = [
        str(path.relative_to(ROOT))
        for path in _python_files()
        if path.stem in sys.stdlib_module_names or path.parent.name in sys.stdlib_module_names
    ]
    assert clashes == []


def test_each_floor_imports_only_from_the_floors_below_and_never_inside_a_function():
    upward, hidden = [], []
    for module, targets in _package_imports().items():
        for target, inside in targets:
            if _floor(target) > _floor(module):
                upward.append(f"{module} -> {target}")
            if inside:
                hidden.append(f"{module} -> {target}")
    assert upward == [], "imports that run up a floor"
    assert hidden == [], "imports inside functions"


def test_sandbox_serves_the_demo_and_the_tests_and_no_step():
    users = {
        module
        for module, targets in _package_imports().items()
        for target, _ in targets
        if target.startswith("sandbox") and not module.startswith("sandbox")
    }
    assert users <= {"tasks.cli.cluster", "tasks.cli.demo", "tasks.cli.checks"}, users


def test_no_two_modules_import_each_other_in_a_circle():
    graph = {m: {t for t, _ in targets} for m, targets in _package_imports().items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert circles == []
