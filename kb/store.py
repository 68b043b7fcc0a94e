"""The knowledge base as a persistent Chroma collection of entity descriptions.

Built once per (dataset KB content, text encoder) and reused: the folder name carries a
fingerprint of both, so changing the data or the embedding model builds a new store and
never serves stale vectors. A store is built in a temporary folder and renamed into place
only after its manifest is written, so a killed build never leaves a half store that a
later run would use. The embedding function is always explicit (Chroma's default would
download a model at run time).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from tqdm import tqdm

from kb.cache import cache_dir
from kb.records import Entity

COLLECTION = "entities"
MANIFEST = "manifest.json"
BATCH = 256


class EncoderEmbeddingFunction(EmbeddingFunction[Documents]):
    """Adapts any ``encode(texts, kind) -> (N, d)`` encoder to Chroma's interface."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def __call__(self, input: Documents) -> Embeddings:  # noqa: A002 - Chroma's signature
        return list(self.encoder.encode(list(input), kind="passage"))

    def embed_query(self, input: Documents) -> Embeddings:  # noqa: A002
        return list(self.encoder.encode(list(input), kind="query"))

    @staticmethod
    def name() -> str:
        return "melrobust-encoder"

    def get_config(self) -> dict[str, Any]:
        kind = type(self.encoder)
        return {"encoder": self.encoder.name, "factory": f"{kind.__module__}:{kind.__qualname__}"}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> EncoderEmbeddingFunction:
        """Rebuild from the stored config: the encoder class is named by its import path."""
        module, _, qualname = config["factory"].partition(":")
        return EncoderEmbeddingFunction(getattr(importlib.import_module(module), qualname)())

    def default_space(self) -> str:
        return "cosine"


def kb_fingerprint(entities: dict[str, Entity], encoder_id: str) -> str:
    """Hash of every entity's id and text plus the encoder id: changes when either changes."""
    digest = hashlib.sha256(encoder_id.encode())
    for qid in sorted(entities):
        digest.update(f"\0{qid}\0{entities[qid].text()}".encode())
    return digest.hexdigest()[:16]


@dataclass
class KBStore:
    """An opened store: the Chroma collection plus the build manifest."""

    path: Path
    collection: Any
    manifest: dict[str, Any]
    reused: bool

    @property
    def count(self) -> int:
        return int(self.collection.count())

    def vectors(self, qids: Sequence[str]) -> np.ndarray:
        """Stored unit vectors of ``qids`` in the given order, shape (len(qids), d)."""
        out = []
        for start in range(0, len(qids), 5000):
            chunk = list(qids[start : start + 5000])
            got = self.collection.get(ids=chunk, include=["embeddings"])
            by_id = dict(zip(got["ids"], got["embeddings"], strict=True))
            missing = [q for q in chunk if q not in by_id]
            if missing:
                raise KeyError(f"{len(missing)} QIDs not in the KB store, e.g. {missing[:3]}")
            out.append(np.asarray([by_id[q] for q in chunk], dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def documents(self, qids: Sequence[str]) -> dict[str, dict[str, Any]]:
        got = self.collection.get(ids=list(qids), include=["documents", "metadatas"])
        return {
            qid: {"text": doc, **(meta or {})}
            for qid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
        }

    def search(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """Nearest entities to free text, as (QID, cosine similarity), best first."""
        result = self.collection.query(query_texts=[text], n_results=min(k, self.count))
        return [(qid, 1.0 - dist) for qid, dist in zip(result["ids"][0], result["distances"][0], strict=True)]


def open_store(
    dataset_name: str,
    entities: dict[str, Entity],
    encoder: Any,
    encoder_id: str,
    root: Path | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> KBStore:
    """Open the store for these entities and encoder, building it first if it does not exist."""
    import chromadb

    root = root or cache_dir("kb")
    fingerprint = kb_fingerprint(entities, encoder_id)
    path = root / f"{dataset_name}-{fingerprint}"
    reused = (path / MANIFEST).is_file()
    if not reused:
        _build(path, entities, encoder, encoder_id, fingerprint, dataset_name, progress, on_batch)
    manifest = json.loads((path / MANIFEST).read_text())
    client = chromadb.PersistentClient(path=str(path / "chroma"))
    collection = client.get_collection(COLLECTION, embedding_function=EncoderEmbeddingFunction(encoder))
    return KBStore(path, collection, manifest, reused)


@contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A private folder to build in, renamed to ``path`` only if the build completes."""
    _remove_abandoned_builds(path)
    staging = path.with_name(f"{path.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():  # another process finished first; keep its complete store
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, path)


def _build(
    path: Path,
    entities: dict[str, Entity],
    encoder: Any,
    encoder_id: str,
    fingerprint: str,
    dataset_name: str,
    progress: bool,
    on_batch: Callable[[int], None] | None,
) -> None:
    import chromadb

    with _staged(path) as staging:
        started = time.perf_counter()
        client = chromadb.PersistentClient(path=str(staging / "chroma"))
        collection = client.create_collection(
            COLLECTION,
            embedding_function=EncoderEmbeddingFunction(encoder),
            metadata={"hnsw:space": "cosine"},
        )
        qids = sorted(entities)
        bar = tqdm(total=len(qids), desc=f"kb.build {dataset_name}", unit="entity", disable=not progress)
        for start in range(0, len(qids), BATCH):
            chunk = [entities[q] for q in qids[start : start + BATCH]]
            texts = [e.text() for e in chunk]
            collection.add(
                ids=[e.qid for e in chunk],
                documents=texts,
                embeddings=encoder.encode(texts, kind="passage"),
                metadatas=[{"label": e.label, "aliases": " | ".join(e.aliases)} for e in chunk],
            )
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(start + len(chunk))
        bar.close()
        manifest = {
            "dataset": dataset_name,
            "fingerprint": fingerprint,
            "encoder": encoder_id,
            "entities": len(qids),
            "seconds": round(time.perf_counter() - started, 2),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _remove_abandoned_builds(path: Path) -> None:
    """Delete staging folders of builds whose process is gone (killed mid-build)."""
    for staging in path.parent.glob(f"{path.name}.building-*"):
        pid = staging.name.rsplit(".building-", 1)[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
