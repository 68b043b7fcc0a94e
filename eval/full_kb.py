"""Full-KB ranking: each mention against the whole KB, one matrix product per batch, top-k storage.

``eval.run --candidates all`` (or any λ above ``eval.config.FULL_KB_ABOVE`` = 100) runs this
pipeline instead of ``eval.pipelines.PrerankPipeline``; the setting of MIMIC and most MEL
papers (the seed paper and UniMEL use λ-candidate lists instead).

**Ranking.** The KB's candidate texts (the scorer family's template around each label, exactly
the texts ``kb.runcore.items.prepare`` gives the per-mention path) are embedded once by the
scorer (``candidate_embeddings``, through its on-disk text cache) into one (U, D) matrix of unit
vectors, U = the distinct texts (entities sharing a text share a row, so they tie exactly).
Mention queries (``query_embedding``: the context for t2t, the image or the IT2T fusion for the
image tasks) are embedded in batches of ``--batch-size``; each batch is one (B, D) x (D, U)
product gathered to the N entities, ``torch.topk`` keeps the best k, and the gold's rank is
counted on the whole row with ``kb.ranking``'s pessimistic ties. Scores equal the per-mention
path's (``forward`` over all N texts) up to float rounding, |Δ logit| ≤ 1e-4 at the tagger's
logit scale 100 (``tests/test_full_kb.py``), so ranks and metrics are the same. Query vectors,
the KB matrix and the scorer's scale are kept per scorer identity (``eval.full_kb_rank.
EmbeddingStore``), so a warm run, like the λ path's score cache, never loads the model.

**Storage.** An item line keeps ``ranking`` (the top ``--keep-top`` k, default 100; 0 keeps all)
with ``ranking_scores`` (same order, best first), and the gold's ``rank`` and ``gold_score``,
plus ``n_candidates`` and ``candidate_source``; no per-candidate list. Ranks come from the full
ranking before it is cut, so acc@k (``eval.metrics.FULL_KB_KS``: 1, 3, 5, 10, 20), MRR and MR
(over the whole KB) are exact whatever k.

**MCR** (paper 003) — this project's interpretation, since the paper ranks λ = 100 candidates:
i2t is its visual-text dual encoder alone (S_image = cos / tau), so the matrix gives exact
full-KB scores. t2t and it2t read the cross-encoder S_text, which has no embedding to put in a
matrix and costs one transformer pass per (mention, entity) pair (97 M pairs for the WikiMEL
test split), so they are two-stage: the dual encoder (MiniLM context, image, or their IT2T
fusion, against "a photo of <label>") retrieves the top k, and MCR's ``forward`` reranks those k
(``reranked`` in the line). The final ranking is the reranked k, then the rest in retrieval
order: a gold outside the k keeps its retrieval rank (``gold_stage: retrieval``).

**Index.** ``--kb-index exact`` holds the matrix in memory (WikiMEL's 18,880 x 384 floats are
29 MB; MIMIC's 110k, 169 MB). ``hnsw`` ranks with an approximate Chroma HNSW index of the same
vectors (``eval.full_kb_index``, built once in chunks and kept in the cache), for KBs whose
matrix does not fit: a gold outside the approximate top k gets rank k + 1 (``rank_exact:
false``), so acc@j for j ≤ k is the approximate ranker's own, MRR is within 1 / (k + 1) and MR
a lower bound. ``auto`` (default) is exact up to ``EXACT_MAX_ENTITIES`` entities.

Scorers without the embedding methods (the CLIP family here) are scored per mention by
``forward`` over the whole KB (``eval.scoring``), as before, and stored cut the same way.
With ``--executor ray`` this pipeline still runs in-process (the product takes seconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from eval.config import FULL_KB_ABOVE, RunConfig, scorer_identity
from eval.full_kb_rank import EmbeddingStore, KBMatrix, Ranked, query_key, rank_rows, reranked
from eval.metrics import FULL_KB_KS
from eval.scoring import LazyScorer, pixels_of, score_missing
from kb.candidates import CandidateBuilder, CandidateSet
from kb.dataset import Dataset
from kb.errors import ImageError
from kb.records import Mention
from kb.runcore.items import IMAGE_TASKS, PreparedItem, candidate_builder, prepare, score_key
from kb.runcore.selection import select_mentions
from tools.scorers.families import family_of, template_for

__all__ = ["FullKBPipeline", "Ranked", "describe", "embeds", "rank_rows", "uses_full_kb"]

KB_INDEXES = ("auto", "exact", "hnsw")
EXACT_MAX_ENTITIES = 2_000_000
"""``--kb-index auto`` holds the matrix in memory up to this many entities (3 GB at 384-d)."""
FULL_KB = "full-kb"


def uses_full_kb(config: RunConfig) -> bool:
    """Whether ``config`` is a full-KB run: the prerank pipeline with λ = all or λ > 100."""
    return config.pipeline == "prerank" and (config.candidates is None or config.candidates > FULL_KB_ABOVE)


def embeds(scorer: torch.nn.Module) -> bool:
    """Whether a scorer (and MCR's dual encoder inside it) has the query / candidate embeddings."""
    parts = (scorer, getattr(scorer, "image_text", scorer))
    return all(
        callable(getattr(p, n, None)) for p in parts for n in ("query_embedding", "candidate_embeddings")
    )


class FullKBPipeline:
    """Ranks prepared items against the whole KB (or their λ > 100 sets) and writes cut lines."""

    def __init__(self, config: RunConfig, dataset: Dataset, progress: bool) -> None:
        if config.kb_index not in KB_INDEXES:
            raise ValueError(f"--kb-index must be one of {', '.join(KB_INDEXES)}, got {config.kb_index!r}")
        if config.keep_top < 0:
            raise ValueError(f"--keep-top must be >= 0 (0 keeps the whole ranking), got {config.keep_top}")
        self.config, self.dataset, self.progress = config, dataset, progress
        self.qids = tuple(sorted(dataset.entities))
        self.row = {qid: i for i, qid in enumerate(self.qids)}
        self.template = template_for(config.scorer)
        self.texts = [self.template.format(dataset.entities[q].label) for q in self.qids]
        self.identity = scorer_identity(config.scorer, config.checkpoint)
        self.scorer = LazyScorer(config)
        self.store = EmbeddingStore(self.identity)
        self.ks = FULL_KB_KS
        self.index = config.kb_index
        if self.index == "auto":
            self.index = "exact" if len(self.qids) <= EXACT_MAX_ENTITIES else "hnsw"
        self.mode: str | None = None  # "matrix", "retrieve+rerank" or "per-mention", once known
        self.kb_seconds = 0.0
        self._builder: CandidateBuilder | None = None
        self._kb: Any = None
        self._bar: Any = None
        self._prefetched = False

    @property
    def load_seconds(self) -> float:
        return self.scorer.load_seconds

    def prepare(self, mentions: list[Mention], seed: int, digests: dict) -> list[PreparedItem]:
        """Items of one chunk. A full-KB set is the KB itself: one shared tuple of QIDs and one
        shared list of texts, with ``prepare``'s skip reasons, context and image digest."""
        task, config = self.config.task, self.config
        sampled = [m for m in mentions if m.candidates or config.candidates is not None]
        if sampled and self._builder is None:  # λ > 100 or the dataset's own lists
            self._builder = candidate_builder(self.dataset)
        sets = self._builder.build_all(sampled, config.candidates, seed) if sampled else []
        built = dict(zip((m.id for m in sampled), sets, strict=True))
        items = []
        for m in mentions:
            if m.id in built:
                items.append(prepare(m, built[m.id], self.dataset, task, self.template, digests))
                continue
            probe = CandidateSet(m.id, self.qids[:1], None, FULL_KB)
            item = prepare(m, probe, self.dataset, task, self.template, digests)
            full = CandidateSet(m.id, self.qids, self.row.get(m.gold), FULL_KB)
            items.append(replace(item, candidates=full, candidate_texts=self.texts, key=""))
        return items

    def process(self, items: list[PreparedItem], seed: int, condition: str) -> Iterator[dict[str, Any]]:
        ranked = self.rank([i for i in items if i.skip is None])
        for item in items:
            yield full_kb_record(item, ranked.get(item.mention.id), seed, condition)

    def finish(self, condition: str) -> Iterator[dict[str, Any]]:
        return iter(())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self.store.close()

    # -- ranking ----------------------------------------------------------------------------------

    def embedding_meta(self) -> dict[str, Any]:
        """``{embeds, exact, scale}`` of the scorer for this task: from the store, else from the
        loaded scorer (then remembered, so a warm run needs no model)."""
        meta = self.store.meta(self.config.task)
        if meta is None:
            scorer = self.scorer()
            meta = {"embeds": embeds(scorer), "exact": True, "scale": None}
            if meta["embeds"]:
                meta["exact"] = bool(getattr(scorer, "embeddings_are_exact", True))
                meta["scale"] = float(scorer.embedding_scale)
            self.store.put_meta(self.config.task, meta)
        return meta

    def rank(self, items: list[PreparedItem]) -> dict[str, Ranked]:
        """Ranked results of scorable items by mention id; unreadable images become skips."""
        if not items:
            return {}
        meta = self.embedding_meta()
        if not meta["embeds"]:
            self.mode = "per-mention"
            return self._per_mention(items)
        self.mode = "matrix" if meta["exact"] else "retrieve+rerank"
        full = [i for i in items if i.candidates.qids is self.qids]
        sampled = [i for i in items if i.candidates.qids is not self.qids]
        matrix_ok = self.index == "exact" and all(q in self.row for i in sampled for q in i.candidates.qids)
        out = {} if matrix_ok else self._per_mention(sampled)
        keep, scale = self.config.keep_top, meta["scale"]
        for batch, queries in self.query_batches(full + sampled if matrix_ok else full):
            if self.index == "hnsw":
                found = self.kb().rank(queries, [i.candidates.gold_index for i in batch], keep, scale)
            else:
                found = self._rank_batch(batch, self.kb().scores(queries, scale), keep)
            retrieved = {item.mention.id: r for item, r in zip(batch, found, strict=True)}
            if not meta["exact"]:  # MCR t2t/it2t: the cross-encoder reranks what the dual encoder found
                self._rerank(batch, retrieved)
            out.update(retrieved)
        return out

    def _rank_batch(self, batch: list[PreparedItem], scores: torch.Tensor, keep: int) -> list[Ranked]:
        """Full-KB rows ranked together; a λ > 100 set ranks its own columns of its KB row."""
        whole = [b for b, item in enumerate(batch) if item.candidates.qids is self.qids]
        found: dict[int, Ranked] = {}
        if whole:
            golds = [batch[b].candidates.gold_index for b in whole]
            rows = scores if len(whole) == len(batch) else scores[whole]
            found.update(zip(whole, rank_rows(rows, golds, keep), strict=True))
        for b, item in enumerate(batch):
            if b not in found:
                row = scores[b, [self.row[q] for q in item.candidates.qids]]
                found[b] = rank_rows(row.unsqueeze(0), [item.candidates.gold_index], keep)[0]
        return [found[b] for b in range(len(batch))]

    def query_batches(self, items: list[PreparedItem]) -> Iterator[tuple[list[PreparedItem], torch.Tensor]]:
        """Batches of ``--batch-size`` items with their (B, D) unit queries; ``kb().scores`` of a
        batch is its (B, N) logits over the whole KB, before any cut."""
        size = self.config.batch_size
        for start in range(0, len(items), size):
            rows = self._queries(items[start : start + size])
            if rows:
                yield [item for item, _ in rows], torch.stack([query for _, query in rows])

    def kb(self) -> Any:
        """The KB matrix (or its HNSW index): from the store, else embedded once (loading the scorer)."""
        if self._kb is None:
            started = time.perf_counter()
            if self.index == "hnsw":
                from eval.full_kb_index import HnswRanker

                self._kb = HnswRanker.open(self.identity, self.texts, self.embed_candidates, self.progress)
            else:
                unique = list(dict.fromkeys(self.texts))
                self._kb = KBMatrix(self.texts, self.store.matrix(unique, self.embed_candidates))
            self.kb_seconds = time.perf_counter() - started
        return self._kb

    def embed_candidates(self, texts: list[str]) -> np.ndarray:
        if self._bar is None:
            total = len(dict.fromkeys(self.texts))
            self._bar = tqdm(total=total, desc="KB matrix", unit="entity", disable=not self.progress)
        with torch.no_grad():
            vectors = self.scorer().candidate_embeddings(texts).float().numpy()
        self._bar.update(len(texts))
        return vectors

    def _queries(self, items: list[PreparedItem]) -> list[tuple[PreparedItem, torch.Tensor]]:
        """(item, unit query vector) in item order, from the store or the scorer (text queries in
        one call, images one by one); an unreadable image becomes the item's skip."""
        task = self.config.task
        keys = {id(item): query_key(task, item) for item in items}
        found = self.store.get(list(keys.values()))
        missing = [i for i in items if keys[id(i)] not in found]
        if missing and task not in IMAGE_TASKS and not self._prefetched:
            self._prefetch_contexts()  # once: every context of the run in one length-sorted call
            found.update(self.store.get([keys[id(i)] for i in missing]))
            missing = [i for i in items if keys[id(i)] not in found]
        if missing and task not in IMAGE_TASKS:
            with torch.no_grad():
                vectors = self.scorer().query_embedding(None, [i.context for i in missing]).float().numpy()
            fresh = {keys[id(i)]: v for i, v in zip(missing, vectors, strict=True)}
        elif missing:
            fresh = {}
            for item in missing:
                try:
                    pixels = pixels_of(item)
                except ImageError as exc:
                    item.skip = f"image_{exc.reason}"
                    continue
                context = [item.context] if item.context is not None else None
                with torch.no_grad():
                    fresh[keys[id(item)]] = self.scorer().query_embedding(pixels, context).float().numpy()[0]
        if missing:
            self.store.put(fresh)
            found.update(fresh)
        return [(i, torch.from_numpy(np.array(found[keys[id(i)]]))) for i in items if keys[id(i)] in found]

    def _prefetch_contexts(self) -> None:
        """Embed the missing contexts of all the run's mentions (``select_mentions``, as ``eval.run``
        selects them) in one call: the encoder sorts them by length, so batches carry little
        padding (half the time of 64 at a time on WikiMEL's captions)."""
        self._prefetched = True
        config = self.config
        mentions = select_mentions(self.dataset, config.split, config.limit, config.with_images)
        wanted = {}
        for m in mentions:
            context = m.context_text()
            if context:
                wanted[score_key(config.task, None, m.bbox, context, ())] = context
        known = self.store.get(list(wanted))
        missing = [k for k in wanted if k not in known]
        for start in range(0, len(missing), 8192):
            keys = missing[start : start + 8192]
            with torch.no_grad():
                vectors = self.scorer().query_embedding(None, [wanted[k] for k in keys]).float().numpy()
            self.store.put(dict(zip(keys, vectors, strict=True)))

    def _per_mention(self, items: list[PreparedItem]) -> dict[str, Ranked]:
        """``forward`` over each item's whole candidate list (``eval.scoring``), then cut."""
        if not items:
            return {}
        score_missing(items, self.scorer, self.config)
        keep = self.config.keep_top
        return {
            i.mention.id: rank_rows(
                torch.from_numpy(np.asarray(i.logits, np.float32))[None], [i.candidates.gold_index], keep
            )[0]
            for i in items
            if i.logits is not None
        }

    def _rerank(self, items: list[PreparedItem], ranked: dict[str, Ranked]) -> None:
        """MCR t2t/it2t: ``forward`` on each item's retrieved top k; the rest keep retrieval order."""
        scorer, image = self.scorer(), self.config.task in IMAGE_TASKS
        groups: dict[int, list[PreparedItem]] = {}
        for item in items:
            groups.setdefault(len(ranked[item.mention.id].order), []).append(item)
        for group in groups.values():
            step = 1 if image else self.config.batch_size
            for start in range(0, len(group), step):
                chunk = group[start : start + step]
                labels = [[i.candidate_texts[j] for j in ranked[i.mention.id].order] for i in chunk]
                contexts = [i.context for i in chunk] if chunk[0].context is not None else None
                try:
                    pixels = pixels_of(chunk[0]) if image else None
                    with torch.no_grad():
                        logits = scorer(pixels, contexts, labels).float().numpy()
                except (ImageError, RuntimeError, ValueError) as exc:
                    for item in chunk:
                        item.skip = f"scorer_error: {type(exc).__name__}: {str(exc)[:200]}"
                        ranked.pop(item.mention.id)
                    continue
                for item, row in zip(chunk, logits, strict=True):
                    ranked[item.mention.id] = reranked(
                        ranked[item.mention.id], row, item.candidates.gold_index
                    )


def full_kb_record(item: PreparedItem, ranked: Ranked | None, seed: int, condition: str) -> dict[str, Any]:
    """The ``items.jsonl`` line of a full-KB item: the kept top k, the gold's rank and score."""
    mention, candidates = item.mention, item.candidates
    record: dict[str, Any] = {
        "condition": condition,
        "id": mention.id,
        "seed": seed,
        "gold": mention.gold,
        "candidate_source": candidates.source,
        "n_candidates": len(candidates.qids),
        **item.notes,
    }
    if item.skip is not None or ranked is None:
        return {**record, "error": item.skip or "not_ranked"}
    qids = candidates.qids
    return {
        **record,
        "ranking": [qids[i] for i in ranked.order],
        "ranking_scores": np.round(np.asarray(ranked.scores, np.float64), 5).tolist(),
        "prediction": qids[ranked.order[0]],
        "correct": ranked.rank == 1,
        "rank": ranked.rank,
        "gold_score": None if ranked.gold_score is None else round(ranked.gold_score, 5),
        "gold_in_candidates": candidates.gold_index is not None,
        **ranked.extra,
        "error": None,
    }


def describe(pipeline: FullKBPipeline) -> dict[str, Any]:
    """``results.json["full_kb"]``: how the run ranked (a resumed run that ranked nothing new
    infers the mode from the scorer family)."""
    config, mode = pipeline.config, pipeline.mode
    if mode is None:
        family = family_of(config.scorer)
        by_family = {"tagger": "matrix", "mcr": "matrix" if config.task == "i2t" else "retrieve+rerank"}
        mode = by_family.get(family, "per-mention")
    return {
        "entities": len(pipeline.qids),
        "keep_top": config.keep_top,
        "index": pipeline.index if mode != "per-mention" else "none",
        "mode": mode,
        "ranks_exact": pipeline.index == "exact" or mode == "per-mention",
        "kb_seconds": round(pipeline.kb_seconds, 2),
    }
