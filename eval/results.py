"""The one results schema of ``eval.run`` (``results.json``), and the per-item line it summarises.

``RunResults`` is validated on write (``write_results``, the only writer) and written as
strict JSON: a metric with nothing to average (no item scored, no clean-correct item to
attack) is ``null``, never ``NaN``. ``schema_version`` changes when a field changes meaning;
files written before it existed read as version 1. Extra keys are allowed in the blocks that
pipelines extend (the agent adds ``node_seconds``, ``fallbacks`` and ``divergence``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kb.ranking import gold_rank, ranking
from kb.runcore.files import strict, write_json
from kb.runcore.item_log import CLEAN
from kb.runcore.items import PreparedItem

SCHEMA_VERSION = 2
"""1: files without ``schema_version``; 2: strict JSON (null for undefined metrics), ``ci95``,
agent ``stages``."""

MetricStats = dict[str, dict[str, float | None]]
"""{metric: {mean, std}} over seeds."""


class ConditionResults(BaseModel):
    """One condition (clean or an attack preset) of a run: counts, skips and metrics."""

    model_config = ConfigDict(extra="allow")

    n: int
    n_skipped: int
    skipped: dict[str, int]
    metrics: MetricStats
    metrics_per_seed: dict[str, dict[str, float | None]]
    ci95: dict[str, list[float] | None]
    """95% bootstrap intervals of acc@1 and MRR over mentions (``eval.metrics.bootstrap_ci``)."""
    stages: dict[str, dict[str, Any]] | None = None
    """Agent runs: {model, model*, agent}, each with n, metrics and ci95 on the same items."""
    stage_differences: dict[str, dict[str, Any]] | None = None
    """Agent runs: paired bootstrap of after − before ("model*-model", "agent-model*", "agent-model")."""


class AttackResults(ConditionResults):
    """An attack condition, with how far it moved the clean decisions (see ``eval.replay``)."""

    drift: dict[str, Any]
    drift_ci95: dict[str, Any] | None = None
    """Paired bootstrap interval of ``acc_drop`` (and per stage for the agent: ``eval.evaluator``)."""
    """n, acc_drop, flip_rate, attack_success, gold_rank_shift, and the ``ci95`` block (agent: ``stages``)."""
    preset: dict[str, Any]
    adv_dir: str
    folder: str
    image_format: str
    made_by: dict[str, Any] | None
    transfer: bool | None
    generated: int
    candidates_differ: int
    manifest: dict[str, Any]


class RunResults(ConditionResults):
    """A whole run: what was run, the clean condition's numbers, and every attack's block."""

    schema_version: int = SCHEMA_VERSION
    dataset: str
    split: str
    task: str
    pipeline: str
    scorer: str
    checkpoint: str | None
    attack: list[str] | None = None
    candidates: int | str
    seeds: list[int]
    n_mentions: int
    nil: int
    items: str
    seconds: float
    model_load_seconds: float
    created: str
    attacks: dict[str, AttackResults] | None = None
    llm: str | None = None
    """The judge's model (agent runs): ``agent.settings`` LLM identity's model or backend."""


def write_results(path: Path, results: RunResults) -> dict[str, Any]:
    """Validate and write ``results.json``; returns what was written, as a dict."""
    value = strict(results.model_dump(mode="python"))
    for optional in ("attacks", "stages", "stage_differences", "llm"):
        if value.get(optional) is None:
            value.pop(optional, None)
    for block in (value.get("attacks") or {}).values():
        for optional in ("stages", "stage_differences"):
            if block.get(optional) is None:
                block.pop(optional, None)
    write_json(path, value)
    return value


def load_results(path: Path) -> dict[str, Any]:
    """A run folder's (or a file's) results; a file without ``schema_version`` is version 1."""
    results = json.loads((path / "results.json" if path.is_dir() else path).read_text(encoding="utf-8"))
    results.setdefault("schema_version", 1)
    return results


def item_record(item: PreparedItem, seed: int, condition: str = CLEAN) -> dict[str, Any]:
    """The ``items.jsonl`` line of one scored (or skipped) prerank item."""
    mention, candidates = item.mention, item.candidates
    record: dict[str, Any] = {
        "condition": condition,
        "id": mention.id,
        "seed": seed,
        "gold": mention.gold,
        "candidates": list(candidates.qids),
        **item.notes,
    }
    if item.skip is not None:
        return {**record, "error": item.skip}
    order = ranking(item.logits)
    rank = gold_rank(item.logits, candidates.gold_index)
    return {
        **record,
        "ranking": [candidates.qids[i] for i in order],
        "scores": [round(float(v), 5) for v in item.logits],
        "prediction": candidates.qids[order[0]],
        "correct": rank == 1,
        "rank": rank,
        "gold_in_candidates": candidates.gold_index is not None,
        "error": None,
    }


def percent(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value * 100:.1f}%"


def summary_line(results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    seeds = len(results["seeds"])
    std = metrics["acc@1"]["std"]
    spread = f" ±{std * 100:.1f}" if seeds > 1 and std is not None else ""
    mrr = metrics["mrr"]["mean"]
    return (
        f"{results['dataset']}/{results['split']} {results['task']} {results['scorer']} "
        f"λ={results['candidates']} seeds={seeds}: acc@1 {percent(metrics['acc@1']['mean'])}{spread} "
        f"acc@5 {percent(metrics['acc@5']['mean'])} mrr {'n/a' if mrr is None else f'{mrr:.3f}'} "
        f"(n={results['n']}, skipped={results['n_skipped']}) in {results['seconds']:.1f}s"
    )
