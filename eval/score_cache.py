"""Memo of candidate scores keyed by everything that determines them.

A clean evaluation is a pure function of (scorer identity, task, image bytes, crop box,
context text, candidate texts). Storing the logits under a hash of exactly those inputs lets
a warm re-run, another seed that reorders the same candidates, or the clean half of an
attack study skip the model entirely (the model is not even loaded when every item hits).
Adversarial images are new bytes, so they can never hit a clean entry by mistake.
One SQLite file per scorer identity under ``$MEL_CACHE_DIR/scores``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kb.cache import cache_dir


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ScoreCache:
    def __init__(self, scorer_id: str, directory: Path | None = None) -> None:
        directory = directory or cache_dir("scores")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", scorer_id)[:80]
        suffix = hashlib.sha256(scorer_id.encode()).hexdigest()[:12]
        self.connection = sqlite3.connect(directory / f"{safe}-{suffix}.sqlite", timeout=30)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, logits BLOB)")

    @staticmethod
    def key(
        task: str, image_digest: str | None, bbox: object, context: str | None, candidates: Sequence[str]
    ) -> str:
        payload = json.dumps([task, image_digest, bbox, context, list(candidates)], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for key, blob in self.connection.execute(
                f"SELECT key, logits FROM scores WHERE key IN ({marks})", chunk
            ):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, entries: dict[str, np.ndarray]) -> None:
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?)",
                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in entries.items()],
            )
