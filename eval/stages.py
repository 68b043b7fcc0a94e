"""Every stage of LLM-RetLink scored on the same items, in one run (seed paper Tables 3 and 4).

``model``: the scorer on the static "a photo of <entity>" prompts (the prerank pipeline);
``model*``: the agent's pre-ranker on the LLM-enriched descriptions; ``agent``: the final
decision. ``StagedPipeline`` runs the agent and, on the very same prepared items (same
candidates, same image, clean or attacked), the bare scorer, and writes each item's stage
ranks into its record, so every stage's metrics, intervals and paired differences come from
one ``items.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from eval.pipelines import Pipeline
from kb.ranking import gold_rank, gold_rank_in_order, ranking
from kb.runcore.items import PreparedItem

STAGES = ("model", "model*", "agent")
DIFFERENCES = (("model", "model*"), ("model*", "agent"), ("model", "agent"))
"""(before, after) pairs whose paired difference ``results.json`` reports as ``after-before``."""
NO_CONSULT = "no-consult"
"""With the consult step on (``--consult``): the agent's decision without what it looked up (the
same decision where the step did not run), so ``agent-no-consult`` is the step's paired effect."""
CONSULT_DIFFERENCES = (*DIFFERENCES, (NO_CONSULT, "agent"))


def stage_entry(scores: list[float] | None, qids: list[str], gold_index: int | None) -> dict[str, Any] | None:
    """Rank, prediction and correctness of one stage from its scores in candidate order."""
    if not scores:
        return None
    rank = gold_rank(scores, gold_index)
    return {"rank": rank, "prediction": qids[ranking(scores)[0]], "correct": rank == 1}


def without_consult(record: dict[str, Any], gold_index: int | None) -> dict[str, Any] | None:
    """The agent stage had its consult step been off: its decision without the look-ups first,
    then the pre-ranker's order (None when the step did not run)."""
    consult = record.get("consult")
    if not consult:
        return None
    qids = record["candidates"]
    decision = consult["decision_without"]
    order = [decision, *(qids[i] for i in ranking(record["prerank_scores"]) if qids[i] != decision)]
    rank = gold_rank_in_order(order, qids[gold_index] if gold_index is not None else None)
    return {"rank": rank, "prediction": decision, "correct": rank == 1}


class StagedPipeline:
    """The agent, with the bare scorer run beside it on the same items."""

    def __init__(self, agent: Pipeline, model: Pipeline) -> None:
        self.agent = agent
        self.model = model
        self.load_seconds = 0.0

    def process(self, items: list[PreparedItem], seed: int, condition: str) -> Iterator[dict[str, Any]]:
        model = {record["id"]: record for record in self.model.process(items, seed, condition)}
        self.load_seconds = self.model.load_seconds
        for record in self.agent.process(items, seed, condition):
            if not record.get("error"):
                yield {**record, "stages": self._stages(record, model.get(record["id"]))}
            else:
                yield record

    @staticmethod
    def _stages(record: dict[str, Any], model: dict[str, Any] | None) -> dict[str, Any]:
        qids = record["candidates"]
        gold_index = qids.index(record["gold"]) if record["gold"] in qids else None
        bare = None
        if model is not None and not model.get("error"):
            bare = {k: model[k] for k in ("rank", "prediction", "correct")}
        agent = {k: record[k] for k in ("rank", "prediction", "correct")}
        return {
            "model": bare,
            "model*": stage_entry(record.get("prerank_scores"), qids, gold_index),
            "agent": agent,
            NO_CONSULT: without_consult(record, gold_index) or agent,
        }

    def finish(self, condition: str) -> Iterator[dict[str, Any]]:
        yield from self.agent.finish(condition)

    def close(self) -> None:
        self.agent.close()
        self.model.close()
