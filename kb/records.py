"""The two record types every other part of the toolkit exchanges: a mention and an entity.

A dataset loader turns its own file format into these; scorers, attacks, the agent and
evaluation read nothing else. Both are frozen so a record can be shared between threads,
cached and hashed without defensive copies.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NIL = "NIL"
"""Gold label of a mention whose entity is not in the knowledge base."""

QID_PATTERN = re.compile(r"^Q[1-9][0-9]*$")
"""A Wikidata item id: Q followed by a positive number without leading zeros."""


@dataclass(frozen=True)
class Mention:
    """One mention to link: a string in a caption, optionally with the caption's image.

    ``span`` is a (start, end) character offset into ``sentence`` when the dataset gives one
    or the mention string occurs in the sentence; ``bbox`` is an (x1, y1, x2, y2) pixel box
    of the mention inside the image (WIKIPerson) so the image can be cropped to it.
    ``candidates`` holds the dataset's own candidate QIDs where it ships them (M3EL,
    the official WikiDiverse release); otherwise it is empty and ``kb.candidates`` builds them.
    """

    id: str
    sentence: str
    mention: str
    gold: str
    split: str
    language: str = "en"
    image_path: Path | None = None
    span: tuple[int, int] | None = None
    bbox: tuple[float, float, float, float] | None = None
    caption_id: str | None = None
    candidates: tuple[str, ...] = ()

    @property
    def is_nil(self) -> bool:
        return self.gold == NIL

    @property
    def has_image(self) -> bool:
        """True when the mention names an image and that file is on disk (downloads are often partial)."""
        return self.image_path is not None and self.image_path.is_file()

    def image_skip_reason(self) -> str | None:
        """Why an image task cannot score this mention (``no_image``, ``image_missing``), or None."""
        if self.image_path is None:
            return "no_image"
        return None if self.image_path.is_file() else "image_missing"

    def context_text(self) -> str:
        """The text a scorer reads for this mention: "<mention>. <caption>".

        The caption is paper 000's "entity description"; naming the mention first says which
        of a caption's several mentions is meant.
        """
        if not self.mention:
            return self.sentence.strip()
        return f"{self.mention}. {self.sentence}".strip(". ").strip()

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["image_path"] = str(self.image_path) if self.image_path else None
        return record


@dataclass(frozen=True)
class Entity:
    """A knowledge-base entry: a Wikidata QID with its label, aliases, text and images."""

    qid: str
    label: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    image_paths: tuple[Path, ...] = field(default_factory=tuple)

    def text(self) -> str:
        """The text a store or a text encoder sees: label, then description."""
        return f"{self.label}. {self.description}".strip() if self.description else self.label

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["image_paths"] = [str(p) for p in self.image_paths]
        return record


def find_span(sentence: str, mention: str) -> tuple[int, int] | None:
    """First character span of ``mention`` in ``sentence`` (exact, then case-insensitive)."""
    start = sentence.find(mention)
    if start < 0:
        start = sentence.lower().find(mention.lower())
    if start < 0 or not mention:
        return None
    return (start, start + len(mention))
