"""Where the gold stands: the one definition of a gold rank, from scores or from a final order.

Ranks are 1-based. From scores, ties are broken pessimistically (a gold tied with a wrong
candidate is ranked below it), so a scorer that outputs constant logits scores chance, not
perfection. A gold that is not among the candidates (NIL, or a list without it) has rank
n + 1, which counts as wrong at every k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def gold_rank(scores: Sequence[float], gold_index: int | None) -> int:
    """1-based pessimistic rank of the gold among ``scores``; ``len(scores) + 1`` when there is no gold."""
    if gold_index is None:
        return len(scores) + 1
    values = np.asarray(scores, dtype=np.float64)
    return int((values >= values[gold_index]).sum())


def gold_rank_in_order(order: Sequence[str], gold: str | None) -> int:
    """1-based rank of ``gold`` in a final best-first order of QIDs (a decision's ranking, which
    has no scores to tie); ``len(order) + 1`` when the gold is not in it."""
    return gold_rank([-i for i in range(len(order))], order.index(gold) if gold in order else None)


def ranking(scores: Sequence[float]) -> list[int]:
    """Candidate indices best first (stable: equal scores keep candidate order)."""
    return [int(i) for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]
