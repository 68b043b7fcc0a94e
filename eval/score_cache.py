"""Memo of candidate scores keyed by everything that determines them.

A clean evaluation is a pure function of (scorer identity, task, image bytes, crop box,
context text, candidate texts). Storing the logits under a hash of exactly those inputs lets
a warm re-run, another seed that reorders the same candidates, or the clean half of an
attack study skip the model entirely (the model is not even loaded when every item hits).
Adversarial images are new bytes, so they can never hit a clean entry by mistake.
One SQLite file per scorer identity under ``$MEL_CACHE_DIR/scores``, table
``scores(key, logits)`` of float32 logits, stored through ``kb.blob_cache.BlobCache`` (WAL,
safe to share between threads and processes); a key written twice keeps the last logits.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kb.blob_cache import BlobCache
from kb.cache import cache_dir
from kb.runcore.items import file_digest, score_key

__all__ = ["ScoreCache", "file_digest"]


class ScoreCache:
    """Clean logits (float32 vectors) per ``key``, in one SQLite file per scorer identity."""

    def __init__(self, scorer_id: str, directory: Path | None = None) -> None:
        directory = directory or cache_dir("scores")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", scorer_id)[:80]
        suffix = hashlib.sha256(scorer_id.encode()).hexdigest()[:12]
        self.store = BlobCache(
            directory / f"{safe}-{suffix}.sqlite",
            table="scores",
            key_column="key",
            value_column="logits",
            on_conflict="replace",
            timeout=30.0,
        )

    @property
    def connection(self) -> sqlite3.Connection:
        """This process's connection to the file (for callers that query it directly)."""
        return self.store.connection

    @staticmethod
    def key(
        task: str, image_digest: str | None, bbox: object, context: str | None, candidates: Sequence[str]
    ) -> str:
        return score_key(task, image_digest, bbox, context, candidates)

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return self.store.get_many(keys, dtype=np.float32)  # type: ignore[return-value]

    def put_many(self, entries: dict[str, np.ndarray]) -> None:
        self.store.put_many(entries, dtype=np.float32)

    def close(self) -> None:
        self.store.close()
