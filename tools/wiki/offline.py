"""``WikiClient`` answered from the ``OfflineReplica``: the same calls, no network.

Every answer carries ``origin="offline"``. ``language`` is accepted for parity with the live
API; the replica holds one label per item, in its dataset's language.
"""

from __future__ import annotations

from collections.abc import Sequence

from tools.wiki.evidence import Evidence, entity_text
from tools.wiki.replica import Article, Item, OfflineReplica
from tools.wiki.settings import WikiSettings
from tools.wiki.stats import WikiStats


class OfflineWikiClient:
    mode = "offline"

    def __init__(
        self, replica: OfflineReplica, settings: WikiSettings, stats: WikiStats | None = None
    ) -> None:
        self.replica = replica
        self.settings = settings
        self.stats = stats or WikiStats()

    def close(self) -> None:
        """Nothing to release; here so every client can be closed alike."""

    def wikipedia_search(self, query: str, limit: int = 3) -> list[Evidence]:
        self.stats.add(offline=1)
        return [self._article(a, query) for a in self.replica.search_articles(query, limit)]

    def wikipedia_pages(self, titles: Sequence[str]) -> dict[str, Evidence]:
        self.stats.add(offline=1)
        found = {t: self.replica.article(t) for t in titles}
        return {t: self._article(a, t) for t, a in found.items() if a is not None}

    def wikidata_search(self, query: str, limit: int = 5, language: str = "en") -> list[Evidence]:
        self.stats.add(offline=1)
        return [self._item(i, query) for i in self.replica.search_items(query, limit)]

    def wikidata_entities(self, qids: Sequence[str], language: str = "en") -> dict[str, Evidence]:
        self.stats.add(offline=1)
        found = {q: self.replica.item(q) for q in qids}
        return {q: self._item(i, q) for q, i in found.items() if i is not None}

    def _article(self, article: Article, query: str) -> Evidence:
        return Evidence(
            source="wikipedia",
            title=article.title,
            text=article.extract,
            qid=article.qid,
            url=self.settings.wikipedia_url(article.title),
            query=query,
            origin="offline",
            enwiki_title=article.title,
        )

    def _item(self, item: Item, query: str) -> Evidence:
        return Evidence(
            source="wikidata",
            title=item.label,
            text=entity_text(item.description, item.aliases),
            qid=item.qid,
            url=self.settings.wikidata_url(item.qid),
            query=query,
            origin="offline",
            enwiki_title=item.enwiki_title,
        )
