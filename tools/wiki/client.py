"""The one interface the agent codes against (``WikiClient``) and the factory that picks it.

``make_wiki_client`` reads ``settings.mode``: ``offline`` answers from the replica (built from
kb-local alone when none is given); ``online`` talks to the live APIs, and when a replica is
given, falls back to it whenever a call gives up (``FallbackWikiClient``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tools.wiki.evidence import Evidence
from tools.wiki.fallback import FallbackWikiClient
from tools.wiki.offline import OfflineWikiClient
from tools.wiki.online import OnlineWikiClient
from tools.wiki.replica import OfflineReplica
from tools.wiki.settings import WikiSettings
from tools.wiki.stats import WikiStats


class WikiClient(Protocol):
    """Wikipedia and Wikidata lookups, live or offline; failures raise ``WikiError``."""

    mode: str
    stats: WikiStats

    def wikipedia_search(self, query: str, limit: int = 3) -> list[Evidence]: ...

    def wikipedia_pages(self, titles: Sequence[str]) -> dict[str, Evidence]: ...

    def wikidata_search(self, query: str, limit: int = 5, language: str = "en") -> list[Evidence]: ...

    def wikidata_entities(self, qids: Sequence[str], language: str = "en") -> dict[str, Evidence]: ...

    def close(self) -> None: ...


def make_wiki_client(settings: WikiSettings, replica: OfflineReplica | None = None) -> WikiClient:
    if settings.mode == "offline":
        return OfflineWikiClient(replica or OfflineReplica.build({}), settings)
    online = OnlineWikiClient(settings)
    if replica is None:
        return online
    return FallbackWikiClient(online, OfflineWikiClient(replica, settings, stats=online.stats))
