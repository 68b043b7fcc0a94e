"""``eval.run --pipeline mllm``: the MLLM baseline of seed paper Table 4 (the judge alone).

Each prepared item (the same mentions, candidate sets and, under an attack, the same stored
adversarial image as the other pipelines) is one ``agent.mllm.judge_alone`` call: the seed
prompts verbatim, the image (a VLM) or its descriptors (a text LLM) plus the candidate labels
numbered in the dataset's candidate order; no retrieval, no enrichment, no pre-ranker. With a
distribution over the indices (constrained choice or logprobs) the candidates are ranked by
it, ties pessimistic as everywhere; with a free-text answer the named candidate is first and
the rest keep their order. An answer that names no candidate is an ``invalid`` decision:
wrong at every k (rank n + 1), counted in ``results.json`` as ``invalid_answers``, never skipped,
so the baseline is not credited for the candidates it did not pick. Its row in Table 4 is the
LLM's name; the agent run with the same LLM as judge is that name with a ``*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from agent.mllm import candidates_for, judge_alone
from agent.resources import Resources, resources_for
from kb.dataset import Dataset
from kb.errors import ImageError
from kb.images import load_pixels
from kb.ranking import gold_rank, gold_rank_in_order
from kb.runcore.items import PreparedItem

if TYPE_CHECKING:
    from eval.config import RunConfig


class MllmPipeline:
    """The judge alone over each item's candidates; loads its models on the first item."""

    load_seconds = 0.0

    def __init__(self, config: RunConfig, dataset: Dataset) -> None:
        from eval.agent_pipeline import agent_settings

        if config.task not in ("i2t", "it2t"):
            raise ValueError(f"the MLLM baseline links images: use --task i2t or it2t, not {config.task}")
        self.dataset = dataset
        self.settings = agent_settings(config)
        self._resources: Resources | None = None

    @property
    def resources(self) -> Resources:
        if self._resources is None:
            self._resources = resources_for(self.settings, self.dataset.entities, self.dataset.name)
        return self._resources

    def process(self, items: list[PreparedItem], seed: int, condition: str) -> Iterator[dict[str, Any]]:
        for item in items:
            yield self.answer(item, seed, condition)

    def answer(self, item: PreparedItem, seed: int, condition: str) -> dict[str, Any]:
        mention, qids = item.mention, list(item.candidates.qids)
        base = {
            "condition": condition,
            "id": mention.id,
            "seed": seed,
            "gold": mention.gold,
            "candidates": qids,
        }
        base.update(item.notes)
        if item.skip is None:
            try:  # an unreadable image is skipped with the reader's reason, as the prerank run skips it
                load_pixels(item.source or mention.image_path, None if item.source else mention.bbox)
            except ImageError as exc:
                item.skip = f"image_{exc.reason}"
        if item.skip is not None:
            return {**base, "error": item.skip}
        image = {
            "path": str(item.source or mention.image_path),
            "bbox": list(mention.bbox) if mention.bbox and item.source is None else None,
            "condition": condition,
        }
        try:
            answer = judge_alone(self.resources, mention, candidates_for(qids, self.dataset.entities), image)
        except Exception as exc:  # noqa: BLE001 - recorded per item, the run goes on
            return {**base, "error": f"mllm_error: {type(exc).__name__}: {str(exc)[:200]}"}
        gold_index = item.candidates.gold_index
        if answer["decision"] is None:
            rank = len(qids) + 1
        elif answer["distribution"] is not None:
            rank = gold_rank([answer["distribution"][q] for q in qids], gold_index)
        else:
            rank = gold_rank_in_order(answer["ranking"], mention.gold if gold_index is not None else None)
        return {
            **base,
            "ranking": answer["ranking"],
            "prediction": answer["decision"],
            "correct": rank == 1,
            "rank": rank,
            "gold_in_candidates": gold_index is not None,
            "invalid": answer["decision"] is None,
            "distribution": answer["distribution"],
            "method": answer["method"],
            "raw": answer["raw"],
            "prompt": answer["prompt"],
            "fallbacks": [answer["fallback"]] if answer["fallback"] else [],
            "seconds": answer["seconds"],
            "error": None,
        }

    def finish(self, condition: str) -> Iterator[dict[str, Any]]:
        """Every answer is written as it is given: nothing is kept back."""
        return iter(())

    def close(self) -> None:
        """The models stay loaded in the process-wide resources for the next run."""
