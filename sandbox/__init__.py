"""The local machinery beside the deploy package: local Kubernetes clusters, the pinned
tools built from Go modules, chart repository and OCI registry mirrors on loopback. The
demo and the tests use it; no step of a deploy imports it."""
