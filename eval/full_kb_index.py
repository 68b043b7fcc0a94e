"""Approximate full-KB ranking with Chroma's HNSW index (``eval.run --kb-index hnsw``).

For a KB whose (entities x D) matrix does not fit in memory (a million-entity Wikidata slice),
``eval.full_kb`` ranks with an HNSW graph of the same unit vectors instead: the scorer's
``candidate_embeddings`` of the KB's distinct candidate texts, added in chunks of
``eval.full_kb.EMBED_CHUNK`` so the whole matrix is never held at once. Chroma (already the KB
store's engine, ``kb.store``) keeps the index on disk under ``$MEL_CACHE_DIR/full_kb/``, named by
the scorer's embedding fingerprint and the texts, so a later run opens it without embedding
anything. Cosine space; ``ef_construction`` 200, ``max_neighbors`` 32, ``ef_search`` 200 (at
least k at query time). ``recall`` compares an approximate top k with the exact one
(``python -m eval.bench fullkb --hnsw`` reports it on WikiMEL).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval.full_kb_rank import EMBED_CHUNK, Ranked
from kb.cache import cache_dir

HNSW = {"space": "cosine", "ef_construction": 200, "max_neighbors": 32, "ef_search": 200}
DONE = "complete"


def index_key(identity: str, texts: Sequence[str]) -> str:
    """Names an index by what its vectors depend on: the scorer identity and the texts."""
    digest = hashlib.sha256(identity.encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", identity)[:40]
    return f"{safe}-{len(texts)}-{digest.hexdigest()[:16]}"


class HnswRanker:
    """Top-k entities of each query from an HNSW index over the KB's distinct candidate texts."""

    def __init__(self, collection: object, texts: Sequence[str], unique: Sequence[str]) -> None:
        self.collection = collection
        position = {text: row for row, text in enumerate(unique)}
        self.members: list[list[int]] = [[] for _ in unique]  # entities (sorted order) of each text
        self.row_of = np.empty(len(texts), dtype=np.int64)
        for entity, text in enumerate(texts):
            self.members[position[text]].append(entity)
            self.row_of[entity] = position[text]
        self.size = len(unique)

    @classmethod
    def open(
        cls,
        identity: str,
        texts: Sequence[str],
        embed: Callable[[list[str]], np.ndarray],
        progress: bool = True,
        root: Path | None = None,
    ) -> HnswRanker:
        """Open the index of these texts, building it first if it does not exist; ``embed`` (the
        scorer's ``candidate_embeddings`` as unit float32 rows) is called only to build it."""
        import chromadb

        unique = list(dict.fromkeys(texts))
        path = (root or cache_dir("full_kb")) / index_key(identity, unique)
        if not (path / DONE).is_file():
            _build(path, embed, unique, progress, identity)
        client = chromadb.PersistentClient(path=str(path / "chroma"))
        return cls(client.get_collection("kb-matrix"), texts, unique)

    def search(self, queries: torch.Tensor, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query: the approximate top ``k`` text rows and their cosines, best first."""
        k = min(k, self.size)
        found = self.collection.query(
            query_embeddings=queries.float().numpy(), n_results=k, include=["distances"]
        )
        rows = [np.asarray([int(i) for i in ids], dtype=np.int64) for ids in found["ids"]]
        cosines = [1.0 - np.asarray(d, dtype=np.float32) for d in found["distances"]]
        return rows, cosines

    def rank(
        self, queries: torch.Tensor, golds: Sequence[int | None], keep: int, scale: float
    ) -> list[Ranked]:
        """Approximate top ``keep`` entities (0: the whole index) and the gold's rank among them;
        a gold outside gets rank ``keep + 1`` and ``rank_exact: false``."""
        n = len(self.row_of)
        k = n if keep <= 0 else min(keep, n)
        rows, cosines = self.search(queries, k)
        ranked = []
        for row_ids, cos, gold in zip(rows, cosines, golds, strict=True):
            entities = np.asarray([e for r in row_ids for e in self.members[r]], dtype=np.int64)
            scores = np.repeat((cos * scale).astype(np.float32), [len(self.members[r]) for r in row_ids])
            order = np.lexsort((entities, -scores.astype(np.float64)))[:k]
            entities, scores = entities[order], scores[order]
            where = np.flatnonzero(entities == gold) if gold is not None else []
            if len(where):
                gold_score = scores[where[0]]
                ranked.append(
                    Ranked(entities, scores, int((scores >= gold_score).sum()), float(gold_score), {})
                )
            else:
                rank = n + 1 if gold is None else k + 1
                ranked.append(
                    Ranked(entities, scores, rank, None, {} if gold is None else {"rank_exact": False})
                )
        return ranked


def _build(
    path: Path, embed: Callable[[list[str]], np.ndarray], unique: Sequence[str], progress: bool, name: str
) -> None:
    """Embed ``unique`` in chunks into a new Chroma collection at ``path``; the ``complete`` marker
    is written last, so a killed build is found incomplete and redone."""
    import chromadb

    shutil.rmtree(path, ignore_errors=True)
    client = chromadb.PersistentClient(path=str(path / "chroma"))
    collection = client.create_collection("kb-matrix", configuration={"hnsw": HNSW}, embedding_function=None)
    step = min(EMBED_CHUNK, client.get_max_batch_size())
    bar = tqdm(total=len(unique), desc=f"HNSW index {name}", unit="entity", disable=not progress)
    for start in range(0, len(unique), step):
        vectors = np.asarray(embed(list(unique[start : start + step])), dtype=np.float32)
        collection.add(ids=[str(start + i) for i in range(len(vectors))], embeddings=vectors)
        bar.update(len(vectors))
    bar.close()
    (path / DONE).write_text(f"{len(unique)}\n", encoding="utf-8")


def recall(exact: Sequence[Sequence[int]], approximate: Sequence[Sequence[int]]) -> float:
    """Mean share of each exact top-k list that the approximate top-k list also holds."""
    shares = [len(set(a) & set(e)) / len(e) for e, a in zip(exact, approximate, strict=True) if len(e)]
    return float(np.mean(shares)) if shares else float("nan")
