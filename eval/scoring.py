"""The prerank pipeline's scoring: a scorer loaded on the first cache miss, batches that fail alone.

Image items are scored one at a time (images differ in size, and resizing is the scorer's
job); text items in batches of equal candidate count. An unreadable image becomes a skip with
the reader's reason and a scorer failure that item's ``scorer_error``: one bad input never
takes its neighbours down. Loading the model is not guarded: a scorer that cannot load fails
the run at once with its own message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from eval.config import RunConfig
from kb.errors import ImageError
from kb.images import load_pixels
from kb.runcore.items import IMAGE_TASKS, PreparedItem


class LazyScorer:
    """Loads the scorer on the first cache miss: a fully cached run never loads a model."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._scorer: torch.nn.Module | None = None
        self.load_seconds = 0.0

    def __call__(self) -> torch.nn.Module:
        if self._scorer is None:
            from tools.scorers import load_scorer

            started = time.perf_counter()
            kwargs = {"checkpoint": self.config.checkpoint} if self.config.checkpoint else {}
            if kwargs and not self.config.scorer.startswith("mcr"):
                raise ValueError("--checkpoint is for mcr; give CLIP-family weights in the name (clip:DIR)")
            self._scorer = load_scorer(self.config.scorer, task=self.config.task, **kwargs).eval()
            self.load_seconds = time.perf_counter() - started
        return self._scorer


def pixels_of(item: PreparedItem) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: the item's adversarial image if it has one, else its mention's."""
    if item.source is not None:
        return load_pixels(item.source).unsqueeze(0)
    return load_pixels(item.mention.image_path, item.mention.bbox).unsqueeze(0)


def score_missing(items: list[PreparedItem], scorer: LazyScorer, config: RunConfig) -> None:
    """Fill ``logits`` of items the cache did not have (or their ``skip`` reason)."""
    model = scorer()
    if config.task in IMAGE_TASKS:
        for item in items:
            try:
                pixels = pixels_of(item)
            except ImageError as exc:
                item.skip = f"image_{exc.reason}"
                continue
            _score(model, [item], pixels)
        return
    for batch in _batches_by_width(items, config.batch_size):
        if not _score(model, batch, None) and len(batch) > 1:
            for item in batch:  # retried one by one so one bad input cannot fail its batch
                item.skip = None
                _score(model, [item], None)


def _score(model: torch.nn.Module, batch: list[PreparedItem], pixels: torch.Tensor | None) -> bool:
    contexts = [i.context for i in batch] if batch[0].context is not None else None
    try:
        with torch.no_grad():
            logits = model(pixels, contexts, [i.candidate_texts for i in batch]).float().numpy()
    except Exception as exc:  # noqa: BLE001 - recorded per item, the run goes on
        for item in batch:
            item.skip = f"scorer_error: {type(exc).__name__}: {str(exc)[:200]}"
        return False
    for item, row in zip(batch, logits, strict=True):
        item.logits = row
    return True


def _batches_by_width(items: list[PreparedItem], size: int) -> Iterator[list[PreparedItem]]:
    by_width: dict[int, list[PreparedItem]] = {}
    for item in items:
        by_width.setdefault(len(item.candidate_texts), []).append(item)
    for group in by_width.values():
        for start in range(0, len(group), size):
            yield group[start : start + size]
