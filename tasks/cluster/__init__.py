"""Local Kubernetes clusters for the demo and the tests (placeholder)."""

from invoke import Collection, task


@task
def status(c):
    """Say which local clusters run and where their kubeconfigs are."""
    print("no clusters")


ns = Collection(status)
