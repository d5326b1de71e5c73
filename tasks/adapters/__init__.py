"""One module per outside tool or service the steps use: helm, kubectl's bookkeeping, the
cluster credentials and kinds, git-crypt's keys, OCI registries, chat webhooks, the pinned
tools. Imports only tasks.core and tasks.config."""
