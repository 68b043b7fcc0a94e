"""Errors a user can act on: a missing dataset file, a malformed record, an unusable image.

Whole-dataset problems (a required file is missing or is not the JSON we expect) raise.
Problems with one item never raise out of a run: loaders and readers turn them into an
``ItemError`` that is recorded next to the results and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


class DatasetError(Exception):
    """A dataset cannot be loaded at all; the message names the file and what was expected."""


class DatasetFileMissing(DatasetError, FileNotFoundError):
    def __init__(self, path: Path, dataset: str, published_at: str) -> None:
        super().__init__(
            f"{dataset}: expected file {path} is missing. The dataset is published at "
            f"{published_at}; point --data-dir (or the MEL_{env_key(dataset)}_DIR environment "
            "variable) at a folder that holds it."
        )
        self.path = path


class ImageError(Exception):
    """One image cannot be used; ``reason`` is a short machine-readable tag."""

    def __init__(self, path: Path | str, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}{': ' + detail if detail else ''}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ItemError:
    """A per-item problem recorded instead of crashing: which item, which field, what was wrong."""

    item: str
    field: str
    reason: str
    source: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def env_key(dataset: str) -> str:
    """Environment-variable stem for a dataset name: 'richpedia-mel' -> 'RICHPEDIA_MEL'."""
    return "".join(ch if ch.isalnum() else "_" for ch in dataset.upper())
