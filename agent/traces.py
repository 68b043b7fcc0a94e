"""Reading decisions back from the SQLite checkpoints: the library under ``agent.trace``.

A thread's final state holds every node's output (``agent.state``); ``node_outputs`` cuts it
into what each node produced, ``divergence`` compares two threads of the same mention node
by node and names the first node whose output differs: where an attack's effect entered
the graph. Nothing else is read: a trace is only what the checkpointer stored.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.graph import compile_graph, open_checkpointer, split_thread_id
from agent.state import NODES
from kb.ranking import gold_rank_in_order

NODE_KEYS: dict[str, tuple[str, ...]] = {
    "describe": ("descriptors",),
    "retrieve": ("evidence", "context_evidence", "looked_up"),
    "store": ("retrieval",),
    "enrich": ("descriptions", "description_origin", "enrich_prompts"),
    "prerank": ("prerank",),
    "consult": ("consult",),
    "judge": ("judge",),
    "answer": ("decision", "decided_by", "ranking", "correct"),
}
"""The state keys each node writes (its output in a trace)."""


@dataclass(frozen=True)
class Thread:
    """One decision as stored: its id parts and final state."""

    thread: str
    run_id: str
    mention_id: str
    condition: str
    values: dict[str, Any]

    @property
    def seconds(self) -> float:
        return round(sum(step.get("seconds", 0.0) for step in self.values.get("steps", [])), 3)

    @property
    def finished(self) -> bool:
        return self.values.get("decision") is not None

    def summary(self) -> dict[str, Any]:
        v = self.values
        return {
            "thread": self.thread,
            "run": self.run_id,
            "mention": self.mention_id,
            "mention_text": v.get("mention"),
            "condition": self.condition,
            "decision": v.get("decision"),
            "gold": v.get("gold"),
            "correct": v.get("correct"),
            "decided_by": v.get("decided_by"),
            "fallbacks": len(v.get("fallbacks", [])),
            "seconds": self.seconds,
        }


class TraceStore:
    """The threads of one checkpoint database."""

    def __init__(self, db: Path) -> None:
        if not Path(db).is_file():
            raise FileNotFoundError(
                f"no checkpoint database at {db} (run agent.link or eval.run --pipeline agent first)"
            )
        self.db = Path(db)
        self.checkpointer = open_checkpointer(self.db)
        self.graph = compile_graph(self.checkpointer)

    def thread_ids(self, run_id: str | None = None) -> list[str]:
        connection = sqlite3.connect(str(self.db))
        try:
            rows = connection.execute(
                "SELECT DISTINCT thread_id FROM checkpoints ORDER BY thread_id"
            ).fetchall()
        finally:
            connection.close()
        ids = [r[0] for r in rows]
        return [t for t in ids if run_id is None or split_thread_id(t)[0] == run_id]

    def get(self, thread: str) -> Thread:
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread}})
        if not snapshot.values:
            raise KeyError(f"no thread {thread!r} in {self.db}")
        run_id, mention_id, condition = split_thread_id(thread)
        return Thread(thread, run_id, mention_id, condition, dict(snapshot.values))

    def threads(self, run_id: str | None = None) -> Iterator[Thread]:
        for thread in self.thread_ids(run_id):
            yield self.get(thread)

    def close(self) -> None:
        self.checkpointer.conn.close()


def node_outputs(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each node's output and its step record, in graph order (nodes that did not run omitted)."""
    seconds = node_seconds(values.get("steps", []))
    # a node that ran several rounds (consult): its last step, with the seconds of all of them
    steps = {step["node"]: {**step, "seconds": seconds[step["node"]]} for step in values.get("steps", [])}
    return {
        node: {"step": steps[node], **{k: values.get(k) for k in NODE_KEYS[node]}}
        for node in NODES
        if node in steps
    }


