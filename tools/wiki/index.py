"""A small in-memory BM25 index (Okapi BM25, k1 = 1.2, b = 0.75) in CSR arrays.

Enough for the offline replica's ten thousand articles: postings are built once with numpy,
each posting stores its precomputed BM25 term weight, and a query only touches the postings
of its own terms, so a search costs a few hundred microseconds.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"\w+")
_MARKS = re.compile(r"[\u0300-\u036f]")


def fold(text: str) -> str:
    """Lower case without accents ("Pelé" -> "pele"), so a query matches either spelling."""
    return _MARKS.sub("", unicodedata.normalize("NFKD", text)).casefold()


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(fold(text))


class Bm25Index:
    """BM25 scores of a query against every document, documents given as token lists."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(documents)
        self.vocabulary: dict[str, int] = {}
        terms: list[int] = []
        docs: list[int] = []
        counts: list[int] = []
        lengths = np.zeros(self.size, dtype=np.float32)
        for doc, tokens in enumerate(documents):
            lengths[doc] = len(tokens)
            for token, count in Counter(tokens).items():
                terms.append(self.vocabulary.setdefault(token, len(self.vocabulary)))
                docs.append(doc)
                counts.append(count)
        term_ids = np.asarray(terms, dtype=np.int64)
        order = np.argsort(term_ids, kind="stable")
        self._docs = np.asarray(docs, dtype=np.int32)[order]
        tf = np.asarray(counts, dtype=np.float32)[order]
        frequency = np.bincount(term_ids, minlength=len(self.vocabulary))
        self._starts = np.concatenate([[0], np.cumsum(frequency)])
        average = float(lengths.mean()) if self.size and lengths.mean() > 0 else 1.0
        norm = k1 * (1 - b + b * lengths[self._docs] / average)
        self._weights = (tf * (k1 + 1) / (tf + norm)).astype(np.float32)
        self._idf = np.log1p((self.size - frequency + 0.5) / (frequency + 0.5)).astype(np.float32)

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """One score per document (0 where no query term occurs); repeated terms count again."""
        scores = np.zeros(self.size, dtype=np.float32)
        for token, times in Counter(tokens).items():
            term = self.vocabulary.get(token)
            if term is None:
                continue
            span = slice(self._starts[term], self._starts[term + 1])
            scores[self._docs[span]] += times * self._idf[term] * self._weights[span]
        return scores


def top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` best positive scores, best first (ties: lower index first)."""
    positive = np.flatnonzero(scores > 0)
    if positive.size > k:
        positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
    return sorted(positive.tolist(), key=lambda i: (-scores[i], i))
