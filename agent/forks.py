"""What-if re-runs: fork a decision at a checkpoint with one change and run the graph on.

A ``Change`` names the node whose output it replaces (``as_node``) and the new values; a fork
copies the thread's checkpoints into a new thread ``<thread>~whatif-<n>`` (the original
thread gets no new row, so ``agent.trace show`` and ``eval.run``'s read-back still see the
original decision), finds the checkpoint written right after ``as_node`` ran, applies the
change there with LangGraph's ``graph.update_state(config, values, as_node=...)`` (a new
checkpoint whose parent is that one: a branch, LangGraph's time travel) and resumes with
``graph.invoke(None, config)``: only the nodes after ``as_node`` run again.

Where each change forks (deterministic, no model decides this):

- descriptors (``as_node="describe"``): retrieve, store, enrich, prerank, judge run again;
- dropping a candidate (``as_node="enrich"``): the pre-ranker and the judge run again on the
  other candidates' stored descriptions;
- another image (``as_node="__start__"``): the whole graph runs again on that image.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from agent.nodes import AgentContext
from agent.resources import Resources
from agent.traces import Thread, TraceStore, compare, first_divergence

FORK_MARK = "~whatif-"
NEXT_AFTER = {"__start__": "describe", "describe": "retrieve", "enrich": "prerank"}
"""The node a fork resumes at, for each node a change may stand in for."""


@dataclass(frozen=True)
class Change:
    """One what-if: the values that replace ``as_node``'s output, and a line saying what changed."""

    as_node: str
    values: dict[str, Any]
    summary: str


@dataclass(frozen=True)
class Fork:
    """A finished what-if: the new thread, where it branched, both decisions and what changed."""

    thread: str
    source: str
    parent_checkpoint: str
    change: Change
    before: dict[str, Any]
    after: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    first_divergence: str | None
    seconds: float


def descriptors_change(values: dict[str, Any], words: list[str]) -> Change:
    if not words:
        raise ValueError("give the descriptor words, e.g. what if the descriptors were 'rocket, launch'")
    before = (values.get("descriptors") or {}).get("words", [])
    return Change(
        "describe",
        {"descriptors": {"words": words, "scores": [], "ocr": [], "source": "what-if"}},
        f"descriptors {', '.join(words)} (were {', '.join(before) or 'none'})",
    )


def drop_change(values: dict[str, Any], qid: str) -> Change:
    candidates = values.get("candidates", [])
    kept = [c for c in candidates if c["qid"] != qid]
    if len(kept) == len(candidates):
        raise ValueError(f"{qid} is not a candidate of this decision")
    if len(kept) < 2:
        raise ValueError("a decision needs at least two candidates")
    label = next(c["label"] for c in candidates if c["qid"] == qid)
    return Change("enrich", {"candidates": kept}, f"without candidate {label} ({qid})")


def image_change(path: str, condition: str, bbox: list[float] | None = None) -> Change:
    return Change(
        "__start__",
        {"image": {"path": path, "bbox": bbox, "condition": condition}},
        f"image {path} ({condition})",
    )


def copy_thread(store: TraceStore, source: str, target: str) -> None:
    """Every checkpoint and pending write of ``source`` under ``target`` (the whole parent chain;
    ``SqliteSaver.copy_thread`` is not implemented in langgraph-checkpoint-sqlite)."""
    with store.checkpointer.cursor() as cursor:
        cursor.execute(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
            "checkpoint, metadata) SELECT ?, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
            "checkpoint, metadata FROM checkpoints WHERE thread_id = ?",
            (target, source),
        )
        cursor.execute(
            "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, "
            "type, value) SELECT ?, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, "
            "value FROM writes WHERE thread_id = ?",
            (target, source),
        )


def fork_name(store: TraceStore, thread: str) -> str:
    """``<thread>~whatif-<n>`` with the next free n (a fork of a fork counts from its base)."""
    base = thread.split(FORK_MARK)[0]
    taken = [
        int(match.group(1))
        for other in store.thread_ids()
        if (match := re.fullmatch(re.escape(base) + re.escape(FORK_MARK) + r"(\d+)", other))
    ]
    return f"{base}{FORK_MARK}{max(taken, default=0) + 1}"


def fork_point(store: TraceStore, thread: str, as_node: str) -> dict[str, Any]:
    """The config of the checkpoint written right after ``as_node`` (its ``next`` is the node after)."""
    wanted = (NEXT_AFTER[as_node],)
    for snapshot in store.graph.get_state_history({"configurable": {"thread_id": thread}}):
        if snapshot.next == wanted:
            return snapshot.config
    raise KeyError(f"thread {thread!r} has no checkpoint before {wanted[0]} (was it cut off earlier?)")


def run_fork(store: TraceStore, resources: Resources, original: Thread, change: Change) -> Fork:
    """Branch ``original`` with ``change`` into a new thread and run the graph to its answer."""
    started = time.perf_counter()
    target = fork_name(store, original.thread)
    copy_thread(store, original.thread, target)
    point = fork_point(store, target, change.as_node)
    step = {"node": "what-if", "seconds": 0.0, "as_node": change.as_node, "change": change.summary}
    config = store.graph.update_state(point, {**change.values, "steps": [step]}, as_node=change.as_node)
    after = store.graph.invoke(None, config, context=AgentContext(resources))
    if after.get("decision") is None:
        raise RuntimeError(f"the fork {target} stopped before the answer node")
    return Fork(
        thread=target,
        source=original.thread,
        parent_checkpoint=point["configurable"]["checkpoint_id"],
        change=change,
        before=original.values,
        after=dict(after),
        nodes=compare(original.values, after),
        first_divergence=first_divergence(original.values, after),
        seconds=round(time.perf_counter() - started, 2),
    )
