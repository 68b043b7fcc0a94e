"""The append-only per-item JSONL log that makes every long command resumable.

A killed run leaves complete lines plus at most one cut line; reopening keeps the complete
ones (``files.read_jsonl``), rewrites the file without the cut tail, and appends from there.
The process that owns the log is its only writer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from kb.runcore.files import dumps, read_jsonl

CLEAN = "clean"
"""The condition of an item scored on its own image (the others are attack presets)."""


def seed_and_id(record: dict[str, Any]) -> tuple[int, str]:
    """Resume key of an attack-manifest line."""
    return (record["seed"], record["id"])


def condition_seed_id(record: dict[str, Any]) -> tuple[str, int, str]:
    """Resume key of an ``items.jsonl`` line: (condition, seed, id); old lines are clean."""
    return (record.get("condition", CLEAN), record["seed"], record["id"])


class ItemLog:
    """Reads what a killed run finished, then appends and flushes one strict-JSON line per item.

    ``key`` names a line for resuming; a later line with the same key replaces an earlier one.
    """

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], Hashable] = seed_and_id) -> None:
        self.path = path
        self.key = key
        self.done: dict[Hashable, dict[str, Any]] = {}
        if path.is_file():
            for record in read_jsonl(path):
                try:
                    self.done[key(record)] = record
                except (KeyError, TypeError):
                    break  # a line without its key fields is treated like a cut one
            self._rewrite_complete_lines()
        self.handle = path.open("a", encoding="utf-8")

    def _rewrite_complete_lines(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            for record in self.done.values():
                handle.write(dumps(record) + "\n")
        os.replace(temporary, self.path)

    def append(self, record: dict[str, Any]) -> None:
        self.handle.write(dumps(record) + "\n")
        self.handle.flush()
        self.done[self.key(record)] = record

    def close(self) -> None:
        self.handle.close()