def node_seconds(steps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Seconds per node, summed over its steps (the consult step runs once per round)."""
    totals: dict[str, float] = {}
    for step in steps:
        totals[step["node"]] = round(totals.get(step["node"], 0.0) + step["seconds"], 4)
    return totals


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    left, right = set(a), set(b)
    return 1.0 if not left and not right else round(len(left & right) / len(left | right), 4)


def _gold_rank(order: Sequence[str], gold: str | None) -> int | None:
    """The gold's pre-ranker rank, or None when it was not a candidate (nothing to compare)."""
    return gold_rank_in_order(order, gold) if gold in order else None


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Node by node: what changed between two decisions of the same mention, and whether it did."""
    gold = a.get("gold")
    words_a, words_b = a.get("descriptors", {}).get("words", []), b.get("descriptors", {}).get("words", [])
    hits_a = [h.get("title") for h in a.get("context_evidence", [])]
    hits_b = [h.get("title") for h in b.get("context_evidence", [])]
    evidence_a = {q: [r.get("text") for r in rs] for q, rs in (a.get("evidence") or {}).items()}
    evidence_b = {q: [r.get("text") for r in rs] for q, rs in (b.get("evidence") or {}).items()}
    store_a = sorted(a.get("retrieval", {}), key=lambda q: -a["retrieval"][q])
    store_b = sorted(b.get("retrieval", {}), key=lambda q: -b["retrieval"][q])
    desc_a, desc_b = a.get("descriptions", {}), b.get("descriptions", {})
    order_a, order_b = a.get("prerank", {}).get("order", []), b.get("prerank", {}).get("order", [])
    judge_a, judge_b = a.get("judge") or {}, b.get("judge") or {}
    calls_a, calls_b = tool_calls(a), tool_calls(b)
    results_a, results_b = _results(a), _results(b)
    return {
        "describe": {
            "changed": set(words_a) != set(words_b),
            "jaccard": jaccard(words_a, words_b),
            "only_a": sorted(set(words_a) - set(words_b)),
            "only_b": sorted(set(words_b) - set(words_a)),
        },
        "retrieve": {
            "changed": hits_a != hits_b or evidence_a != evidence_b,
            "context_hits_a": hits_a,
            "context_hits_b": hits_b,
            "candidates_with_other_evidence": sorted(
                q for q in evidence_a if evidence_a[q] != evidence_b.get(q)
            ),
        },
        "store": {"changed": store_a != store_b, "order_a": store_a, "order_b": store_b},
        "enrich": {
            "changed": desc_a != desc_b,
            "rewritten": sorted(q for q in desc_a if desc_a[q] != desc_b.get(q)),
        },
        "prerank": {
            "changed": order_a != order_b,
            "order_a": order_a,
            "order_b": order_b,
            "gold_rank_a": _gold_rank(order_a, gold),
            "gold_rank_b": _gold_rank(order_b, gold),
        },
        "consult": {
            "changed": calls_a != calls_b,
            "ran_a": bool(a.get("consult")),
            "ran_b": bool(b.get("consult")),
            "calls_a": calls_a,
            "calls_b": calls_b,
            "results_differ": [
                i
                for i, (x, y) in enumerate(zip(calls_a, calls_b, strict=False))
                if x == y and results_a[i] != results_b[i]
            ],
        },
        "judge": {
            "changed": (judge_a.get("raw"), judge_a.get("decision"))
            != (judge_b.get("raw"), judge_b.get("decision")),
            "ran_a": bool(judge_a),
            "ran_b": bool(judge_b),
            "raw_a": judge_a.get("raw"),
            "raw_b": judge_b.get("raw"),
            "decision_a": judge_a.get("decision"),
            "decision_b": judge_b.get("decision"),
        },
        "answer": {
            "changed": a.get("decision") != b.get("decision"),
            "decision_a": a.get("decision"),
            "decision_b": b.get("decision"),
            "correct_a": a.get("correct"),
            "correct_b": b.get("correct"),
        },
    }


def tool_calls(values: dict[str, Any]) -> list[str]:
    """The consult step's calls of a decision as ``name(arguments)`` lines, in order."""
    return [
        f"{c['name']}({json.dumps(c['arguments'], ensure_ascii=False, sort_keys=True)})"
        for c in (values.get("consult") or {}).get("calls", [])
    ]


def _results(values: dict[str, Any]) -> list[str]:
    return [c["result"] for c in (values.get("consult") or {}).get("calls", [])]


def first_divergence(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first node (graph order) whose output differs between two decisions, or None."""
    changes = compare(a, b)
    return next((node for node in NODES if changes[node]["changed"]), None)
