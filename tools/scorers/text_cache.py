"""Disk cache of text embeddings, keyed by (model fingerprint, exact text).

Candidate prompts ("a photo of <label>") and mention contexts are the same for every attack
step, every attack preset and every run, so each text is encoded once per model and read back
afterwards: a warm run never calls the text encoder.

The key is ``model_fingerprint``: the scorer's name plus a hash of its weights and tokenizer,
so a re-trained or differently tokenised model never reads another model's vectors.

Layout: one SQLite file per model fingerprint under the cache directory
(``$MEL_CACHE_DIR/text_embeddings``, default ``~/.cache/melrobust/text_embeddings``), table
``embeddings(text PRIMARY KEY, vector BLOB)`` holding raw (unnormalised) float32 vectors, and
``meta`` naming the fingerprint, stored through ``kb.blob_cache.BlobCache``: SQLite in WAL mode
lets many processes read while one writes; writes are ``INSERT OR IGNORE`` because two
processes that encode the same text with the same model store the same vector. An in-process
LRU in front of SQLite makes repeated lookups (an attack's 20-75 steps) free.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from kb.blob_cache import BlobCache
from kb.cache import cache_dir

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$MEL_CACHE_DIR/text_embeddings``, else ``~/.cache/melrobust/text_embeddings``."""
    return cache_dir("text_embeddings")


def model_fingerprint(name: str, model: torch.nn.Module, *extra: object, samples: int = 64) -> str:
    """``name@hash`` of a model's weights (a strided sample of every tensor) and ``extra``.

    Sampling keeps this fast for billion-parameter models while any fine-tune or re-init,
    which moves every weight, still changes it. ``extra`` carries what else decides an
    embedding: the tokenizer (its ids for a probe text) and tokenisation settings.
    """
    digest = hashlib.sha256(name.encode())
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            sample = flat[::step][:samples].to(device="cpu", dtype=torch.float64).numpy()
            digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(sample.tobytes())
    for item in extra:
        digest.update(repr(item).encode())
    return f"{name}@{digest.hexdigest()[:16]}"


def fingerprint_file_name(fingerprint: str) -> str:
    """A readable, collision-free file name for a fingerprint (which may contain / and :)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint).strip("_")[:80]
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return f"{readable}-{digest}.sqlite"


class TextEmbeddingCache:
    """Text -> embedding vectors per model fingerprint: memory LRU over per-model SQLite files.

    ``directory=None`` keeps everything in memory (tests, read-only machines). One instance is
    safe to share between threads; separate processes share the files.
    """

    def __init__(self, directory: str | Path | None, memory_items: int = 200_000) -> None:
        self.directory = None if directory is None else Path(directory).expanduser()
        self.memory_items = memory_items
        self._memory: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._stores: dict[str, BlobCache] = {}
        self._lock = threading.RLock()

    @classmethod
    def default(cls) -> TextEmbeddingCache:
        return cls(default_cache_dir())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory) if self.directory else None!r})"

    # -- public API -----------------------------------------------------------------------------

    def embed(
        self, fingerprint: str, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]
    ) -> np.ndarray:
        """(len(texts), D) float32 vectors in input order; ``encode`` sees only texts not cached.

        ``encode(unique_missing_texts)`` must return a (k, D) array; its rows are stored.
        """
        texts = list(texts)
        found = self.get_many(fingerprint, texts)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            vectors = np.asarray(encode(missing), dtype=np.float32)
            if vectors.shape[0] != len(missing):
                raise ValueError(f"encoder returned {vectors.shape[0]} vectors for {len(missing)} texts")
            self.put_many(fingerprint, missing, vectors)
            found.update(zip(missing, vectors, strict=True))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[t] for t in texts])

    def get_many(self, fingerprint: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``texts`` (memory first, then disk)."""
        found: dict[str, np.ndarray] = {}
        wanted: list[str] = []
        with self._lock:
            for text in dict.fromkeys(texts):
                vector = self._memory.get((fingerprint, text))
                if vector is None:
                    wanted.append(text)
                else:
                    self._memory.move_to_end((fingerprint, text))
                    found[text] = vector
            if wanted and self.directory is not None:
                from_disk = self._read(fingerprint, wanted)
                for text, vector in from_disk.items():
                    self._remember(fingerprint, text, vector)
                found.update(from_disk)
        return found

    def put_many(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                self._remember(fingerprint, text, vector)
            if self.directory is not None:
                self._write(fingerprint, texts, vectors)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

    # -- internals ------------------------------------------------------------------------------

    def _remember(self, fingerprint: str, text: str, vector: np.ndarray) -> None:
        vector = np.array(vector, dtype=np.float32, copy=True)
        vector.setflags(write=False)  # shared between callers: nobody may mutate it in place
        self._memory[(fingerprint, text)] = vector
        self._memory.move_to_end((fingerprint, text))
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _store(self, fingerprint: str) -> BlobCache | None:
        """The fingerprint's SQLite file, opened once (None, and memory only, when unusable)."""
        store = self._stores.get(fingerprint)
        if store is not None:
            return store
        assert self.directory is not None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            store = BlobCache(
                self.directory / fingerprint_file_name(fingerprint),
                table="embeddings",
                key_column="text",
                value_column="vector",
                on_conflict="ignore",
                timeout=60.0,
                meta={"fingerprint": fingerprint},
            )
        except (OSError, sqlite3.Error) as exc:
            log.warning(
                "text-embedding cache at %s unusable (%s); keeping embeddings in memory", self.directory, exc
            )
            self.directory = None
            return None
        self._stores[fingerprint] = store
        return store

    def _read(self, fingerprint: str, texts: list[str]) -> dict[str, np.ndarray]:
        store = self._store(fingerprint)
        if store is None:
            return {}
        return store.get_many(texts, dtype=np.float32)  # type: ignore[return-value]

    def _write(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        store = self._store(fingerprint)
        if store is None:
            return
        try:
            store.put_many(zip(texts, vectors, strict=True), dtype=np.float32)
        except sqlite3.Error as exc:
            log.warning("could not store %d text embeddings in %s: %s", len(texts), self.directory, exc)
