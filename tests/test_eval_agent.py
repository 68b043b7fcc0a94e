"""eval.run --pipeline agent: the graph over a dataset, clean and attacked, beside the pre-ranker.

The LLM is pointed at a closed port on 127.0.0.1 (every call fails for real and falls back to
the pre-ranker), so this runs fast; scorer, describer, wiki replica, Chroma, SQLite and the
attack are real. The real LLM's path is covered in tests/test_agent.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import closed_port, private_cache

from agent.state import NODES
from agent.traces import TraceStore
from eval.run import RunConfig, run

FAST = {
    "presets": {
        "pgd-fast": {"method": "pgd", "steps": 2, "eps": 16 / 255, "alpha": 8 / 255, "folder": "PGD-fast"}
    }
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("agent-eval")
    private_cache(root / "cache")
    (root / "fast.json").write_text(json.dumps(FAST))
    port = closed_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEL_CACHE_DIR", str(root / "cache"))
        patch.setenv("MEL_LLM_BASE_URL", f"http://127.0.0.1:{port}/v1")
        patch.setenv("MEL_LLM_MODEL", "none")
        patch.setenv("MEL_LLM_RETRIES", "0")
        common = dict(dataset="demo", task="i2t", attack="pgd-fast", presets_file=str(root / "fast.json"))
        common["adv_dir"] = str(root / "adv")
        prerank = run(RunConfig(**common), root / "prerank", progress=False)
        agent = run(RunConfig(**common, pipeline="agent"), root / "agent", progress=False)
        again = run(RunConfig(**common, pipeline="agent"), root / "agent", progress=False)
    return {"root": root, "prerank": prerank, "agent": agent, "again": again}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_agent_and_prerank_score_the_same_items(runs: dict) -> None:
    prerank, agent = runs["prerank"], runs["agent"]
    assert agent["pipeline"] == "agent" and prerank["pipeline"] == "prerank"
    assert agent["n"] == prerank["n"] == 8 and agent["attacks"]["pgd-fast"]["n"] == 8
    a = {(r["condition"], r["id"]): r for r in lines(Path(agent["items"]))}
    p = {(r["condition"], r["id"]): r for r in lines(Path(prerank["items"]))}
    assert set(a) == set(p)
    for key, record in a.items():
        assert record["candidates"] == p[key]["candidates"]
        assert record["thread"].endswith(f"|{key[0]}") and record["judge"] == "fallback"
        assert list(record["node_seconds"]) == list(NODES)


def test_agent_results_report_node_seconds_and_where_flips_diverged(runs: dict) -> None:
    agent = runs["agent"]
    assert set(agent["node_seconds"]) == set(NODES)
    block = agent["attacks"]["pgd-fast"]
    assert set(block["node_seconds"]) == set(NODES) and "drift" in block
    divergence = block["divergence"]
    records = lines(Path(agent["items"]))
    clean = {r["id"]: r for r in records if r["condition"] == "clean"}
    flipped = sum(
        1 for r in records if r["condition"] == "pgd-fast" and r["prediction"] != clean[r["id"]]["prediction"]
    )
    assert divergence["flipped"] == flipped and sum(divergence["counts"].values()) == flipped
    store = TraceStore(Path(runs["root"]) / "agent" / "checkpoints.sqlite")
    assert len(store.thread_ids()) == 16
    store.close()


def test_a_rerun_reads_decisions_back(runs: dict) -> None:
    assert runs["again"]["metrics"] == runs["agent"]["metrics"]
    assert runs["again"]["attacks"]["pgd-fast"]["drift"] == runs["agent"]["attacks"]["pgd-fast"]["drift"]
