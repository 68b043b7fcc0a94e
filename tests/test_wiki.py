"""The wiki tools: real HTTP clients against a real local MediaWiki-shaped server (answers,
cache, User-Agent, and every fault issue 7 names, with timing), and the offline replica on
the real WikiMEL KB and kb-local Vital Articles from ../shared."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mediawiki_server import Corpus, Item, MediaWikiServer, Page
from support import closed_port

from kb.dataset import load_dataset
from kb.errors import DatasetFileMissing
from tools.wiki import (
    FallbackWikiClient,
    OfflineReplica,
    OnlineWikiClient,
    WikiError,
    WikiSettings,
    make_wiki_client,
)
from tools.wiki.__main__ import main as wiki_cli
from tools.wiki.cache import ResponseCache
from tools.wiki.replica import Article
from tools.wiki.replica import Item as ReplicaItem

EINSTEIN = (
    "Albert Einstein was a German-born theoretical physicist who is best known for developing "
    "the theory of relativity."
)
CORPUS = Corpus(
    pages=[
        Page("Albert Einstein", EINSTEIN, "Q937"),
        Page(
            "Marie Curie", "Marie Curie was a Polish and naturalised-French physicist and chemist.", "Q7186"
        ),
        Page("Paris", "Paris is the capital and largest city of France.", "Q90"),
        Page("Paris Hilton", "Paris Whitney Hilton is an American media personality.", "Q47899"),
        *(Page(f"Filler {n}", f"Filler page number {n}.") for n in range(25)),
    ],
    redirects={"Einstein": "Albert Einstein"},
    items=[
        Item(
            "Q937",
            "Albert Einstein",
            "German-born theoretical physicist (1879–1955)",
            ("Einstein",),
            "Albert Einstein",
        ),
        Item("Q7186", "Marie Curie", "Polish-French physicist and chemist (1867–1934)", (), "Marie Curie"),
        Item("Q90", "Paris", "capital city of France", ("City of Light",), "Paris"),
        Item("Q47899", "Paris Hilton", "American media personality", (), "Paris Hilton"),
    ],
    item_redirects={"Q1000000001": "Q937"},
)
TIMING_SLACK_S = 0.25
"""Scheduling headroom on a loaded 2-core machine; the bounds under test are 0.3-1 s."""


@pytest.fixture
def server() -> Iterator[MediaWikiServer]:
    with MediaWikiServer(CORPUS) as running:
        yield running


def settings_for(server: MediaWikiServer, cache: Path, **overrides) -> WikiSettings:
    base = dict(
        mode="online",
        wikipedia_api=server.api("wikipedia"),
        wikidata_api=server.api("wikidata"),
        timeout_s=1.0,
        retries=2,
        backoff_s=0.05,
        budget_s=3.0,
        user_agent="melrobust-tests/0.1 (local test server; multimodal entity linking research)",
        cache_dir=cache,
    )
    return WikiSettings(**{**base, **overrides})


@pytest.fixture
def connect(server: MediaWikiServer, tmp_path: Path) -> Iterator:
    """``connect(**settings)`` -> a live client on the local server, closed after the test."""
    clients: list[OnlineWikiClient] = []

    def make(**overrides) -> OnlineWikiClient:
        clients.append(OnlineWikiClient(settings_for(server, tmp_path / "cache", **overrides)))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def test_wikipedia_search_live_then_from_cache(server: MediaWikiServer, connect) -> None:
    client = connect()
    found = client.wikipedia_search("theoretical physicist", limit=2)
    top = found[0]
    assert (top.source, top.title, top.qid, top.origin, top.query) == (
        "wikipedia",
        "Albert Einstein",
        "Q937",
        "live",
        "theoretical physicist",
    )
    assert top.text == EINSTEIN and top.url.endswith("/wikipedia/wiki/Albert_Einstein")
    assert top.enwiki_title == "Albert Einstein"
    search, extracts = server.seen
    assert search.params | {"srsearch": "theoretical physicist"} == {
        "action": "query",
        "list": "search",
        "srsearch": "theoretical physicist",
        "srlimit": "2",
        "format": "json",
        "formatversion": "2",
    }
    assert {"exintro": "1", "explaintext": "1", "redirects": "1", "formatversion": "2"}.items() <= (
        extracts.params.items()
    )
    requests = server.count()
    again = client.wikipedia_search("theoretical physicist", limit=2)
    assert server.count() == requests
    assert [e.origin for e in again] == ["cache"] * len(found)
    assert [(e.title, e.text) for e in again] == [(e.title, e.text) for e in found]
    assert client.stats.cache_hits == 2 and client.stats.requests == 2


def test_wikipedia_pages_normalise_redirect_and_batch(server: MediaWikiServer, connect) -> None:
    client = connect()
    pages = client.wikipedia_pages(["einstein", "Marie_Curie", "No such page"])
    assert set(pages) == {"einstein", "Marie_Curie"}
    assert (pages["einstein"].title, pages["einstein"].qid, pages["einstein"].query) == (
        "Albert Einstein",
        "Q937",
        "einstein",
    )
    fillers = [f"Filler {n}" for n in range(25)]
    assert len(client.wikipedia_pages(fillers)) == 25
    batches = [s.params["titles"].split("|") for s in server.seen[1:]]
    assert [len(b) for b in batches] == [20, 5]


def test_wikidata_search_and_entities(server: MediaWikiServer, connect) -> None:
    client = connect()
    hits = client.wikidata_search("einst", limit=3)
    assert [(h.qid, h.title, h.origin) for h in hits] == [("Q937", "Albert Einstein", "live")]
    assert hits[0].text == "German-born theoretical physicist (1879–1955)\nAlso known as: Einstein"
    assert hits[0].url.endswith("/wikidata/wiki/Q937")
    assert server.seen[0].params == {
        "action": "wbsearchentities",
        "search": "einst",
        "language": "en",
        "uselang": "en",
        "type": "item",
        "limit": "3",
        "format": "json",
    }
    unknown = [f"Q{n}" for n in range(2000, 2060)]
    asked = ["Q937", "Q90", "Q1000000001", "Q999999999", "not a QID", *unknown]
    items = client.wikidata_entities(asked)
    assert set(items) == {"Q937", "Q90", "Q1000000001"}
    assert items["Q1000000001"].qid == "Q937"
    paris = items["Q90"]
    assert (paris.title, paris.text, paris.enwiki_title) == (
        "Paris",
        "capital city of France\nAlso known as: City of Light",
        "Paris",
    )
    gets = [s.params for s in server.seen if s.params["action"] == "wbgetentities"]
    assert [len(p["ids"].split("|")) for p in gets] == [50, 14]
    assert gets[0]["props"] == "labels|descriptions|aliases|sitelinks" and gets[0]["languages"] == "en"


def test_user_agent_is_sent(server: MediaWikiServer, connect) -> None:
    client = connect()
    client.wikipedia_search("Paris")
    client.wikidata_search("Paris")
    assert {s.headers["User-Agent"] for s in server.seen} == {client.settings.user_agent}


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 500},
        {"kind": "status", "status": 503},
        {"kind": "malformed"},
        {"kind": "close"},
        {"kind": "api-error", "code": "maxlag", "retry_after": "0"},
    ],
    ids=["500", "503", "malformed-json", "connection-closed", "maxlag"],
)
def test_transient_faults_are_retried(server: MediaWikiServer, connect, fault: dict) -> None:
    client = connect()
    server.fail(**fault)
    hits = client.wikidata_search("Marie")
    assert [h.qid for h in hits] == ["Q7186"]
    assert server.count() == 2 and (client.stats.requests, client.stats.retries) == (2, 1)
    assert client.stats.failures == 0


def test_429_retry_after_is_honoured(server: MediaWikiServer, connect) -> None:
    client = connect(budget_s=5.0)
    server.fail("status", status=429, retry_after="1")
    start = time.monotonic()
    assert [h.qid for h in client.wikidata_search("Paris H")] == ["Q47899"]
    assert time.monotonic() - start >= 0.95
    assert client.stats.retries == 1


def test_retry_after_past_the_budget_gives_up_at_once(server: MediaWikiServer, connect) -> None:
    client = connect(budget_s=3.0)
    server.fail("status", status=429, retry_after="60")
    start = time.monotonic()
    with pytest.raises(WikiError, match="HTTP 429.*budget"):
        client.wikidata_search("Paris")
    assert time.monotonic() - start < TIMING_SLACK_S
    assert server.count() == 1 and client.stats.failures == 1


@pytest.mark.parametrize(
    "fault",
    [{"kind": "status", "status": 404}, {"kind": "api-error", "code": "badvalue"}],
    ids=["http-404", "api-error"],
)
def test_client_errors_fail_at_once(server: MediaWikiServer, connect, fault: dict) -> None:
    client = connect()
    server.fail(**fault, times=-1)
    with pytest.raises(WikiError) as caught:
        client.wikipedia_pages(["Paris"])
    assert server.count() == 1 and client.stats.retries == 0
    assert caught.value.query == "Paris" and "action=query" in caught.value.endpoint


def test_failed_answers_are_never_cached(server: MediaWikiServer, connect) -> None:
    client = connect(retries=1)
    server.fail("malformed", times=-1)
    with pytest.raises(WikiError, match="malformed JSON"):
        client.wikidata_search("Paris")
    assert server.count() == 2
    server.faults.clear()
    assert client.wikidata_search("Paris")[0].origin == "live"
    assert server.count() == 3
    assert client.wikidata_search("Paris")[0].origin == "cache"
    assert server.count() == 3


def test_timeout_bounds_one_attempt(server: MediaWikiServer, connect) -> None:
    client = connect(timeout_s=0.3, retries=0)
    server.fail("sleep", seconds=5.0, times=-1)
    start = time.monotonic()
    with pytest.raises(WikiError, match="timed out|no complete answer"):
        client.wikipedia_search("Paris")
    assert time.monotonic() - start < 0.3 + TIMING_SLACK_S


def test_budget_bounds_the_whole_call(server: MediaWikiServer, connect) -> None:
    client = connect(timeout_s=0.4, retries=10, budget_s=1.0)
    server.fail("sleep", seconds=5.0, times=-1)
    start = time.monotonic()
    with pytest.raises(WikiError):
        client.wikidata_entities(["Q90"])
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + TIMING_SLACK_S
    assert client.stats.requests >= 2


def test_a_trickled_answer_cannot_outlast_the_timeout(server: MediaWikiServer, connect) -> None:
    client = connect(timeout_s=0.5, retries=0)
    server.fail("trickle", seconds=0.02, times=-1)
    start = time.monotonic()
    with pytest.raises(WikiError, match="still arriving|no complete answer"):
        client.wikidata_entities(["Q90"])
    assert time.monotonic() - start < 0.5 + TIMING_SLACK_S


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/w/api.php"
    settings = WikiSettings(
        mode="online", wikidata_api=dead, retries=2, backoff_s=0.05, budget_s=2.0, cache_dir=tmp_path
    )
    client = OnlineWikiClient(settings)
    try:
        with pytest.raises(WikiError) as caught:
            client.wikidata_search("Paris")
    finally:
        client.close()
    message = str(caught.value)
    assert dead in message and "'Paris'" in message and "ConnectError" in message
    stats = client.stats.to_json()
    assert (stats["requests"], stats["retries"], stats["failures"]) == (3, 2, 1)
    assert stats["last_error"] == message


def test_online_falls_back_to_the_replica_and_records_it(tmp_path: Path) -> None:
    replica = OfflineReplica(
        [Article("Marie Curie", "Marie Curie was a physicist and chemist.", "Q7186")],
        [ReplicaItem("Q7186", "Marie Curie", "physicist and chemist", ("Maria Skłodowska",), "Marie Curie")],
    )
    dead = f"http://127.0.0.1:{closed_port()}/w/api.php"
    settings = WikiSettings(
        mode="online",
        wikipedia_api=dead,
        wikidata_api=dead,
        retries=0,
        budget_s=1.0,
        cache_dir=tmp_path,
    )
    client = make_wiki_client(settings, replica)
    assert isinstance(client, FallbackWikiClient) and client.mode == "online"
    try:
        hits = client.wikidata_search("Skłodowska")
        pages = client.wikipedia_pages(["Marie Curie"])
    finally:
        client.close()
    assert [(h.qid, h.origin) for h in hits] == [("Q7186", "offline")]
    assert pages["Marie Curie"].origin == "offline" and pages["Marie Curie"].qid == "Q7186"
    stats = client.stats.to_json()
    assert (stats["failures"], stats["fallbacks"], stats["offline"]) == (2, 2, 2)
    assert dead in stats["last_error"]


def test_response_cache_is_atomic_and_ignores_damaged_files(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    params = {"action": "query", "titles": "Paris"}
    assert cache.get("api", params) is None
    cache.put("api", params, {"query": {"pages": []}})
    assert cache.get("api", dict(reversed(params.items()))) == {"query": {"pages": []}}
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [cache.path("api", params).name]
    cache.path("api", params).write_text('{"endpoint": "api", "par', encoding="utf-8")
    assert cache.get("api", params) is None


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEL_WIKI_MODE", "online")
    monkeypatch.setenv("MEL_WIKIPEDIA_API", "http://mirror.local/w/api.php")
    monkeypatch.setenv("MEL_WIKI_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MEL_WIKI_RETRIES", "5")
    monkeypatch.setenv("MEL_WIKI_CACHE_DIR", str(tmp_path))
    settings = WikiSettings.from_env(budget_s=12.0, retries=None)
    assert (settings.mode, settings.timeout_s, settings.retries, settings.budget_s) == (
        "online",
        2.5,
        5,
        12.0,
    )
    assert settings.response_cache_dir() == tmp_path
    assert settings.wikipedia_url("Notre-Dame de Paris") == "http://mirror.local/wiki/Notre-Dame_de_Paris"
    assert WikiSettings.from_env(mode="offline").mode == "offline"
    with pytest.raises(ValueError, match="mode"):
        WikiSettings(mode="sometimes")
    monkeypatch.setenv("MEL_WIKI_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="MEL_WIKI_TIMEOUT_S"):
        WikiSettings.from_env()


@pytest.fixture(scope="module")
def wikimel_replica(shared_mel: Path) -> OfflineReplica:
    entities = load_dataset("wikimel", shared_mel / "wikimel").entities
    start = time.monotonic()
    replica = OfflineReplica.build(entities, shared_mel / "kb-local")
    assert time.monotonic() - start < 10.0
    return replica


def test_replica_on_wikimel_finds_kb_entities_by_label(wikimel_replica: OfflineReplica) -> None:
    client = make_wiki_client(WikiSettings(mode="offline"), wikimel_replica)
    assert client.mode == "offline"
    for query in ("Stefanie Powers", "stefanie pow"):
        top = client.wikidata_search(query, limit=5)[0]
        assert (top.qid, top.title, top.origin) == ("Q256474", "Stefanie Powers", "offline")
    item = client.wikidata_entities(["Q256474", "Q0"])
    assert list(item) == ["Q256474"]
    assert item["Q256474"].text.startswith("Sex: female.")
    assert item["Q256474"].enwiki_title is None
    assert client.wikipedia_pages(["Stefanie Powers"]) == {}


def test_replica_on_wikimel_serves_vital_articles_with_qids(wikimel_replica: OfflineReplica) -> None:
    assert wikimel_replica.statistics() == {
        "articles": 10_033,
        "articles_with_qid": 1_139,
        "items": 18_880 + 588,  # the KB, plus DERIVED QIDs from Richpedia-MEL that WikiMEL lacks
        "items_with_article": 1_139,
    }
    client = make_wiki_client(WikiSettings(mode="offline"), wikimel_replica)
    page = client.wikipedia_pages(["chameleon"])["chameleon"]
    assert (page.title, page.qid, page.origin) == ("Chameleon", "Q37686", "offline")
    assert page.text.startswith("Chameleons are a distinctive and highly specialized clade")
    assert client.wikipedia_search("Chameleon", limit=3)[0].title == "Chameleon"
    assert client.wikipedia_search("Einstein relativity", limit=3)[0].title == "Albert Einstein"
    assert client.wikidata_entities(["Q37686"])["Q37686"].enwiki_title == "Chameleon"
    assert client.stats.offline == 4


def test_cli_searches_offline(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEL_WIKI_MODE", raising=False)
    assert wiki_cli(["search", "Chameleon", "--source", "wikipedia", "--limit", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mode"] == "offline"
    assert [(r["title"], r["qid"]) for r in printed["results"]] == [("Chameleon", "Q37686")]


def test_replica_without_kb_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A missing default folder leaves only the KB (with a warning); a missing given one is an error."""
    monkeypatch.setenv("MEL_KB_LOCAL_DIR", str(tmp_path / "absent"))
    entities = load_dataset("demo").entities
    replica = OfflineReplica.build(entities)
    assert replica.statistics()["articles"] == 0 and replica.statistics()["items"] == len(entities)
    with pytest.raises(DatasetFileMissing, match="ovos_vital_articles_summaries_en-us.json"):
        OfflineReplica.build(entities, tmp_path)
