"""Shared fixtures for the project's own tests.

`tests/smoke/` is not part of this suite: it is the deployment validation
suite that `invoke smoke-test --env=X` runs against a live environment.
"""

from tests.fixtures.chain import both_clusters, demo_namespaces_cleaned_up
from tests.fixtures.cluster import LocalCluster, local_cluster
from tests.fixtures.site import chart_dependencies, demo_secrets, site_env

collect_ignore = ["smoke"]

__all__ = [
    "LocalCluster",
    "both_clusters",
    "chart_dependencies",
    "demo_namespaces_cleaned_up",
    "demo_secrets",
    "local_cluster",
    "site_env",
]
