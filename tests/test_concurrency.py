"""Concurrent agent decisions: ``in_order``, resources loaded once, one SQLite checkpointer shared
by threads, and ``eval.run --pipeline agent --concurrency N`` equal to a sequential run.

The slow test records the real embedded model (Qwen2.5-Coder-1.5B behind llama.cpp's own server)
answering a sequential ``eval.run`` through the record-and-replay endpoint, then replays those
very answers after a fixed delay to a sequential and a concurrent run: both must write what the
recorded run wrote, in the same order, and the concurrent one must overlap its waits. The fast
tests point the LLM at a closed port (every call fails for real and falls back); scorer,
describer, wiki replica, Chroma and SQLite are real throughout.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from support import closed_port, private_cache

from agent.concurrency import default_concurrency, in_order
from agent.link import Linker, build_candidates, link_mentions
from agent.resources import Resources
from agent.settings import AgentSettings
from agent.traces import TraceStore
from eval.run import RunConfig, run
from kb.dataset import load_dataset
from tools.llm import LLMSettings
from tools.wiki import WikiSettings

DELAY_S = 1.0


def test_in_order_runs_concurrently_and_yields_in_item_order() -> None:
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def work(item: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05 * (8 - item))  # later items finish first
        with lock:
            state["now"] -= 1
        return item * 10

    started = time.perf_counter()
    assert list(in_order(work, list(range(8)), 4)) == [i * 10 for i in range(8)]
    assert state["peak"] == 4 and time.perf_counter() - started < sum(0.05 * (8 - i) for i in range(8)) / 2
    state["peak"] = 0
    assert list(in_order(work, list(range(3)), 1)) == [0, 10, 20] and state["peak"] == 1


def test_in_order_raises_at_the_failing_item_and_stops_the_rest() -> None:
    started: list[int] = []

    def work(item: int) -> int:
        started.append(item)
        if item == 1:
            raise ValueError("item 1")
        time.sleep(0.2)
        return item

    results = in_order(work, list(range(20)), 2)
    assert next(results) == 0
    with pytest.raises(ValueError, match="item 1"):
        next(results)
    results.close()
    assert len(started) < 20, "items not yet started were cancelled"


def test_default_concurrency_follows_the_backend() -> None:
    assert default_concurrency(AgentSettings()) == 1
    assert default_concurrency(AgentSettings(llm=LLMSettings(base_url="http://127.0.0.1:9/v1"))) == 8


def test_concurrent_first_uses_load_a_resource_once() -> None:
    demo = load_dataset("demo")
    resources = Resources(AgentSettings(), demo.entities)
    barrier = threading.Barrier(8)
    seen: list[int] = []

    def first_use() -> None:
        barrier.wait()
        seen.append(id(resources.wiki))  # loads the replica inside, under the same lock

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and len(set(seen)) == 1
    assert resources.offline_wiki is not resources.wiki and resources.replica is resources.replica


def _offline(tmp_path: Path, db: str) -> AgentSettings:
    llm = LLMSettings(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="none", retries=0, budget_s=2)
    wiki = WikiSettings(mode="offline", cache_dir=tmp_path / "wiki")
    return AgentSettings(task="i2t", llm=llm, wiki=wiki, checkpoint_db=tmp_path / db)


def _linker(settings: AgentSettings, demo, folder: Path) -> Linker:
    from agent.candidate_store import CandidateStore
    from tools import registry

    resources = Resources(settings, demo.entities)
    resources.store = CandidateStore(registry.get("minilm"), folder)
    return Linker(resources, settings.checkpoint_db)


def test_threads_share_one_sqlite_checkpointer_and_decide_as_one_thread_does(tmp_path: Path) -> None:
    demo = load_dataset("demo")
    mentions = [m for m in demo.mentions if m.image_path is not None][:4]
    sets = build_candidates(demo, mentions, 10, seed=0)
    outcome = {}
    for n in (1, 4):
        settings = _offline(tmp_path, f"c{n}.sqlite")
        linker = _linker(settings, demo, tmp_path / f"chroma{n}")
        outcome[n] = list(link_mentions(linker, demo, mentions, sets, run_id=f"c{n}", concurrency=n))
        linker.close()
        store = TraceStore(settings.checkpoint_db)
        threads = list(store.threads(f"c{n}"))
        assert len(threads) == len(mentions) and all(t.finished for t in threads)
        store.close()
    assert [r["id"] for r in outcome[4]] == [m.id for m in mentions], "records come in mention order"
    assert all(r["error"] is None for r in outcome[4])
    keep = ("id", "prediction", "ranking", "correct", "decided_by", "judge")
    assert [{k: r[k] for k in keep} for r in outcome[4]] == [{k: r[k] for k in keep} for r in outcome[1]]


# ------------------------------------------------------------------------------ eval.run, replayed


def _items(out: Path) -> list[dict]:
    """items.jsonl in file order, without what timing and thread names change."""
    lines = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines() if line.strip()]
    for line in lines:
        for key in ("seconds", "node_seconds", "thread"):
            line.pop(key, None)
    return lines


@pytest.mark.slow
def test_eval_run_with_concurrency_writes_what_a_sequential_run_writes(tmp_path: Path, monkeypatch) -> None:
    from tools.llm.record_replay import stats
    from tools.llm.server import launched, serve_embedded

    recording = tmp_path / "recording.jsonl"
    common = dict(dataset="demo", task="i2t", candidates=3, limit=4)

    def replay(delay: float, port: int = 0, upstream: str | None = None):
        argv = [sys.executable, "-m", "tools.llm.record_replay", "--recording", str(recording)]
        argv += ["--delay", str(delay), "--port", str(port)] + (["--upstream", upstream] if upstream else [])
        return launched(argv, timeout_s=60)

    def agent_run(name: str, url: str, concurrency: int) -> tuple[dict, float]:
        cache = tmp_path / f"cache-{name}"  # a resumed run keeps its cache
        monkeypatch.setenv("MEL_CACHE_DIR", str(cache if cache.exists() else private_cache(cache)))
        flags = {"llm_base_url": url}
        config = RunConfig(**common, pipeline="agent", agent_flags=flags, concurrency=concurrency)
        started = time.perf_counter()
        results = run(config, tmp_path / name, progress=False)
        seconds = time.perf_counter() - started
        print(f"{name}: concurrency {concurrency}, {seconds:.1f} s, acc@1 {results['metrics']['acc@1']}")
        return results, seconds

    with serve_embedded() as upstream, replay(0.0, upstream=upstream) as url:
        recorded, _ = agent_run("recorded", url, 1)
        assert stats(url)["recorded"] >= 4 and stats(url)["misses"] == 0
    port = closed_port()
    outcomes, peaks, requests = {}, {}, {}
    for concurrency in (1, 4):
        with replay(DELAY_S, port) as url:  # one endpoint: a resume must name the same LLM
            outcomes[concurrency] = agent_run(f"c{concurrency}", url, concurrency)
            counts = stats(url)
        assert counts["misses"] == 0, "every request was one the real model answered"
        peaks[concurrency], requests[concurrency] = counts["peak_in_flight"], counts["hits"]
    assert peaks[1] == 1 and peaks[4] >= 2, "with --concurrency 4 decisions waited on the LLM at once"
    # Candidates shared by decisions in flight are described once (CandidateStore.writing).
    assert requests[4] == requests[1], requests
    (sequential, sequential_s), (concurrent, concurrent_s) = outcomes[1], outcomes[4]
    assert _items(tmp_path / "c4") == _items(tmp_path / "c1") == _items(tmp_path / "recorded")
    assert concurrent["metrics"] == sequential["metrics"] == recorded["metrics"] and recorded["n"] == 4
    assert any(r["judge"] != "fallback" for r in _items(tmp_path / "recorded")), "the real judge answered"
    assert concurrent_s < 0.8 * sequential_s, (concurrent_s, sequential_s)
    # Resume the sequential run's folder with --concurrency 4: N is not part of the run's identity,
    # so it is not refused, and every decision is read back, asking the LLM nothing.
    with replay(DELAY_S, port) as url:
        again, _ = agent_run("c1", url, 4)
        assert stats(url)["hits"] == 0
    assert again["metrics"] == sequential["metrics"] and _items(tmp_path / "c1") == _items(tmp_path / "c4")
