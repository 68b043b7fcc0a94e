"""What every wiki lookup returns (``Evidence``) and what a lookup raises when it gives up.

Online, cached and offline answers share one record so the agent can quote, store and trace
them alike; ``origin`` says where an answer came from, so a run can report how much of its
evidence was live and how much came from the disk cache or the offline replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SOURCES = ("wikipedia", "wikidata")
ORIGINS = ("live", "cache", "offline")


@dataclass(frozen=True)
class Evidence:
    """One Wikipedia page extract or one Wikidata item.

    ``title`` is the page title (Wikipedia) or the item's label (Wikidata); ``text`` the intro
    extract, or the item's description followed by an "Also known as:" line of aliases.
    ``enwiki_title`` is the English Wikipedia page the evidence is about, when known: the
    page itself for Wikipedia evidence, the ``enwiki`` sitelink for a Wikidata item (so the
    agent can follow an item to its article with ``wikipedia_pages``).
    """

    source: str
    title: str
    text: str
    qid: str | None
    url: str | None
    query: str
    origin: str
    enwiki_title: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES or self.origin not in ORIGINS:
            raise ValueError(f"evidence source must be one of {SOURCES} and origin one of {ORIGINS}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class WikiError(RuntimeError):
    """A lookup failed for good: a fatal answer, or the retry budget is spent.

    The message names the endpoint, the query and the last cause; the fields carry the same
    for a trace.
    """

    def __init__(self, endpoint: str, query: str, cause: str, attempts: int, elapsed_s: float) -> None:
        super().__init__(
            f"{endpoint} for {query!r} failed after {attempts} attempt(s) in {elapsed_s:.2f} s: {cause}"
        )
        self.endpoint = endpoint
        self.query = query
        self.cause = cause
        self.attempts = attempts
        self.elapsed_s = elapsed_s


def entity_text(description: str, aliases: Sequence[str]) -> str:
    """A Wikidata item's evidence text: its description, then its aliases on their own line."""
    lines = [description] if description else []
    if aliases:
        lines.append("Also known as: " + ", ".join(aliases))
    return "\n".join(lines)
