"""The project's own checks: lint, format, types, and the test suite."""

from typing import cast

from invoke import Context, task
from invoke.exceptions import Exit
from invoke.runners import Promise

from tasks.core.output import say
from tasks.core.report import Stopwatch, format_seconds
from tasks.core.runner import invoke_dry_refusal


@task(
    help={
        "quick": "Skip the tests that need a local cluster (marked `cluster`).",
        "pytest_args": "Extra arguments for pytest, e.g. '-k grafana -x'.",
    }
)
def test(c: Context, quick: bool = False, pytest_args: str = "") -> None:
    """Lint, check formatting and types, and run every test (what .ci/run runs)."""
    refusal = invoke_dry_refusal(c, "test")
    if refusal:
        raise Exit(refusal)
    watch = Stopwatch()
    c.run("ruff check .", echo=True)
    c.run("ruff format --check .", echo=True)
    # The type checker runs beside the tests, which mostly wait on the clusters; its
    # report follows theirs. What it checks is in pyproject.toml ([tool.pyright]).
    say("$ pyright  (beside the tests; its report follows theirs)")
    types = cast(Promise, c.run("pyright", hide=True, warn=True, asynchronous=True))
    marker = "-m 'not cluster'" if quick else ""
    tests = c.run(
        f"python3 -m pytest -q {marker} {pytest_args}".strip(), echo=True, pty=False, warn=True
    )
    typed = types.join()
    say(typed.stdout.rstrip())
    ran = {"pytest": tests, "pyright": typed}
    failed = [name for name, result in ran.items() if not result or result.failed]
    if failed:
        raise Exit(f"checks failed: {', '.join(failed)}", code=1)
    say(f"checks passed in {format_seconds(watch.seconds)}")
