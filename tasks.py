"""Entry point of the deploy pipeline: `invoke --list` starts here.

`tasks.py` and the `tasks/` folder both want the import name `tasks`. This file
wins (the folder has no `__init__.py`), and declares the folder as its package
path, so `tasks.upgrade`, `tasks.registry`, ... import from `tasks/`. One name,
one entry point, no shadowing.
"""

from pathlib import Path

__path__ = [str(Path(__file__).with_suffix(""))]

from tasks.namespace import ns

__all__ = ["ns"]
