"""eval.run --pipeline agent: the graph over a dataset, clean and attacked, beside the pre-ranker.

The LLM is pointed at a closed port on 127.0.0.1 (every call fails for real and falls back to
the pre-ranker), so this runs fast; scorer, describer, wiki replica, Chroma, SQLite and the
attack are real. The real LLM's path is covered in tests/test_agent.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import closed_port, private_cache

from agent.state import NODES, PLAIN_ROUTE
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
    return {"root": root, "prerank": prerank, "agent": agent, "again": again, "port": port, "common": common}


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
        assert list(record["node_seconds"]) == list(PLAIN_ROUTE)


def test_agent_results_report_node_seconds_and_where_flips_diverged(runs: dict) -> None:
    agent = runs["agent"]
    assert set(agent["node_seconds"]) == set(PLAIN_ROUTE)
    block = agent["attacks"]["pgd-fast"]
    assert set(block["node_seconds"]) == set(PLAIN_ROUTE) and "drift" in block
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
    """The same ``--out``: its item log already holds every line (nothing is linked again)."""
    assert runs["again"]["metrics"] == runs["agent"]["metrics"]
    assert runs["again"]["attacks"]["pgd-fast"]["drift"] == runs["agent"]["attacks"]["pgd-fast"]["drift"]


def test_a_new_out_with_the_same_checkpoint_file_reads_every_decision_back(
    runs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with a new ``--out`` (no item log) holding a copy of the first run's checkpoint file
    (the same run name, so the same thread ids) reads all 16 decisions back from their threads:
    no graph runs a node (any ``invoke`` raises) and the lines and metrics are the first run's."""
    from langgraph.pregel import Pregel

    from agent.link import Linker

    root = Path(runs["root"])
    out = root / "read-back" / "agent"
    out.mkdir(parents=True)
    shutil.copy(root / "agent" / "checkpoints.sqlite", out / "checkpoints.sqlite")
    before = (out / "checkpoints.sqlite").read_bytes()
    computed: list[bool] = []
    real_link = Linker.link

    def watched(self: Linker, state: dict, condition: str) -> tuple[dict, str, bool]:
        final, thread, now = real_link(self, state, condition)
        computed.append(now)
        return final, thread, now

    def no_node(*args: object, **kwargs: object) -> None:
        raise AssertionError("a node ran: the decision was not read back")

    monkeypatch.setenv("MEL_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("MEL_LLM_BASE_URL", f"http://127.0.0.1:{runs['port']}/v1")
    monkeypatch.setenv("MEL_LLM_MODEL", "none")
    monkeypatch.setenv("MEL_LLM_RETRIES", "0")
    monkeypatch.setattr(Linker, "link", watched)
    monkeypatch.setattr(Pregel, "invoke", no_node)
    monkeypatch.setattr(Pregel, "stream", no_node)
    read = run(RunConfig(**runs["common"], pipeline="agent"), out, progress=False)
    assert computed == [False] * 16, computed
    assert read["metrics"] == runs["agent"]["metrics"]
    assert read["attacks"]["pgd-fast"]["drift"] == runs["agent"]["attacks"]["pgd-fast"]["drift"]
    first = {(r["condition"], r["id"]): r for r in lines(root / "agent" / "items.jsonl")}
    again = {(r["condition"], r["id"]): r for r in lines(out / "items.jsonl")}
    assert again.keys() == first.keys() and all(r["error"] is None for r in again.values())
    for key, record in again.items():
        assert record == first[key], key
    assert (out / "checkpoints.sqlite").read_bytes() == before, "reading back writes no checkpoint"


def test_trace_list_show_and_diff_print_what_the_checkpoints_hold(runs: dict, capsys) -> None:
    """``agent.trace`` on the run's checkpoint file, each answer checked against the item lines:
    ``list --wrong`` is exactly the wrong decisions, ``list --flipped`` the attacked decisions that
    differ from their clean twin, ``show`` prints a decision node by node, and ``diff --json``
    names the first node that changed (none for a thread against itself)."""
    from agent import trace

    db = str(Path(runs["root"]) / "agent" / "checkpoints.sqlite")
    records = {r["thread"]: r for r in lines(Path(runs["agent"]["items"]))}
    clean = {r["id"]: r for r in records.values() if r["condition"] == "clean"}

    def listed(*flags: str) -> set[str]:
        capsys.readouterr()
        assert trace.main(["--checkpoint-db", db, "list", *flags, "--json"]) == 0
        return {row["thread"] for row in json.loads(capsys.readouterr().out)}

    wrong = {t for t, r in records.items() if r["prediction"] != r["gold"]}
    flipped = {
        t
        for t, r in records.items()
        if r["condition"] != "clean" and r["prediction"] != clean[r["id"]]["prediction"]
    }
    assert listed() == set(records) and len(records) == 16
    assert listed("--wrong") == wrong and 0 < len(wrong) < 16  # the filter keeps some and drops some
    assert listed("--flipped") == flipped and flipped  # 16/255 flips 2 of the 8 (measured)

    thread = sorted(wrong)[0]
    capsys.readouterr()
    assert trace.main(["--checkpoint-db", db, "show", thread]) == 0
    shown = capsys.readouterr().out
    record = records[thread]
    assert shown.startswith(f"thread {thread}\n")
    assert f"gold {record['gold']}  decision {record['prediction']}  correct no" in shown
    positions = [shown.index(f"── {node} (") for node in record["node_seconds"]]
    assert positions == sorted(positions) and list(record["node_seconds"]) == list(
        PLAIN_ROUTE
    )  # in graph order

    for t in sorted(records):  # every decision against its clean twin, and against itself
        twin = clean[records[t]["id"]]["thread"]
        for pair in ((twin, t), (t, t)):
            capsys.readouterr()
            assert trace.main(["--checkpoint-db", db, "diff", *pair, "--json"]) == 0
            report = json.loads(capsys.readouterr().out)
            assert (report["a"], report["b"]) == pair and list(report["nodes"]) == list(NODES)
            changed = [node for node in NODES if report["nodes"][node]["changed"]]
            assert report["first_divergence"] == (changed[0] if changed else None), report
            if pair[0] == pair[1]:
                assert changed == [], report
            elif t in flipped:  # a flipped decision diverged somewhere
                assert changed and "answer" in changed, report
    print(f"trace: {len(wrong)} wrong, {len(flipped)} flipped of {len(records)}")
