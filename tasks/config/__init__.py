"""The site's settings: the registry of environments, values files, cluster kinds, and the
context a step runs in. Imports only tasks.core."""
