"""The live clients: MediaWiki search + TextExtracts on Wikipedia, Wikibase on Wikidata.

Parameters are the public APIs' own (``formatversion=2`` where MediaWiki has it, so pages
come as a list and booleans as ``true``); every answer goes through ``ApiTransport``
(cache, retries, budget). Titles are sent 20 per request (TextExtracts returns at most 20
intro extracts per request) and QIDs 50 per request (Wikibase's limit for anonymous users).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from kb.loaders.common import QID_PATTERN
from tools.wiki.cache import ResponseCache
from tools.wiki.evidence import Evidence, entity_text
from tools.wiki.settings import WikiSettings
from tools.wiki.stats import WikiStats
from tools.wiki.transport import ApiTransport

EXTRACTS_PER_REQUEST = 20
ENTITIES_PER_REQUEST = 50
SEARCH_LIMIT_MAX = 50
_REDIRECT_HOPS = 5


class OnlineWikiClient:
    """``WikiClient`` over the live (or any MediaWiki-compatible) APIs of ``settings``."""

    mode = "online"

    def __init__(self, settings: WikiSettings, stats: WikiStats | None = None) -> None:
        self.settings = settings
        self.stats = stats or WikiStats()
        self._transport = ApiTransport(settings, self.stats, ResponseCache(settings.response_cache_dir()))

    def close(self) -> None:
        self._transport.close()

    def wikipedia_search(self, query: str, limit: int = 3) -> list[Evidence]:
        """Full-text search (``list=search``), then the hits' intro extracts, in search order."""
        if not query.strip():
            return []
        params = {
            "action": "query",
            "list": "search",
            "srsearch": query,
            "srlimit": str(_clamp(limit)),
            "format": "json",
            "formatversion": "2",
        }
        payload, origin = self._transport.get_json(self.settings.wikipedia_api, params, query, _is_search)
        hits = payload["query"]["search"]
        titles = [h["title"] for h in hits if isinstance(h, dict) and isinstance(h.get("title"), str)]
        pages, pages_origin = self._pages(titles)
        origin = "cache" if origin == pages_origin == "cache" else "live"
        return [replace(pages[t], query=query, origin=origin) for t in titles if t in pages]

    def wikipedia_pages(self, titles: Sequence[str]) -> dict[str, Evidence]:
        """Intro extracts by exact title (normalised and redirected as MediaWiki does); the
        result is keyed by the titles as given, and a missing page is absent."""
        return self._pages(titles)[0]

    def wikidata_search(self, query: str, limit: int = 5, language: str = "en") -> list[Evidence]:
        """``wbsearchentities``: items whose label or alias matches ``query`` (prefix search)."""
        if not query.strip():
            return []
        params = {
            "action": "wbsearchentities",
            "search": query,
            "language": language,
            "uselang": language,
            "type": "item",
            "limit": str(_clamp(limit)),
            "format": "json",
        }
        payload, origin = self._transport.get_json(self.settings.wikidata_api, params, query, _is_wbsearch)
        found = []
        for hit in payload["search"]:
            if not isinstance(hit, dict) or not isinstance(hit.get("id"), str):
                continue
            qid = hit["id"]
            aliases = [a for a in hit.get("aliases") or () if isinstance(a, str)]
            found.append(
                Evidence(
                    source="wikidata",
                    title=str(hit.get("label") or qid),
                    text=entity_text(str(hit.get("description") or ""), aliases),
                    qid=qid,
                    url=self.settings.wikidata_url(qid),
                    query=query,
                    origin=origin,
                )
            )
        return found

    def wikidata_entities(self, qids: Sequence[str], language: str = "en") -> dict[str, Evidence]:
        """``wbgetentities``: label, description, aliases and the ``enwiki`` sitelink (as
        ``Evidence.enwiki_title``) by QID; strings that are not QIDs and missing items are absent."""
        wanted = _unique(q for q in qids if QID_PATTERN.match(q))
        found: dict[str, Evidence] = {}
        for batch in _batches(wanted, ENTITIES_PER_REQUEST):
            params = {
                "action": "wbgetentities",
                "ids": "|".join(batch),
                "props": "labels|descriptions|aliases|sitelinks",
                "languages": language,
                "sitefilter": "enwiki",
                "format": "json",
            }
            payload, origin = self._transport.get_json(
                self.settings.wikidata_api, params, "|".join(batch), _is_entities
            )
            for key, entity in payload["entities"].items():
                if not isinstance(entity, dict) or "missing" in entity:
                    continue
                redirect = entity.get("redirects")
                requested = redirect.get("from", key) if isinstance(redirect, dict) else key
                if requested in batch:
                    found[requested] = self._item(entity, key, requested, language, origin)
        return found

    def _item(self, entity: dict[str, Any], key: str, requested: str, language: str, origin: str) -> Evidence:
        qid = str(entity.get("id") or key)
        label = _value(entity.get("labels"), language) or qid
        aliases = [
            a["value"]
            for a in (entity.get("aliases") or {}).get(language) or ()
            if isinstance(a, dict) and isinstance(a.get("value"), str)
        ]
        sitelink = (entity.get("sitelinks") or {}).get("enwiki")
        return Evidence(
            source="wikidata",
            title=label,
            text=entity_text(_value(entity.get("descriptions"), language), aliases),
            qid=qid,
            url=self.settings.wikidata_url(qid),
            query=requested,
            origin=origin,
            enwiki_title=sitelink.get("title") if isinstance(sitelink, dict) else None,
        )

    def _pages(self, titles: Sequence[str]) -> tuple[dict[str, Evidence], str]:
        """Pages by requested title, and ``cache`` when every answer came from the cache."""
        wanted = _unique(t for t in titles if t.strip() and "|" not in t)
        found: dict[str, Evidence] = {}
        origins = set()
        for batch in _batches(wanted, EXTRACTS_PER_REQUEST):
            params = {
                "action": "query",
                "prop": "extracts|pageprops",
                "exintro": "1",
                "explaintext": "1",
                "exlimit": str(EXTRACTS_PER_REQUEST),
                "ppprop": "wikibase_item",
                "titles": "|".join(batch),
                "redirects": "1",
                "format": "json",
                "formatversion": "2",
            }
            payload, origin = self._transport.get_json(
                self.settings.wikipedia_api, params, "|".join(batch), _is_pages
            )
            origins.add(origin)
            answer = payload["query"]
            renamed = _mapping(answer.get("normalized"))
            redirected = _mapping(answer.get("redirects"))
            pages = {
                p["title"]: p
                for p in answer["pages"]
                if isinstance(p, dict)
                and isinstance(p.get("title"), str)
                and not p.get("missing")
                and not p.get("invalid")
            }
            for requested in batch:
                title = renamed.get(requested, requested)
                for _ in range(_REDIRECT_HOPS):
                    title = redirected.get(title, title)
                if title in pages:
                    found[requested] = self._page(pages[title], requested, origin)
        return found, "cache" if origins == {"cache"} else "live"

    def _page(self, page: dict[str, Any], requested: str, origin: str) -> Evidence:
        props = page.get("pageprops") if isinstance(page.get("pageprops"), dict) else {}
        qid = props.get("wikibase_item")
        return Evidence(
            source="wikipedia",
            title=page["title"],
            text=str(page.get("extract") or ""),
            qid=qid if isinstance(qid, str) else None,
            url=self.settings.wikipedia_url(page["title"]),
            query=requested,
            origin=origin,
            enwiki_title=page["title"],
        )


def _is_search(payload: dict[str, Any]) -> bool:
    answer = payload.get("query")
    return isinstance(answer, dict) and isinstance(answer.get("search"), list)


def _is_pages(payload: dict[str, Any]) -> bool:
    answer = payload.get("query")
    return isinstance(answer, dict) and isinstance(answer.get("pages"), list)


def _is_wbsearch(payload: dict[str, Any]) -> bool:
    return isinstance(payload.get("search"), list)


def _is_entities(payload: dict[str, Any]) -> bool:
    return isinstance(payload.get("entities"), dict)


def _mapping(pairs: Any) -> dict[str, str]:
    """``[{"from": a, "to": b}, ...]`` (MediaWiki's ``normalized`` / ``redirects``) as a dict."""
    if not isinstance(pairs, list):
        return {}
    return {p["from"]: p["to"] for p in pairs if isinstance(p, dict) and "from" in p and "to" in p}


def _value(by_language: Any, language: str) -> str:
    entry = by_language.get(language) if isinstance(by_language, dict) else None
    return str(entry.get("value") or "") if isinstance(entry, dict) else ""


def _clamp(limit: int) -> int:
    return max(1, min(int(limit), SEARCH_LIMIT_MAX))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
