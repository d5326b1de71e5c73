"""invoke, Python and the type checker agree on where `tasks` lives."""

import subprocess
import sys
from pathlib import Path

import pytest

import tasks
from tasks import release

ROOT = Path(__file__).resolve().parent.parent


def test_python_imports_the_tasks_package_the_type_checker_sees():
    assert Path(tasks.__file__) == ROOT / "tasks" / "__init__.py"
    assert Path(release.__file__) == ROOT / "tasks" / "release.py"


@pytest.mark.parametrize("folder", [".", "tests", "tasks/cluster"])
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
