"""Secret values blanked out of everything the pipeline prints, whole or in part.

A run holds one `SecretMasker` (tasks/core/run.py), safe to use from all its
threads. On GitHub Actions each value is also announced to the runner
(`::add-mask::`), which then masks it in what the pipeline does not print
itself too; announcing prints the value, so it is done nowhere else.
"""

from __future__ import annotations

import os
import re
import sys
import threading

MASK = "********"
# Shorter values ("true", "1", "prod") would mask ordinary words everywhere.
_MIN_SECRET_LENGTH = 6
# Tools quote secrets in part: PyYAML's error shows a shortened line
# ("... 0123456789abcdef0123: x"), a truncated repr ends in "...". Any run of
# this many characters of a long secret is masked wherever it appears; shorter
# runs would hit ordinary words.
FRAGMENT_LENGTH = 12
_FRAGMENT_SOURCE = re.compile(rf"\S{{{FRAGMENT_LENGTH},}}")


class SecretMasker:
    """Remembers secret values and blanks them, whole or in part, out of any text."""

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        # Every FRAGMENT_LENGTH-character window of every long, unbroken run of a secret.
        self._windows: frozenset[str] = frozenset()
        # Writers take the lock and replace the sets whole; readers take a snapshot.
        self._lock = threading.Lock()

    def register(self, value: object) -> None:
        """Mask `value` (and each of its lines) in everything printed from now on."""
        if not isinstance(value, str):
            return
        values = set()
        for candidate in {value, value.strip(), *value.splitlines()}:
            candidate = candidate.strip()
            if len(candidate) >= _MIN_SECRET_LENGTH:
                values.add(candidate)
        windows = {
            run[i : i + FRAGMENT_LENGTH]
            for run in _FRAGMENT_SOURCE.findall(value)
            for i in range(len(run) - FRAGMENT_LENGTH + 1)
        }
        with self._lock:
            new = values - self._values
            if not (new or windows - self._windows):
                return
            self._values = self._values | values
            self._windows = self._windows | windows
            if new and os.environ.get("GITHUB_ACTIONS") == "true":
                _announce(new)

    def register_tree(self, tree: object) -> None:
        """Mask every string leaf of a parsed YAML/JSON document."""
        if isinstance(tree, dict):
            for value in tree.values():
                self.register_tree(value)
        elif isinstance(tree, list):
            for value in tree:
                self.register_tree(value)
        elif tree is not None and not isinstance(tree, bool):
            # YAML reads an all-digit token or a date as a number or a date; helm and
            # the commands it feeds print it as text all the same.
            self.register(tree if isinstance(tree, str) else str(tree))

    def mask(self, text: str) -> str:
        values, windows = self._values, self._windows
        # Longest first, so a secret containing another is masked whole.
        for value in sorted(values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return _mask_fragments(text, windows)


def _announce(values: set[str]) -> None:
    """Ask GitHub's runner to mask `values` in the job's log, one line of a value at a time
    (it matches line by line), before anything that could show them is printed."""
    # Lines too short to mask safely ("}", "-----") would hide ordinary text in the log.
    lines = {line.strip() for value in values for line in value.splitlines()}
    shown = sorted(line for line in lines if len(line) >= _MIN_SECRET_LENGTH)
    sys.stdout.write("".join(f"::add-mask::{escape_data(line)}\n" for line in shown))
    sys.stdout.flush()


def escape_data(text: str) -> str:
    """A workflow command's message, as the runner reads it back (it unescapes these)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: ':' and ',' delimit the properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _mask_fragments(text: str, windows: frozenset[str]) -> str:
    """Blank out every stretch of `text` made of windows of a secret."""
    if not windows:
        return text
    spans: list[list[int]] = []
    for start in range(len(text) - FRAGMENT_LENGTH + 1):
        if text[start : start + FRAGMENT_LENGTH] in windows:
            end = start + FRAGMENT_LENGTH
            if spans and start <= spans[-1][1]:
                spans[-1][1] = end
            else:
                spans.append([start, end])
    for start, end in reversed(spans):
        text = text[:start] + MASK + text[end:]
    return text
