"""Every task is listed with one line of help and documents every flag."""

import inspect
import subprocess
import sys

from tasks.cli.namespace import ns
from tasks.core.runner import PROJECT_ROOT

SIX_STEPS = (
    "decrypt-secrets",
    "helm-deps",
    "annotate-grafana",
    "upgrade",
    "wait-rollout",
    "smoke-test",
)


def all_tasks(collection=ns, prefix=""):
    for name, task in collection.tasks.items():
        yield prefix + name, task
    for name, sub in collection.collections.items():
        yield from all_tasks(sub, f"{prefix}{name}.")


def test_every_flag_of_every_task_has_help():
    undocumented = [
        f"{name} --{flag}"
        for name, task in all_tasks()
        for flag in list(inspect.signature(task.body).parameters)[1:]
        if flag not in task.help
    ]
    assert undocumented == []


def test_every_task_has_a_one_line_summary():
    assert [name for name, task in all_tasks() if not (task.__doc__ or "").strip()] == []


def test_invoke_list_shows_the_six_steps_and_the_chain():
    listing = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (*SIX_STEPS, "deploy", "ci", "demo", "cluster.up"):
        assert f"  {name} " in listing
