"""``eval.run --pipeline agent``: the LLM-RetLink graph in place of a bare scorer.

Each prepared item (same mentions, candidate sets and, under an attack, the same stored
adversarial image as the pre-ranker run) becomes one agent decision in its own checkpointed
thread (``<out name>-s<seed>|<mention id>|<condition>``) in ``<out>/checkpoints.sqlite``, so a
killed run resumes thread by thread and ``agent.trace`` can list, show and diff every decision.
The item line keeps eval's schema (ranking, prediction, correct, rank) and adds the agent's
fields: ``thread``, ``decided_by``, ``judge`` (used / skipped / fallback), ``node_seconds``
and ``fallbacks``. An image the reader cannot decode is skipped with the reader's reason, as
the pre-ranker run skips it, so both pipelines score the same items.

``--concurrency N`` (``RunConfig.concurrency``; default ``agent.concurrency.default_concurrency``:
1 with the embedded LLM, 8 with a served one) links a chunk's items N at a time on a thread pool
(``agent.concurrency.in_order``) and hands the records back in item order, so the evaluator, the
only writer of ``items.jsonl``, writes what a sequential run writes. A run killed mid-chunk
resumes as before: finished threads are read back, cut-off ones continue from their checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.concurrency import default_concurrency, in_order
from agent.link import Linker, decision_record, initial_state
from agent.resources import resources_for
from agent.settings import AgentSettings
from agent.state import NODES
from agent.traces import TraceStore, first_divergence
from kb.dataset import Dataset
from kb.errors import ImageError
from kb.images import load_rgb
from kb.runcore.item_log import CLEAN
from kb.runcore.items import PreparedItem

if TYPE_CHECKING:
    from eval.config import RunConfig
    from eval.evaluator import Evaluator
    from eval.results import RunResults

CHECKPOINTS = "checkpoints.sqlite"
FALLBACK_KINDS = {
    "describe": "describer",
    "retrieve": "wiki",
    "enrich": "writer",
    "prerank": "prerank",
    "judge": "judge",
}
"""The node a fallback note starts with -> the kind ``results.json`` counts it under."""


def agent_settings(config: RunConfig, out: Path | None = None) -> AgentSettings:
    """The agent's settings for a run: the environment's and the run's LLM flags, with its task and scorer."""
    overrides: dict[str, Any] = {"task": config.task, "scorer": config.scorer}
    if out is not None:
        overrides["checkpoint_db"] = out / CHECKPOINTS
    return AgentSettings.from_flags(config.agent_flags or {}, **overrides)


def agent_identity(config: RunConfig) -> dict[str, Any]:
    """What of the agent a run's ``config.json`` pins: everything that changes a decision.

    The LLM and VLM (endpoint, model, decoding), the judge's routing and the describer's
    settings; not timeouts, retries, API keys or where files are kept.
    """
    return agent_settings(config).identity()


class AgentPipeline:
    """Links prepared items with the agent; loads its models on the first decision."""

    load_seconds = 0.0  # the pre-ranker is loaded inside the agent's resources, timed per node

    def __init__(self, config: RunConfig, dataset: Dataset, out: Path) -> None:
        if config.task not in ("i2t", "it2t"):
            raise ValueError(f"the agent links images: use --task i2t or it2t, not {config.task}")
        self.config = config
        self.dataset = dataset
        self.run_name = out.name
        self.settings = agent_settings(config, out)
        self.concurrency = config.concurrency or default_concurrency(self.settings)
        self._linker: Linker | None = None

    @property
    def linker(self) -> Linker:
        if self._linker is None:
            resources = resources_for(self.settings, self.dataset.entities, self.dataset.name)
            self._linker = Linker(resources, self.settings.checkpoint_db)
        return self._linker

    def run_id(self, seed: int) -> str:
        return f"{self.run_name}-s{seed}"

    def link(self, item: PreparedItem, seed: int, condition: str) -> dict[str, Any]:
        """One decision as an ``items.jsonl`` record (an item already skipped keeps its reason)."""
        mention = item.mention
        base = {
            "condition": condition,
            "id": mention.id,
            "seed": seed,
            "gold": mention.gold,
            "candidates": list(item.candidates.qids),
            **item.notes,
        }
        if item.skip is None and item.source is None and mention.image_path is not None:
            try:
                load_rgb(mention.image_path, mention.bbox)
            except ImageError as exc:
                item.skip = f"image_{exc.reason}"
        if item.skip is not None:
            return {**base, "error": item.skip}
        source = item.source or mention.image_path
        image = {
            "path": str(source),
            "bbox": list(mention.bbox) if mention.bbox and item.source is None else None,
            "condition": condition,
        }
        state = initial_state(self.run_id(seed), mention, item.candidates, self.dataset.entities, image)
        try:
            final, thread, _ = self.linker.link(state, condition)
        except Exception as exc:  # noqa: BLE001 - recorded per item, the run goes on
            return {**base, "error": f"agent_error: {type(exc).__name__}: {str(exc)[:200]}"}
        record = decision_record(final, thread, sum(s["seconds"] for s in final.get("steps", [])))
        gold_index = item.candidates.gold_index
        record["rank"] = record["rank"] if gold_index is not None else len(item.candidates.qids) + 1
        record["gold_in_candidates"] = gold_index is not None
        record.pop("candidates", None)
        return {**base, **record, "gold": mention.gold}

    def process(self, items: list[PreparedItem], seed: int, condition: str) -> Iterator[dict[str, Any]]:
        """The items' records in item order, ``self.concurrency`` decisions at once."""
        if items:
            _ = self.linker  # opened here, before any worker thread needs it
        yield from in_order(lambda item: self.link(item, seed, condition), items, self.concurrency)

    def finish(self, condition: str) -> Iterator[dict[str, Any]]:
        """Every decision is written as it is made: nothing is kept back."""
        return iter(())

    def close(self) -> None:
        if self._linker is not None:
            self._linker.close()


