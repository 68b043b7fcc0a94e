"""Candidate sets: for each mention, lambda entities holding the gold plus hard negatives.

The seed paper scores a mention against a fixed-size candidate list; its numbers depend on
how hard the negatives are, so they are built the same way for every pipeline:

* a dataset's own candidate list is used when it ships one (M3EL, official WikiDiverse);
* otherwise negatives come from two pools of the KB, half each: entities whose names share
  the most tokens with the mention and the gold label ("Powers" -> other Powers), and the
  gold's nearest neighbours by description embedding (other footballers born in 1979);
  each pool holds the 2x(lambda-1) hardest entries and the seed samples from it;
* ``size=None`` gives the full KB.

Candidate order is shuffled by a generator seeded with (seed, mention id), so the gold's
position is never a give-away and a seed reproduces the exact sets. NIL mentions keep a
candidate list (name neighbours) with ``gold_index=None`` and are reported, never dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kb.records import Entity, Mention

TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset("the of and a an in on at to for de la le von van der du da".split())


@dataclass(frozen=True)
class CandidateSet:
    mention_id: str
    qids: tuple[str, ...]
    gold_index: int | None
    source: str

    def to_json(self) -> dict[str, object]:
        return {
            "mention": self.mention_id,
            "qids": list(self.qids),
            "gold_index": self.gold_index,
            "source": self.source,
        }


def name_tokens(text: str) -> set[str]:
    return {t for t in TOKEN.findall(text.lower()) if t not in STOPWORDS and len(t) > 1}


class CandidateBuilder:
    """Holds the KB indexes (name tokens, description vectors) needed to build sets fast."""

    def __init__(self, entities: dict[str, Entity], vectors: np.ndarray | None = None) -> None:
        self.qids = sorted(entities)
        self.entities = entities
        self.row = {q: i for i, q in enumerate(self.qids)}
        self.vectors = vectors
        if vectors is not None and len(vectors) != len(self.qids):
            raise ValueError(f"{len(vectors)} vectors for {len(self.qids)} entities (order: sorted QIDs)")
        self._neighbours: dict[tuple[str, int], list[str]] = {}
        self.by_token: dict[str, list[int]] = defaultdict(list)
        for index, qid in enumerate(self.qids):
            entity = entities[qid]
            for token in name_tokens(" ".join((entity.label, *entity.aliases))):
                self.by_token[token].append(index)

    def name_neighbours(self, texts: Iterable[str], exclude: str | None, k: int) -> list[str]:
        """Up to k entities sharing the most name tokens with ``texts`` (rare tokens weigh more)."""
        scores: Counter[int] = Counter()
        for token in set().union(*(name_tokens(t) for t in texts)):
            postings = self.by_token.get(token, ())
            if not postings or len(postings) > 5000:
                continue
            weight = 1.0 / np.log1p(len(postings))
            for index in postings:
                scores[index] += weight
        skip = self.row.get(exclude) if exclude else None
        ranked = sorted((i for i in scores if i != skip), key=lambda i: (-scores[i], self.qids[i]))
        return [self.qids[i] for i in ranked[:k]]

    def description_neighbours(self, gold: str, k: int) -> list[str]:
        """Up to k entities whose description vectors are closest to the gold's (memoised)."""
        if (gold, k) not in self._neighbours:
            self.prefetch_description_neighbours([gold], k)
        return self._neighbours.get((gold, k), [])

    def prefetch_description_neighbours(self, golds: Iterable[str], k: int) -> None:
        """Compute neighbours of many golds with one matrix product per chunk (BLAS, not loops)."""
        if self.vectors is None:
            return
        wanted = sorted({g for g in golds if g in self.row and (g, k) not in self._neighbours})
        for start in range(0, len(wanted), 256):
            chunk = wanted[start : start + 256]
            rows = np.array([self.row[g] for g in chunk])
            similarity = self.vectors[rows] @ self.vectors.T
            similarity[np.arange(len(chunk)), rows] = -np.inf
            kk = min(k, similarity.shape[1] - 1)
            top = np.argpartition(-similarity, kk, axis=1)[:, :kk]
            for gold, row, candidates in zip(chunk, similarity, top, strict=True):
                ordered = sorted(candidates, key=lambda i: (-row[i], self.qids[i]))
                self._neighbours[(gold, k)] = [self.qids[i] for i in ordered]

    def build(self, mention: Mention, size: int | None = 10, seed: int = 0) -> CandidateSet:
        rng = np.random.default_rng(_seed_for(seed, mention.id))
        if mention.candidates:
            qids = list(dict.fromkeys(mention.candidates))
            return _finish(mention, qids, rng, "dataset")
        if size is None or size >= len(self.qids):
            return _finish(mention, list(self.qids), None, "full-kb")
        if size < 1:
            raise ValueError(f"candidate set size must be >= 1, got {size}")
        gold = None if mention.is_nil or mention.gold not in self.row else mention.gold
        wanted = size - 1 if gold else size
        pool = 2 * max(wanted, 1)
        gold_label = self.entities[gold].label if gold else ""
        by_name = self.name_neighbours([mention.mention, gold_label], gold, pool)
        by_text = self.description_neighbours(gold, pool) if gold else []
        negatives = _sample_half_each(by_name, by_text, wanted, rng)
        if len(negatives) < wanted:  # small or sparse KB: fill at random, still seeded
            taken = set(negatives) | {gold}
            rest = [q for q in self.qids if q not in taken]
            extra = rng.choice(len(rest), size=min(wanted - len(negatives), len(rest)), replace=False)
            negatives += [rest[i] for i in sorted(extra)]
        return _finish(mention, ([gold] if gold else []) + negatives, rng, "kb-hard-negatives")

    def build_all(
        self, mentions: Sequence[Mention], size: int | None = 10, seed: int = 0
    ) -> list[CandidateSet]:
        if size is not None:
            self.prefetch_description_neighbours(
                (m.gold for m in mentions if not m.candidates), 2 * max(size - 1, 1)
            )
        return [self.build(m, size, seed) for m in mentions]


def _sample_half_each(
    first: list[str], second: list[str], wanted: int, rng: np.random.Generator
) -> list[str]:
    """``wanted`` distinct QIDs, half sampled from each pool's hardest half, topped up from the other."""
    chosen: list[str] = []
    half = (wanted + 1) // 2
    for pool, quota in ((first, half), (second, wanted - half)):
        fresh = [q for q in pool if q not in chosen]
        picks = rng.permutation(len(fresh))[:quota] if fresh else []
        chosen += [fresh[i] for i in sorted(picks)]
    for q in first + second:
        if len(chosen) >= wanted:
            break
        if q not in chosen:
            chosen.append(q)
    return chosen[:wanted]


def _finish(mention: Mention, qids: list[str], rng: np.random.Generator | None, source: str) -> CandidateSet:
    if rng is not None:
        qids = [qids[i] for i in rng.permutation(len(qids))]
    gold_index = qids.index(mention.gold) if mention.gold in qids else None
    return CandidateSet(mention.id, tuple(qids), gold_index, source)


def _seed_for(seed: int, mention_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{mention_id}".encode()).digest()[:8], "little")
