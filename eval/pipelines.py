"""What the evaluator runs on each prepared item: the ``Pipeline`` protocol and the prerank pipeline.

A pipeline turns a chunk of prepared items (one seed, one condition) into ``items.jsonl``
records. It may keep some back (the Ray pool scores a whole condition's cache misses at
once) and hand them over in ``finish``. The evaluator alone writes the records, so the CLI
process stays the only writer of ``items.jsonl`` whatever the pipeline. ``prerank`` is the
scorer alone; ``agent`` (``eval.agent_pipeline``) is the LLM-RetLink graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from eval.config import RunConfig, scorer_identity
from eval.results import item_record
from eval.score_cache import ScoreCache
from eval.scoring import LazyScorer, score_missing
from eval.sharded import RayScoring
from kb.runcore.items import PreparedItem
from tools.executor import ExecutorConfig


class Pipeline(Protocol):
    load_seconds: float

    def process(self, items: list[PreparedItem], seed: int, condition: str) -> Iterator[dict[str, Any]]:
        """Records of the items done now (possibly not all of them; see ``finish``)."""
        ...

    def finish(self, condition: str) -> Iterator[dict[str, Any]]:
        """Records of the items ``process`` kept back for this condition."""
        ...

    def close(self) -> None: ...


class PrerankPipeline:
    """The scorer alone: logits from the score cache, else from the scorer (locally or on Ray)."""

    def __init__(self, config: RunConfig, executor: ExecutorConfig, progress: bool) -> None:
        self.config = config
        self.progress = progress
        self.scorer = LazyScorer(config)
        self.cache = ScoreCache(scorer_identity(config.scorer, config.checkpoint))
        self.sharded = RayScoring(config, executor) if executor.is_ray else None
        self.pending: list[tuple[PreparedItem, int]] = []  # cache misses for the Ray pool

    @property
    def load_seconds(self) -> float:
        return self.scorer.load_seconds

    def process(self, items: list[PreparedItem], seed: int, condition: str) -> Iterator[dict[str, Any]]:
        missing = self._from_cache(items)
        if self.sharded is not None:  # one pool for the whole condition, in ``finish``
            self.pending.extend((item, seed) for item in missing)
            items = [i for i in items if i.logits is not None or i.skip is not None]
        elif missing:
            score_missing(missing, self.scorer, self.config)
            self._to_cache(missing)
        for item in items:
            yield item_record(item, seed, condition)

    def finish(self, condition: str) -> Iterator[dict[str, Any]]:
        """Each kept-back item as the Ray pool returns it; the cache is filled every batch."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        scored: list[PreparedItem] = []
        for item, seed in self.sharded.score(pending, self.progress):
            yield item_record(item, seed, condition)
            scored.append(item)
            if len(scored) >= self.config.batch_size:
                self._to_cache(scored)
                scored = []
        self._to_cache(scored)

    def _from_cache(self, items: list[PreparedItem]) -> list[PreparedItem]:
        """Fill ``logits`` from the score cache; returns the scorable items it did not have."""
        scorable = [i for i in items if i.skip is None]
        hits = self.cache.get_many([i.key for i in scorable])
        for item in scorable:
            item.logits = hits.get(item.key)
        return [i for i in scorable if i.logits is None]

    def _to_cache(self, items: list[PreparedItem]) -> None:
        self.cache.put_many({i.key: i.logits for i in items if i.logits is not None})

    def close(self) -> None:
        """Nothing to release: the cache opens a connection per call."""
