"""Entry point of the deploy pipeline: `invoke --list` starts here.

invoke looks for `tasks.py` before the package `tasks/` beside it, and imports
this file under the name `tasks`, in the package's place. Declaring the folder
as this module's package path lets `tasks.namespace`, `tasks.release`, ...
import from `tasks/` all the same. Python, pytest, pyright and editors import
the package `tasks/` itself (it has an `__init__.py`, which therefore holds no
code: under invoke it does not run).
"""

from pathlib import Path

__path__ = [str(Path(__file__).with_suffix(""))]

from tasks.cli.namespace import ns

__all__ = ["ns"]
