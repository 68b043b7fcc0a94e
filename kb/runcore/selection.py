"""Which mentions a run works on: a split, optionally only the pictured ones, then the first N."""

from __future__ import annotations

from kb.dataset import Dataset
from kb.records import Mention

DEFAULT_SPLIT = "test"
"""The split every command reads unless told otherwise (``all`` takes every mention)."""


def select_mentions(
    dataset: Dataset, split: str = DEFAULT_SPLIT, limit: int | None = None, pictured_only: bool = False
) -> list[Mention]:
    """The split's mentions, only those whose image is on disk when ``pictured_only``, first ``limit``.

    ``pictured_only`` filters before ``limit``, so ``--limit 6 --with-images`` means six pictured
    mentions, not the pictured ones among the first six.
    """
    mentions = dataset.split(split)
    if pictured_only:  # e.g. a partial image download: work on what is on disk
        mentions = [m for m in mentions if m.has_image]
    return mentions[:limit] if limit else mentions
