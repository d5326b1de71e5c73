"""The root namespace: every task the pipeline offers, assembled in one place."""

from invoke import Collection

from tasks import cluster

ns = Collection()
ns.add_collection(cluster.ns, name="cluster")
