"""The deployment validation suite: `invoke smoke-test --env=X` runs it against a live site."""
