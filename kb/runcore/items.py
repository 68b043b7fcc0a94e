"""One mention made ready to score or attack: its candidate set, the candidates' texts, its context.

``eval.run``, ``attacks.generate``, the agent and MCR training all build candidates through
``candidate_builder`` and items through ``prepare``, so an adversarial image is made against
exactly the candidate set (same builder, seed, texts and context) that evaluation later scores.
The candidate prompt template is the scorer family's (``tools.scorers.template_for``): the
caller passes it in, since scorers live in the layer above.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kb.candidates import CandidateBuilder, CandidateSet
from kb.dataset import Dataset
from kb.records import Mention

IMAGE_TASKS = ("i2t", "it2t")
TEXT_TASKS = ("it2t", "t2t")
TASKS = ("i2t", "it2t", "t2t")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (images and checkpoints are identified by content, not path)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def score_key(
    task: str, image_digest: str | None, bbox: object, context: str | None, candidates: Sequence[str]
) -> str:
    """Hash of everything a clean score depends on besides the scorer (see ``eval.score_cache``)."""
    payload = json.dumps([task, image_digest, bbox, context, list(candidates)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def candidate_builder(dataset: Dataset, progress: bool = True) -> CandidateBuilder:
    """The dataset's candidate builder, with description vectors from its KB store for hard negatives."""
    from kb.build import store_for

    store = store_for(dataset, progress=progress)
    return CandidateBuilder(dataset.entities, store.vectors(sorted(dataset.entities)))


@dataclass
class PreparedItem:
    mention: Mention
    candidates: CandidateSet
    candidate_texts: list[str]
    context: str | None
    image_digest: str | None
    key: str = ""
    logits: np.ndarray | None = None
    skip: str | None = None
    source: Path | None = None  # scored instead of the mention's image: a stored adversarial image
    notes: dict[str, Any] = field(default_factory=dict)  # extra fields for the item's record

    def refresh_key(self, task: str) -> None:
        """Score-cache key of exactly what is scored (a stored image is already cropped)."""
        bbox = None if self.source is not None else self.mention.bbox
        self.key = score_key(task, self.image_digest, bbox, self.context, self.candidate_texts)


def prepare(
    mention: Mention,
    candidates: CandidateSet,
    dataset: Dataset,
    task: str,
    template: str,
    digests: dict[Path, str],
) -> PreparedItem:
    """Texts and context for ``task``, or the reason the item cannot be scored (``skip``).

    ``template`` formats each candidate's label (e.g. "a photo of {}"); ``digests`` memoises
    image hashes across the items of a run.
    """
    texts = [
        template.format(dataset.entities[q].label if q in dataset.entities else q) for q in candidates.qids
    ]
    context = mention.context_text() if task in TEXT_TASKS else None
    item = PreparedItem(mention, candidates, texts, context, None)
    if task in TEXT_TASKS and not context:
        item.skip = "no_text"
    if task in IMAGE_TASKS:
        item.skip = mention.image_skip_reason() or item.skip
        if mention.has_image:
            if mention.image_path not in digests:
                digests[mention.image_path] = file_digest(mention.image_path)
            item.image_digest = digests[mention.image_path]
    if not candidates.qids:  # e.g. an empty knowledge base: nothing to rank
        item.skip = "no_candidates"
    if item.skip is None:
        item.refresh_key(task)
    return item


def mention_row(mention: Mention) -> dict[str, Any]:
    """A ``Mention`` as JSON (paths as strings, tuples as lists), for worker processes."""
    return mention.to_json()


def mention_from_row(row: dict[str, Any]) -> Mention:
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in row.items()}
    fields["image_path"] = Path(row["image_path"]) if row["image_path"] else None
    return Mention(**fields)


def candidates_row(candidates: CandidateSet) -> dict[str, Any]:
    return asdict(candidates)


def candidates_from_row(row: dict[str, Any]) -> CandidateSet:
    return CandidateSet(row["mention_id"], tuple(row["qids"]), row["gold_index"], row["source"])
