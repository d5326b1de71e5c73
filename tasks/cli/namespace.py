"""The root namespace: every task the pipeline offers, assembled in one place.

The steps, in the order a deploy runs them, then the chain, then the tools
for seeing and undoing, then the local clusters.
"""

from invoke import Collection

from tasks.cli import chain, checks, cluster, demo, operate, steps
from tasks.flows.pipeline import as_task

ns = Collection()
for step in (
    steps.tools,
    steps.decrypt_secrets,
    steps.helm_deps,
    steps.check_promotion,
    steps.annotate_grafana,
    steps.upgrade,
    steps.wait_rollout,
    steps.smoke_test,
    chain.deploy,
    chain.ci,
    demo.demo,
    operate.validate,
    operate.diff,
    operate.rollback,
    operate.recover_release,
    operate.check_secrets,
    operate.lock_secrets,
    operate.doctor,
    checks.test,
    operate.remove_lock,
):
    ns.add_task(as_task(step))
# Every step of a deploy runs on its own too, with the task its declaration makes.
for step in chain.STAGE:
    if steps.task_of(step).name not in ns.tasks:
        ns.add_task(steps.task_of(step))
ns.add_collection(cluster.ns, name="cluster")
