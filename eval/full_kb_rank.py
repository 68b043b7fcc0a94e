"""The parts of full-KB ranking (``eval.full_kb``): the KB matrix, the cut ranking, the embedding store.

* ``KBMatrix``: the KB's candidate texts as one (U, D) matrix of unit vectors over the U distinct
  texts; ``scores`` is one product per batch of queries, gathered to the N entities.
* ``rank_rows``: each row's top k in ``kb.ranking.ranking``'s order and the gold's
  ``kb.ranking.gold_rank`` over the whole row: what ranking the row in full and cutting it gives.
* ``EmbeddingStore``: query vectors and KB matrices of one scorer identity on disk
  (``$MEL_CACHE_DIR/full_kb/``), with the scorer's embedding scale per task, so a warm full-KB
  run never loads the model (as the score cache does for the λ-candidate path).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kb.blob_cache import BlobCache
from kb.cache import cache_dir
from kb.runcore.items import PreparedItem, score_key

EMBED_CHUNK = 4096
"""Candidate texts embedded per call (a progress step; the HNSW index adds this many at a time)."""


@dataclass
class Ranked:
    """One item's kept ranking (candidate indices best first, their scores) and where the gold is."""

    order: np.ndarray
    scores: np.ndarray
    rank: int
    gold_score: float | None
    extra: dict[str, Any]


def rank_rows(scores: torch.Tensor, golds: Sequence[int | None], keep: int) -> list[Ranked]:
    """Each row's top ``keep`` (0: all) best first, equal scores by candidate index (``ranking``),
    and the gold's pessimistic rank over the whole row (``gold_rank``; n + 1 without a gold)."""
    batch, n = scores.shape
    k = n if keep <= 0 else min(keep, n)
    index = torch.topk(scores, k, dim=1).indices.numpy()
    rows = scores.numpy()  # counting is numpy's: a torch bool sum is ~15x slower here
    index = np.sort(index, axis=1)  # candidate order, then a stable sort by score keeps it on ties
    values = np.take_along_axis(rows, index, 1)
    position = np.argsort(-values.astype(np.float64), axis=1, kind="stable")
    index, values = np.take_along_axis(index, position, 1), np.take_along_axis(values, position, 1)
    threshold = values[:, -1:]
    crowded = (rows >= threshold).sum(1) > k  # ties straddle the cut: pick them by index
    gold = np.asarray([-1 if g is None else g for g in golds])
    gold_values = rows[np.arange(batch), gold.clip(min=0)]
    ranks = (rows >= gold_values[:, None]).sum(1)
    ranked = []
    for b in range(batch):
        order, kept = index[b], values[b]
        if crowded[b]:
            order, kept = _by_index(scores[b], scores[b, int(order[-1])], k)
        has_gold = golds[b] is not None
        ranked.append(
            Ranked(
                order,
                kept,
                int(ranks[b]) if has_gold else n + 1,
                float(gold_values[b]) if has_gold else None,
                {},
            )
        )
    return ranked


def _by_index(row: torch.Tensor, threshold: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    above = torch.nonzero(row > threshold).flatten()
    ties = torch.nonzero(row == threshold).flatten()[: k - len(above)]
    chosen = torch.cat([above, ties]).numpy()
    values = row.numpy()[chosen]
    order = np.lexsort((chosen, -values.astype(np.float64)))
    return chosen[order], values[order]


def reranked(first: Ranked, scores: np.ndarray, gold: int | None) -> Ranked:
    """The retrieved top k reordered by ``scores`` (ties by candidate index); a gold among them is
    ranked there (pessimistic ties), a gold outside keeps its retrieval rank."""
    order = np.lexsort((first.order, -scores.astype(np.float64)))
    extra = {**first.extra, "reranked": len(first.order)}
    where = np.flatnonzero(first.order == gold) if gold is not None else []
    if len(where):
        gold_score = scores[where[0]]
        rank = int((scores >= gold_score).sum())
        return Ranked(
            first.order[order], scores[order], rank, float(gold_score), {**extra, "gold_stage": "rerank"}
        )
    stage = {"gold_stage": "retrieval"} if gold is not None else {}
    return Ranked(first.order[order], scores[order], first.rank, first.gold_score, {**extra, **stage})


class KBMatrix:
    """The KB's candidate texts as one (U, D) matrix of unit vectors over the U distinct texts."""

    def __init__(self, texts: Sequence[str], matrix: np.ndarray) -> None:
        unique = list(dict.fromkeys(texts))
        if len(unique) != len(matrix):
            raise ValueError(f"{len(matrix)} rows for {len(unique)} distinct texts")
        position = {text: row for row, text in enumerate(unique)}
        self.index = None if len(unique) == len(texts) else torch.tensor([position[t] for t in texts])
        self.matrix = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))

    def scores(self, queries: torch.Tensor, scale: float) -> torch.Tensor:
        """(B, N) logits of every entity: one product, then each entity takes its text's column."""
        unique = queries.to(self.matrix.dtype) @ self.matrix.T * scale
        return unique if self.index is None else unique[:, self.index]


def query_key(task: str, item: PreparedItem) -> str:
    """What a query vector depends on besides the scorer: task, image bytes, crop box, context."""
    bbox = None if item.source is not None else item.mention.bbox
    return score_key(task, item.image_digest, bbox, item.context, ())


class EmbeddingStore:
    """Query vectors (SQLite) and KB matrices (``.npy``) of one scorer identity."""

    def __init__(self, scorer_id: str, directory: Path | None = None) -> None:
        self.directory = directory or cache_dir("full_kb")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", scorer_id)[:60]
        self.prefix = f"{safe}-{hashlib.sha256(scorer_id.encode()).hexdigest()[:12]}"
        self.queries = BlobCache(
            self.directory / f"{self.prefix}.sqlite",
            table="queries",
            key_column="key",
            value_column="vector",
            on_conflict="replace",
            timeout=30.0,
        )

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return self.queries.get_many(keys, dtype=np.float32)  # type: ignore[return-value]

    def put(self, entries: dict[str, np.ndarray]) -> None:
        self.queries.put_many(entries, dtype=np.float32)

    def meta(self, task: str) -> dict[str, Any] | None:
        """The scorer's ``{embeds, exact, scale}`` for ``task``, once a run has loaded it."""
        path = self.directory / f"{self.prefix}.meta.json"
        return json.loads(path.read_text(encoding="utf-8")).get(task) if path.is_file() else None

    def put_meta(self, task: str, value: dict[str, Any]) -> None:
        path = self.directory / f"{self.prefix}.meta.json"
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        _atomic(path, lambda tmp: tmp.write_text(json.dumps({**known, task: value}), encoding="utf-8"))

    def matrix(self, unique: Sequence[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """The (U, D) matrix of ``unique`` texts: read back, else embedded in chunks and saved."""
        digest = hashlib.sha256("\0".join(unique).encode()).hexdigest()[:16]
        path = self.directory / f"{self.prefix}-{len(unique)}-{digest}.npy"
        if path.is_file():
            return np.load(path)
        chunks = [embed(list(unique[s : s + EMBED_CHUNK])) for s in range(0, len(unique), EMBED_CHUNK)]
        matrix = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)
        _atomic(path, lambda tmp: _save(tmp, matrix))
        return matrix

    def close(self) -> None:
        self.queries.close()


def _save(path: Path, matrix: np.ndarray) -> None:
    with path.open("wb") as handle:  # a handle: np.save would add ".npy" to a path
        np.save(handle, matrix)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file renamed into place: a reader never sees half a file."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)
