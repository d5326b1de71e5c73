"""The cluster kinds, one module each (see tasks/config/cluster_kind.py)."""
