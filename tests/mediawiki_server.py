"""A real HTTP server on 127.0.0.1 that answers like the MediaWiki Action API, and misbehaves
on request, so the wiki clients' tests exercise real sockets, headers and JSON.

It serves two sites from a small in-test corpus: ``/wikipedia/w/api.php`` (``list=search``,
``prop=extracts|pageprops`` with ``normalized``/``redirects``, ``formatversion=2`` shapes) and
``/wikidata/w/api.php`` (``wbsearchentities``, ``wbgetentities`` with its 50-id limit).
A ``Fault`` spoils the next matching requests: an HTTP status (429 with ``Retry-After``, 500,
404), malformed JSON, an API error object, a sleep before answering, a body trickled byte
by byte, or a connection closed without an answer.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_IDS = 50


@dataclass(frozen=True)
class Page:
    title: str
    extract: str
    qid: str | None = None


@dataclass(frozen=True)
class Item:
    qid: str
    label: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    enwiki: str | None = None


@dataclass
class Fault:
    """``kind``: ``status``, ``malformed``, ``api-error``, ``sleep``, ``trickle`` or ``close``;
    it spoils ``times`` matching requests (``-1``: all), those of ``action`` when given."""

    kind: str
    times: int = 1
    action: str | None = None
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    code: str = "maxlag"


@dataclass(frozen=True)
class Seen:
    """A request as the server received it."""

    site: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class Corpus:
    pages: list[Page] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    item_redirects: dict[str, str] = field(default_factory=dict)


class MediaWikiServer:
    """``with MediaWikiServer(corpus) as server:`` then point the clients at ``server.api(site)``."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> MediaWikiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def api(self, site: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{site}/w/api.php"

    def fail(self, kind: str, **options: Any) -> Fault:
        fault = Fault(kind, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def count(self, action: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if action is None or s.params.get("action") == action)

    def _take_fault(self, params: Mapping[str, str]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times != 0 and fault.action in (None, params.get("action")):
                    fault.times -= 1 if fault.times > 0 else 0
                    return fault
        return None

    def answer(self, site: str, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        action = params.get("action")
        if site == "wikipedia" and action == "query" and params.get("list") == "search":
            return 200, self._search(params)
        if site == "wikipedia" and action == "query" and "extracts" in params.get("prop", "").split("|"):
            return 200, self._extracts(params)
        if site == "wikidata" and action == "wbsearchentities":
            return 200, self._wbsearch(params)
        if site == "wikidata" and action == "wbgetentities":
            return 200, self._wbget(params)
        return 200, _api_error("badvalue", f'Unrecognized value for parameter "action": {action}.')

    def _search(self, params: Mapping[str, str]) -> dict[str, Any]:
        words = params["srsearch"].lower().split()
        scored = []
        for pageid, page in enumerate(self.corpus.pages, start=1):
            text = f"{page.title} {page.extract}".lower()
            hits = sum(text.count(w) for w in words)
            if hits:
                scored.append((-hits, pageid, page))
        scored.sort(key=lambda s: s[:2])
        limit = int(params.get("srlimit", "10"))
        return {
            "batchcomplete": True,
            "query": {
                "searchinfo": {"totalhits": len(scored)},
                "search": [
                    {
                        "ns": 0,
                        "title": page.title,
                        "pageid": pageid,
                        "size": len(page.extract),
                        "wordcount": len(page.extract.split()),
                        "snippet": page.extract[:60],
                        "timestamp": "2024-01-01T00:00:00Z",
                    }
                    for _, pageid, page in scored[:limit]
                ],
            },
        }

    def _extracts(self, params: Mapping[str, str]) -> dict[str, Any]:
        by_title = {p.title: (i, p) for i, p in enumerate(self.corpus.pages, start=1)}
        normalized, redirects, pages = [], [], []
        for asked in params["titles"].split("|"):
            title = asked.replace("_", " ").strip()
            title = title[:1].upper() + title[1:]
            if title != asked:
                normalized.append({"fromencoded": False, "from": asked, "to": title})
            if params.get("redirects") and title in self.corpus.redirects:
                redirects.append({"from": title, "to": self.corpus.redirects[title]})
                title = self.corpus.redirects[title]
            if title not in by_title:
                pages.append({"ns": 0, "title": title, "missing": True})
                continue
            pageid, page = by_title[title]
            record: dict[str, Any] = {"pageid": pageid, "ns": 0, "title": page.title, "extract": page.extract}
            if "pageprops" in params["prop"].split("|") and page.qid:
                record["pageprops"] = {"wikibase_item": page.qid}
            pages.append(record)
        query: dict[str, Any] = {"pages": pages}
        if normalized:
            query["normalized"] = normalized
        if redirects:
            query["redirects"] = redirects
        return {"batchcomplete": True, "query": query}

    def _wbsearch(self, params: Mapping[str, str]) -> dict[str, Any]:
        asked = params["search"].casefold()
        found = []
        for item in self.corpus.items:
            names = [(item.label, "label")] + [(a, "alias") for a in item.aliases]
            match = next(((n, kind) for n, kind in names if n.casefold().startswith(asked)), None)
            if match is None:
                continue
            language = params.get("language", "en")
            hit: dict[str, Any] = {
                "id": item.qid,
                "title": item.qid,
                "pageid": int(item.qid[1:]),
                "concepturi": f"http://www.wikidata.org/entity/{item.qid}",
                "repository": "wikidata",
                "url": f"//www.wikidata.org/wiki/{item.qid}",
                "display": {
                    "label": {"value": item.label, "language": language},
                    "description": {"value": item.description, "language": language},
                },
                "label": item.label,
                "description": item.description,
                "match": {"type": match[1], "language": language, "text": match[0]},
            }
            if match[1] == "alias":
                hit["aliases"] = [match[0]]
            found.append(hit)
        limit = int(params.get("limit", "7"))
        return {"searchinfo": {"search": params["search"]}, "search": found[:limit], "success": 1}

    def _wbget(self, params: Mapping[str, str]) -> dict[str, Any]:
        ids = params["ids"].split("|")
        if len(ids) > MAX_IDS:
            return _api_error(
                "toomanyvalues", f'Too many values supplied for parameter "ids". The limit is {MAX_IDS}.'
            )
        items = {i.qid: i for i in self.corpus.items}
        language = params.get("languages", "en")
        entities: dict[str, Any] = {}
        for asked in ids:
            target = self.corpus.item_redirects.get(asked, asked)
            item = items.get(target)
            if item is None:
                entities[asked] = {"id": asked, "missing": ""}
                continue
            entity: dict[str, Any] = {
                "type": "item",
                "id": item.qid,
                "labels": {language: {"language": language, "value": item.label}},
                "descriptions": {language: {"language": language, "value": item.description}}
                if item.description
                else {},
                "aliases": {language: [{"language": language, "value": a} for a in item.aliases]}
                if item.aliases
                else {},
                "sitelinks": {"enwiki": {"site": "enwiki", "title": item.enwiki, "badges": []}}
                if item.enwiki
                else {},
            }
            if target != asked:
                entity["redirects"] = {"from": asked, "to": target}
            entities[asked] = entity
        return {"entities": entities, "success": 1}


def _api_error(code: str, info: str) -> dict[str, Any]:
    return {"error": {"code": code, "info": info, "*": "See the API help for usage."}, "servedby": "local"}


def _handler(server: MediaWikiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests assert on ``server.seen`` instead."""

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            site = url.path.strip("/").split("/")[0]
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            with server._lock:
                server.seen.append(Seen(site, params, dict(self.headers.items())))
            if url.path != f"/{site}/w/api.php" or site not in ("wikipedia", "wikidata"):
                self._send(404, b"not an API path", "text/plain")
                return
            fault = server._take_fault(params)
            if fault is None:
                status, payload = server.answer(site, params)
                self._send(status, json.dumps(payload).encode())
            else:
                self._misbehave(fault, site, params)

        def _misbehave(self, fault: Fault, site: str, params: Mapping[str, str]) -> None:
            if fault.kind == "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                self._send(fault.status, b'{"error": "spoilt on purpose"}', headers=headers)
            elif fault.kind == "malformed":
                self._send(200, b'{"batchcomplete": true, "query": {"search": [')
            elif fault.kind == "api-error":
                headers = {"MediaWiki-API-Error": fault.code}
                if fault.retry_after:
                    headers["Retry-After"] = fault.retry_after
                body = json.dumps(_api_error(fault.code, "spoilt on purpose")).encode()
                self._send(200, body, headers=headers)
            elif fault.kind == "sleep":
                server._stopping.wait(fault.seconds)
                status, payload = server.answer(site, params)
                self._send(status, json.dumps(payload).encode())
            elif fault.kind == "trickle":
                self._trickle(json.dumps(server.answer(site, params)[1]).encode(), fault.seconds)
            elif fault.kind == "close":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                raise ValueError(f"unknown fault kind {fault.kind!r}")

        def _trickle(self, body: bytes, pause: float) -> None:
            """Headers at once, then one byte per ``pause``: every read is quick, the whole is slow."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for index in range(len(body)):
                    if server._stopping.is_set():
                        return
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    server._stopping.wait(pause)
            except OSError:
                self.close_connection = True

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str = "application/json; charset=utf-8",
            headers: Mapping[str, str] | None = None,
        ) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

    return Handler
