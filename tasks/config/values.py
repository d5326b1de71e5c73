"""Local checks of values files, secret ones included: nothing leaves this machine.

YAML fails in non-obvious ways; tab characters most of all. Every problem of
every values file of an environment is reported in one list, each with its
file, line and column, before helm runs. Messages name keys and positions,
never values, so a secret file can be checked without printing its content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.core.errors import Location, StepFailure

GIT_CRYPT_HEADER = b"\x00GITCRYPT"


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"

    def location(self) -> Location:
        return Location(str(self.path), self.line, self.column, self.message)


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise _DuplicateKey(
                    problem=f"the key {key!r} appears twice in this mapping (first on line "
                    f"{first}); the second silently replaces the first",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def is_locked(path: Path) -> bool:
    """True when the file is still git-crypt ciphertext (False when it cannot be read)."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(GIT_CRYPT_HEADER)) == GIT_CRYPT_HEADER
    except OSError:
        return False


def check_file(path: Path, shown_as: Path | None = None, documents: bool = False) -> list[Problem]:
    """Every tab, duplicate key and syntax error in one values file.

    With `documents`, the file may hold several YAML documents (manifests,
    configuration streams) and need not be a mapping.
    """
    name = shown_as or path
    if not path.exists():
        return [Problem(name, 1, 1, "does not exist (named in config/environments.yaml)")]
    if is_locked(path):
        return [
            Problem(name, 1, 1, "still encrypted by git-crypt; run `invoke decrypt-secrets` first")
        ]
    text = path.read_text(encoding="utf-8", errors="replace")
    problems = [
        Problem(
            name,
            number,
            line.index("\t") + 1,
            "tab character in the indentation: YAML allows only spaces there",
        )
        for number, line in enumerate(text.splitlines(), start=1)
        if "\t" in line[: len(line) - len(line.lstrip())]
    ]
    try:
        if documents:
            list(yaml.load_all(text, Loader=_StrictLoader))
            return problems
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if not any(p.line == line for p in problems):
            problems.append(Problem(name, line, column, _reason(error)))
        return problems
    except yaml.YAMLError as error:
        return [*problems, Problem(name, 1, 1, str(error).splitlines()[0])]
    if document is not None and not isinstance(document, dict):
        problems.append(
            Problem(name, 1, 1, "a values file must be a mapping of keys, not a list or a value")
        )
    return problems


def _reason(error: yaml.MarkedYAMLError) -> str:
    # PyYAML's text can quote the offending line, which may hold a secret.
    problem = error.problem or "invalid YAML"
    return f"{error.context}: {problem}" if error.context else problem


def check_files(paths: list[Path], root: Path, documents: bool = False) -> list[Problem]:
    problems: list[Problem] = []
    for path in paths:
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        problems += check_file(path, shown, documents)
    return problems


def load(path: Path) -> dict[str, Any]:
    """A checked values file as a dict (empty for an empty file)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}


def merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """Merge one values layer over another, as helm does with several -f files."""
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def refuse(problems: list[Problem], what: str) -> None:
    """Stop the step when there are problems: their number and `what`, each one, the advice."""
    if problems:
        raise StepFailure(
            f"{len(problems)} {what}",
            advice(problems),
            details="\n".join(map(str, problems)),
            locations=[p.location() for p in problems],
        )


def advice(problems: list[Problem]) -> str:
    """What to do about a list of problems, naming only the kinds it holds."""
    hints = ["Fix each line listed"]
    if any("tab character" in p.message for p in problems):
        hints.append("indent with spaces: YAML allows no tab characters there")
    if any("appears twice" in p.message for p in problems):
        hints.append("keep one of each repeated key")
    if any("does not exist" in p.message for p in problems):
        hints.append("fix the path in config/environments.yaml or add the file")
    return "; ".join(hints) + "."


def key_position(path: Path, keys: tuple[str, ...]) -> tuple[int, int] | None:
    """The line and column (from 1) where the key at `keys` is set in `path`, if it is."""
    try:
        node: yaml.Node | None = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    found: yaml.Node | None = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        found, node = next(((k, v) for k, v in node.value if k.value == key), (None, None))
        if found is None:
            return None
    return (found.start_mark.line + 1, found.start_mark.column + 1) if found else None


def layers_setting(paths: list[Path], pointer: str) -> list[Path]:
    """The values files that set the key at a JSON pointer like '/static/replicas'."""
    keys = [key for key in pointer.strip("/").split("/") if key]
    found = []
    for path in paths:
        if not path.exists() or is_locked(path):
            continue
        try:
            node: Any = load(path)
        except yaml.YAMLError:
            continue
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            found.append(path)
    return found
