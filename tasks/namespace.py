"""The root namespace: every task the pipeline offers, assembled in one place.

The steps, in the order a deploy runs them, then the chain, then the tools
for seeing and undoing, then the local clusters.
"""

from invoke import Collection

from tasks import (
    chain,
    charts,
    checks,
    cluster,
    doctor,
    grafana,
    lock,
    promotion,
    release,
    rollout,
    secrets,
    smoke,
    toolchain,
)
from tasks.pipeline import as_task

ns = Collection()
for step in (
    toolchain.tools,
    secrets.decrypt_secrets,
    charts.helm_deps,
    promotion.check_promotion,
    grafana.annotate_grafana,
    release.upgrade,
    rollout.wait_rollout,
    smoke.smoke_test,
    chain.deploy,
    chain.ci,
    chain.demo,
    charts.validate,
    release.diff,
    release.rollback,
    release.recover_release,
    secrets.check_secrets,
    secrets.lock_secrets,
    doctor.doctor,
    checks.test,
    lock.remove_lock,
):
    ns.add_task(as_task(step))
ns.add_collection(cluster.ns, name="cluster")
