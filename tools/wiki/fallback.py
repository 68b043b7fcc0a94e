"""Online first, offline when the network gives up: the agent keeps its evidence flowing.

Every call goes to the live client (which already prefers its disk cache); a ``WikiError``
is counted in ``stats`` (``failures``, ``fallbacks``, ``last_error``) and the same call is
answered by the offline replica, whose evidence says ``origin="offline"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from tools.wiki.evidence import Evidence, WikiError
from tools.wiki.offline import OfflineWikiClient
from tools.wiki.online import OnlineWikiClient

T = TypeVar("T")


class FallbackWikiClient:
    mode = "online"

    def __init__(self, online: OnlineWikiClient, offline: OfflineWikiClient) -> None:
        self.online = online
        self.offline = offline
        self.stats = online.stats

    def close(self) -> None:
        self.online.close()

    def wikipedia_search(self, query: str, limit: int = 3) -> list[Evidence]:
        return self._either(lambda c: c.wikipedia_search(query, limit))

    def wikipedia_pages(self, titles: Sequence[str]) -> dict[str, Evidence]:
        return self._either(lambda c: c.wikipedia_pages(titles))

    def wikidata_search(self, query: str, limit: int = 5, language: str = "en") -> list[Evidence]:
        return self._either(lambda c: c.wikidata_search(query, limit, language))

    def wikidata_entities(self, qids: Sequence[str], language: str = "en") -> dict[str, Evidence]:
        return self._either(lambda c: c.wikidata_entities(qids, language))

    def _either(self, call: Callable[[OnlineWikiClient | OfflineWikiClient], T]) -> T:
        try:
            return call(self.online)
        except WikiError:
            self.stats.add(fallbacks=1)
            return call(self.offline)
