"""Shared fixtures for the project's own tests.

`tests/smoke/` is not part of this suite: it is the deployment validation
suite that `invoke smoke-test --env=X` runs against a live environment.
"""

collect_ignore = ["smoke"]