def add_agent_fields(results: RunResults, evaluator: Evaluator) -> None:
    """Per-node seconds and fallback counts of every condition and, per attack, where flipped
    decisions diverged."""
    seeds = evaluator.config.seeds
    clean = {r["id"]: r for r in evaluator.records(CLEAN, seeds[0])}
    results.node_seconds = node_timings(r for r in clean.values() if not r["error"])
    results.fallbacks = fallback_counts(r for s in seeds for r in evaluator.records(CLEAN, s))
    if evaluator.consulting:
        results.consult = consult_counts(r for s in seeds for r in evaluator.records(CLEAN, s))
    attacks = results.attacks or {}
    for preset, block in attacks.items():
        block.fallbacks = fallback_counts(r for s in seeds for r in evaluator.records(preset, s))
        if evaluator.consulting:
            block.consult = consult_counts(r for s in seeds for r in evaluator.records(preset, s))
    checkpoint_db = evaluator.agent.settings.checkpoint_db
    if not attacks or not checkpoint_db.is_file():
        return  # no attack, or no decision was ever made (every item skipped)
    traces = TraceStore(checkpoint_db)
    try:
        for preset, block in attacks.items():
            attacked = {r["id"]: r for r in evaluator.records(preset, seeds[0])}
            block.node_seconds = node_timings(r for r in attacked.values() if not r["error"])
            block.divergence = divergence_shares(traces, clean, attacked)
    finally:
        traces.close()


def node_timings(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and mean seconds per node over a condition's decisions."""
    by_node: dict[str, list[float]] = {}
    for record in records:
        for node, seconds in (record.get("node_seconds") or {}).items():
            by_node.setdefault(node, []).append(seconds)
    return {
        node: {"p50": round(float(np.median(v)), 4), "mean": round(float(np.mean(v)), 4), "n": len(v)}
        for node, v in by_node.items()
    }


def fallback_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Fallbacks taken per kind (``FALLBACK_KINDS``) over a condition's decisions, plus
    ``decisions``: how many decisions took at least one."""
    counts = dict.fromkeys([*FALLBACK_KINDS.values(), "decisions"], 0)
    for record in records:
        notes = record.get("fallbacks") or []
        counts["decisions"] += bool(notes)
        for note in notes:
            kind = FALLBACK_KINDS.get(note.split(" ", 1)[0].rstrip(":"), "other")
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def consult_counts(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """How the consult step ran over a condition's decisions: how often, how many calls of which
    tools, why it stopped, its seconds, and how many decisions it changed (``helped``: wrong
    without it, right with it; ``hurt``: the reverse). Accuracy with and without it, with
    intervals, is in ``stages`` (``agent`` vs ``no-consult``)."""
    decisions, consulted, calls, failed, changed, helped, hurt = 0, 0, 0, 0, 0, 0, 0
    tools: dict[str, int] = {}
    stopped: dict[str, int] = {}
    seconds: list[float] = []
    for record in records:
        if record.get("error"):
            continue
        decisions += 1
        step = record.get("consult")
        if not step:
            continue
        consulted += 1
        calls += step["calls"]
        failed += step["failed_calls"]
        seconds.append(step["seconds"])
        for name in step["tools"]:
            tools[name] = tools.get(name, 0) + 1
        reason = step["stopped"].split(":", 1)[0] if step["stopped"] else "unfinished"
        stopped[reason] = stopped.get(reason, 0) + 1
        if step["decision_without"] != record["prediction"]:
            changed += 1
            helped += record["prediction"] == record["gold"]
            hurt += step["decision_without"] == record["gold"]
    return {
        "decisions": decisions,
        "consulted": consulted,
        "share": round(consulted / decisions, 4) if decisions else None,
        "calls": calls,
        "calls_per_consult": round(calls / consulted, 3) if consulted else None,
        "failed_calls": failed,
        "tools": tools,
        "stopped": stopped,
        "seconds_p50": round(float(np.median(seconds)), 3) if seconds else None,
        "changed": changed,
        "helped": helped,
        "hurt": hurt,
    }


def divergence_shares(
    traces: TraceStore, clean: dict[str, dict], attacked: dict[str, dict]
) -> dict[str, Any]:
    """Where an attack's effect enters the graph: for every flipped decision (top-1 changed), the
    first node whose output differs from the clean decision's, as counts and shares per node."""
    counts = dict.fromkeys(NODES, 0)
    flipped = 0
    for key, after in attacked.items():
        before = clean.get(key)
        if (
            before is None
            or after.get("error")
            or before.get("error")
            or before["prediction"] == after["prediction"]
        ):
            continue
        flipped += 1
        node = first_divergence(traces.get(before["thread"]).values, traces.get(after["thread"]).values)
        counts[node or "answer"] += 1
    shares = {node: round(count / flipped, 4) if flipped else None for node, count in counts.items()}
    return {"flipped": flipped, "counts": counts, "shares": shares}
