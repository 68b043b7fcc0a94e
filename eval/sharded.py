"""``eval.run --executor ray``: score a run's cache misses on a pool of Ray actors.

The driver (``eval.run.Evaluator``) builds candidates, looks the score cache up and resumes from
``items.jsonl`` exactly as a local run does; what is left goes out as one JSON row per item
(ids, image path and crop box, context, candidate texts) to ``ScoringWorker`` actors, which load
the scorer once and run the very ``eval.run.score_missing`` a local run runs. Logits come back
as float32 values (exact through JSON), and the driver writes the same lines a local run
writes. Two things can move a score in its last float bits, and so, rarely, its 5th decimal in
an item line: actors run torch on one thread (an image model's convolutions then sum in another
order than on a multi-threaded local run), and a text may be encoded in a differently composed
batch (other padding) than locally. The tests saw score differences up to ~4e-5 (logit scale
100) and identical rankings and metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kb.runcore.items import PreparedItem, candidates_from_row, candidates_row, mention_from_row, mention_row
from tools.executor import ExecutorConfig, JsonWorker, ray_map

if TYPE_CHECKING:
    from eval.config import RunConfig


def job_row(index: int, item: PreparedItem) -> dict[str, Any]:
    """What a worker needs to score ``item``: the mention, texts and image paths, no tensors."""
    return {
        "index": index,
        "mention": mention_row(item.mention),
        "candidates": candidates_row(item.candidates),
        "candidate_texts": item.candidate_texts,
        "context": item.context,
        "source": str(item.source) if item.source is not None else None,
    }


def job_item(row: dict[str, Any]) -> PreparedItem:
    """The worker-side ``PreparedItem`` of a row: what ``score_missing`` reads."""
    item = PreparedItem(
        mention_from_row(row["mention"]),
        candidates_from_row(row["candidates"]),
        row["candidate_texts"],
        row["context"],
        None,
    )
    item.source = Path(row["source"]) if row["source"] else None
    return item


class ScoringWorker(JsonWorker):
    """One pool actor: the run's scorer, loaded once, scoring rows as ``score_missing`` does."""

    def __init__(self, config: dict[str, Any], threads: int = 1) -> None:
        from eval.config import RunConfig
        from eval.scoring import LazyScorer

        super().__init__(threads)
        self.config = RunConfig(**{**config, "seeds": tuple(config["seeds"])})
        self.scorer = LazyScorer(self.config)
        self.scorer()  # load now: a pool actor exists to score

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from eval.scoring import score_missing

        items = [job_item(row) for row in rows]
        score_missing(items, self.scorer, self.config)
        return [
            {
                "index": row["index"],
                "logits": None if item.logits is None else [float(v) for v in item.logits],
                "skip": item.skip,
            }
            for row, item in zip(rows, items, strict=True)
        ]


class RayScoring:
    """Scores batches of ``PreparedItem`` on a Ray actor pool, yielding each item once as it returns."""

    def __init__(self, config: RunConfig, executor: ExecutorConfig, threads: int = 1) -> None:
        self.config = config
        self.executor = executor
        self.threads = threads

    def score(
        self, pending: list[tuple[PreparedItem, int]], progress: bool
    ) -> Iterator[tuple[PreparedItem, int]]:
        """Fill ``logits`` (or ``skip``) of every (item, seed) and yield it, in completion order."""
        rows = [job_row(index, item) for index, (item, _) in enumerate(pending)]
        for result in ray_map(
            rows,
            ScoringWorker,
            (asdict(self.config), self.threads),
            self.executor,
            rows_per_call=self.config.batch_size,
            progress=progress,
        ):
            item, seed = pending[result["index"]]
            item.skip = result["skip"]
            item.logits = None if result["logits"] is None else np.asarray(result["logits"], dtype=np.float32)
            yield item, seed
