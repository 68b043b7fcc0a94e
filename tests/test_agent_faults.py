"""``eval.run --pipeline agent`` against real local servers on 127.0.0.1 that misbehave on purpose.

The LLM server answers with HTTP 429 + Retry-After, 500, malformed JSON, empty choices, a
stream cut off mid-answer, a reply slower than the timeout and a hang-up, interleaved with good
answers; the MediaWiki/Wikibase server rate-limits, stalls past the timeout and sends broken
JSON. Then both point at closed ports (connection refused). The run must finish, count every
fallback per kind in ``results.json``, record each in the decision's trace, and no LLM or wiki
call may take longer than its configured budget. Scorer, describer, replica, Chroma and SQLite
are real. (Client-level retries and timeouts are tested in test_llm.py and test_wiki.py.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from mediawiki_server import Corpus, MediaWikiServer
from openai_faults_server import fault_server
from support import closed_port, private_cache

from agent.traces import TraceStore
from eval.run import RunConfig, run

LLM = {"TIMEOUT_S": 0.8, "RETRIES": 1, "BACKOFF_S": 0.05, "BUDGET_S": 1.5}
WIKI = {"TIMEOUT_S": 0.5, "RETRIES": 1, "BACKOFF_S": 0.05, "BUDGET_S": 1.0}
SLACK_S = 0.6
"""Scheduling headroom on a loaded 2-core machine."""
LLM_FAULTS = ["429:0.1", "500", "malformed", "empty", "cut", "sleep:2", "hangup", "ok", "ok"]
MENTIONS = 3
WRITTEN = "An American computer scientist and United States Navy rear admiral."
"""The good answers: a description the writer keeps (a "Candidate 2" reply is caught by the
instruction filter) and that names no candidate, so the judge falls back on it too."""
CANDIDATES = 5


def _environment(patch: pytest.MonkeyPatch, root: Path, llm_url: str, wiki: dict[str, str]) -> None:
    cache = private_cache(root / "cache")
    patch.setenv("MEL_CACHE_DIR", str(cache))
    patch.setenv("MEL_LLM_BASE_URL", llm_url)
    patch.setenv("MEL_LLM_MODEL", "fault-model")
    patch.setenv("MEL_LLM_STREAM", "1")
    for key, value in LLM.items():
        patch.setenv(f"MEL_LLM_{key}", str(value))
    patch.setenv("MEL_WIKI_MODE", "online")
    patch.setenv("MEL_WIKI_CACHE_DIR", str(root / "wiki-cache"))
    patch.setenv("MEL_WIKIPEDIA_API", wiki["wikipedia"])
    patch.setenv("MEL_WIKIDATA_API", wiki["wikidata"])
    for key, value in WIKI.items():
        patch.setenv(f"MEL_WIKI_{key}", str(value))


def _agent_run(root: Path) -> tuple[dict[str, Any], float]:
    config = RunConfig(dataset="demo", task="i2t", pipeline="agent", limit=MENTIONS, candidates=CANDIDATES)
    started = time.perf_counter()
    results = run(config, root / "out", progress=False)
    return results, time.perf_counter() - started


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("faults")
    with (
        fault_server(LLM_FAULTS * 12, default="500", answer=WRITTEN) as llm,
        MediaWikiServer(Corpus()) as wiki,
        pytest.MonkeyPatch.context() as patch,
    ):
        wiki.fail("status", times=2, status=429, retry_after="0.1")
        wiki.fail("sleep", times=2, seconds=2.0)
        wiki.fail("status", times=2, status=500)
        wiki.fail("malformed", times=-1)
        _environment(patch, root, llm.url, {s: wiki.api(s) for s in ("wikipedia", "wikidata")})
        results, seconds = _agent_run(root)
        return {"root": root, "results": results, "seconds": seconds, "llm_modes": list(llm.seen)}


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("refused")
    with pytest.MonkeyPatch.context() as patch:
        llm_url = f"http://127.0.0.1:{closed_port()}/v1"
        wiki = {s: f"http://127.0.0.1:{closed_port()}/{s}/w/api.php" for s in ("wikipedia", "wikidata")}
        _environment(patch, root, llm_url, wiki)
        results, seconds = _agent_run(root)
    return {"root": root, "results": results, "seconds": seconds}


def _items(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(results["items"]).read_text().splitlines() if line.strip()]


def _check_fallbacks_are_counted_and_traced(env: dict[str, Any]) -> dict[str, int]:
    results = env["results"]
    items = _items(results)
    assert results["n"] == MENTIONS and not results["n_skipped"], "every decision finished"
    counts = results["fallbacks"]
    notes = [note for record in items for note in record["fallbacks"]]
    assert sum(v for k, v in counts.items() if k != "decisions") == len(notes)
    assert counts["decisions"] == sum(1 for record in items if record["fallbacks"])
    store = TraceStore(env["root"] / "out" / "checkpoints.sqlite")
    try:
        for record in items:
            trace = store.get(record["thread"]).values
            assert trace["fallbacks"] == record["fallbacks"], "what results count is in the trace"
            if record["judge"] == "fallback":
                assert trace["judge"]["fallback"] and trace["decided_by"] == "prerank"
                assert trace["decision"] == trace["prerank"]["order"][0]
            origins = trace["description_origin"].values()
            assert sum(o.startswith("fallback") for o in origins) == sum(
                n.startswith("enrich") for n in record["fallbacks"]
            )
    finally:
        store.close()
    return counts


def _check_no_call_outlived_its_budget(env: dict[str, Any]) -> None:
    """Per node, at most (calls it makes) x (that client's budget) + slack seconds. The first
    decision is left out: it also loads the models and builds the offline replica."""
    llm_budget, wiki_budget = LLM["BUDGET_S"], WIKI["BUDGET_S"]
    for record in _items(env["results"])[1:]:
        seconds = record["node_seconds"]
        assert seconds["judge"] <= llm_budget + SLACK_S, seconds
        assert seconds["enrich"] <= CANDIDATES * llm_budget + SLACK_S, seconds
        # retrieve: entities + pages for the candidates, Wikipedia + Wikidata search for the context;
        # each may fail online and be answered from the replica.
        assert seconds["retrieve"] <= 4 * wiki_budget + 2 + SLACK_S, seconds


@pytest.mark.slow
def test_misbehaving_servers_fall_back_and_count_it(misbehaving: dict) -> None:
    counts = _check_fallbacks_are_counted_and_traced(misbehaving)
    print(f"\nmisbehaving servers: fallbacks {counts} in {misbehaving['seconds']:.1f} s")
    assert counts["wiki"] > 0 and counts["writer"] > 0 and counts["judge"] > 0, counts
    assert counts["describer"] == 0 and counts["prerank"] == 0, "local models did not fail"
    modes = set(misbehaving["llm_modes"])
    assert {"429:0.1", "500", "malformed", "empty", "cut", "sleep:2", "hangup", "ok"} <= modes
    items = _items(misbehaving["results"])
    assert any(not n.startswith("enrich") for r in items for n in r["fallbacks"])
    writer_ok = [r for r in items if sum(n.startswith("enrich") for n in r["fallbacks"]) < CANDIDATES]
    assert writer_ok, "between faults some descriptions were written by the LLM"
    _check_no_call_outlived_its_budget(misbehaving)


@pytest.mark.slow
def test_refused_connections_fall_back_at_once(refused: dict) -> None:
    counts = _check_fallbacks_are_counted_and_traced(refused)
    print(f"\nrefused connections: fallbacks {counts} in {refused['seconds']:.1f} s")
    assert counts["judge"] == MENTIONS and counts["writer"] == MENTIONS * CANDIDATES
    assert counts["wiki"] >= MENTIONS, counts
    _check_no_call_outlived_its_budget(refused)
    items = _items(refused["results"])
    assert all(r["judge"] == "fallback" and r["decided_by"] == "prerank" for r in items)
    assert all(
        "answered from the offline replica" in n
        for r in items
        for n in r["fallbacks"]
        if n.startswith("retrieve")
    )
