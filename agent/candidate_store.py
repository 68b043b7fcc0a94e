"""The agent's Chroma store: candidate evidence and the LLM's candidate descriptions.

Two persistent collections with an explicit embedding function (the KB's MiniLM encoder;
Chroma's default would download a model):

* ``evidence``: one document per (candidate QID, wiki mode): the retrieved Wikipedia and
  Wikidata text, so a candidate is looked up once, and so the store can rank the
  candidates by how close their evidence is to the image descriptors and the caption.
* ``descriptions``: one sentence per (QID, evidence digest, LLM, prompt version): an
  enriched description is written once and reused by every mention that meets the same
  candidate with the same evidence through the same model.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kb.cache import cache_dir
from kb.store import EncoderEmbeddingFunction


def evidence_digest(records: Sequence[dict[str, Any]]) -> str:
    """A short hash of evidence records: a description is tied to the evidence it came from."""
    payload = json.dumps([[r.get("source"), r.get("title"), r.get("text")] for r in records], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class CandidateStore:
    """Evidence and descriptions of candidate entities in one Chroma database."""

    def __init__(self, encoder: Any, path: Path | None = None) -> None:
        import chromadb

        self.path = path or cache_dir("agent", "chroma")
        client = chromadb.PersistentClient(path=str(self.path))
        function = EncoderEmbeddingFunction(encoder)
        space = {"hnsw:space": "cosine"}
        self.evidence = client.get_or_create_collection(
            "evidence", embedding_function=function, metadata=space
        )
        self.descriptions = client.get_or_create_collection(
            "descriptions", embedding_function=function, metadata=space
        )
        self._writers: dict[str, threading.Lock] = {}
        self._writers_guard = threading.Lock()

    @contextmanager
    def writing(self, description_id: str) -> Iterator[None]:
        """One writer per description (candidate, evidence, prompt) among concurrent decisions (``--concurrency``): the
        others wait, then read what it stored, instead of asking the LLM the same question again."""
        with self._writers_guard:
            lock = self._writers.setdefault(description_id, threading.Lock())
        with lock:
            yield

    @staticmethod
    def _evidence_id(qid: str, mode: str) -> str:
        return f"{qid}@{mode}"

    def stored_evidence(self, qids: Sequence[str], mode: str) -> dict[str, list[dict[str, Any]]]:
        """Evidence already stored for these candidates (QID -> records)."""
        if not qids:
            return {}
        got = self.evidence.get(ids=[self._evidence_id(q, mode) for q in qids], include=["metadatas"])
        return {meta["qid"]: json.loads(meta["records"]) for meta in got["metadatas"] if meta}

    def put_evidence(
        self, evidence: dict[str, list[dict[str, Any]]], labels: dict[str, str], mode: str
    ) -> None:
        """Write (or replace) the evidence documents of these candidates."""
        if not evidence:
            return
        qids = sorted(evidence)
        self.evidence.upsert(
            ids=[self._evidence_id(q, mode) for q in qids],
            documents=[evidence_document(labels.get(q, q), evidence[q]) for q in qids],
            metadatas=[
                {"qid": q, "mode": mode, "records": json.dumps(evidence[q], ensure_ascii=False)} for q in qids
            ],
        )

    def rank_evidence(self, query: str, qids: Sequence[str], mode: str) -> dict[str, float]:
        """Cosine similarity of each candidate's stored evidence to ``query`` (QID -> score)."""
        return {qid: score for qid, score, _ in self.nearest_evidence(query, mode, qids, len(qids))}

    def nearest_evidence(
        self, query: str, mode: str, qids: Sequence[str] | None = None, k: int = 3
    ) -> list[tuple[str, float, list[dict[str, Any]]]]:
        """The ``k`` stored evidence documents nearest to ``query`` (among ``qids`` when given):
        (QID, cosine similarity, its evidence records), nearest first."""
        if not query.strip() or (qids is not None and not qids):
            return []
        where: dict[str, Any] = {"mode": mode}
        if qids is not None:
            where = {"$and": [{"qid": {"$in": list(qids)}}, {"mode": mode}]}
        count = self.evidence.count()
        if count == 0:
            return []
        result = self.evidence.query(
            query_texts=[query], n_results=min(k, count), where=where, include=["metadatas", "distances"]
        )
        return [
            (meta["qid"], round(1.0 - float(distance), 5), json.loads(meta["records"]))
            for meta, distance in zip(result["metadatas"][0], result["distances"][0], strict=True)
        ]

    @staticmethod
    def description_id(qid: str, digest: str, model: str, prompt_version: str) -> str:
        key = hashlib.sha256(f"{qid}\0{digest}\0{model}\0{prompt_version}".encode()).hexdigest()[:24]
        return f"{qid}:{key}"

    def get_descriptions(self, ids: dict[str, str]) -> dict[str, str]:
        """Stored descriptions for ``{qid: description_id}`` (QID -> text), missing ones absent."""
        if not ids:
            return {}
        got = self.descriptions.get(ids=list(ids.values()), include=["documents"])
        by_id = dict(zip(got["ids"], got["documents"], strict=True))
        return {qid: by_id[key] for qid, key in ids.items() if key in by_id}

    def put_descriptions(self, texts: dict[str, tuple[str, str]], model: str) -> None:
        """Write ``{qid: (description_id, text)}``."""
        if not texts:
            return
        qids = sorted(texts)
        self.descriptions.upsert(
            ids=[texts[q][0] for q in qids],
            documents=[texts[q][1] for q in qids],
            metadatas=[{"qid": q, "model": model} for q in qids],
        )


def evidence_document(label: str, records: Sequence[dict[str, Any]]) -> str:
    """The text embedded for a candidate: its label, then each evidence text."""
    return "\n".join([label, *(r["text"] for r in records if r.get("text"))])
