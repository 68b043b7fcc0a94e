"""Ranking metrics of the seed papers (Top-k accuracy, MRR, mean rank) and attack drift.

Ranks come from ``kb.ranking`` (1-based, ties pessimistic, n + 1 for a gold outside the
candidates, which counts as wrong at every k).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kb.ranking import gold_rank, ranking

__all__ = [
    "FULL_KB_KS",
    "KS",
    "Metrics",
    "bootstrap_ci",
    "drift",
    "gold_rank",
    "mean_std",
    "metrics_from_ranks",
    "paired_bootstrap",
    "ranking",
]

KS = (1, 5, 10)
FULL_KB_KS = (1, 3, 5, 10, 20)
"""Hits@k of full-KB ranking (``eval.full_kb``): MIMIC's H@1/3/5 plus 10 and 20."""


@dataclass(frozen=True)
class Metrics:
    acc_at: dict[int, float]
    mrr: float
    mr: float
    n: int

    def to_json(self) -> dict[str, float]:
        out = {f"acc@{k}": round(v, 6) for k, v in self.acc_at.items()}
        return {**out, "mrr": round(self.mrr, 6), "mr": round(self.mr, 4)}


def metrics_from_ranks(ranks: Iterable[int], ks: Sequence[int] = KS) -> Metrics:
    """acc@k for each of ``ks`` (default ``KS``; full-KB runs use ``FULL_KB_KS``), MRR and MR."""
    values = np.asarray(list(ranks), dtype=np.float64)
    if values.size == 0:
        return Metrics({k: math.nan for k in ks}, math.nan, math.nan, 0)
    return Metrics(
        acc_at={k: float((values <= k).mean()) for k in ks},
        mrr=float((1.0 / values).mean()),
        mr=float(values.mean()),
        n=int(values.size),
    )


def mean_std(per_seed: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {mean, std}} over seeds (population std; 0 for a single seed)."""
    keys = per_seed[0].keys() if per_seed else ()
    return {
        key: {
            "mean": round(float(np.mean([m[key] for m in per_seed])), 6),
            "std": round(float(np.std([m[key] for m in per_seed])), 6),
        }
        for key in keys
    }


def drift(clean: dict[str, dict], attacked: dict[str, dict]) -> dict[str, float]:
    """Attack-induced change on the items scored in both runs (keyed by item id).

    Each value holds ``prediction``, ``correct`` and ``rank``. ``acc_drop`` is clean minus
    attacked top-1 accuracy, ``flip_rate`` the share whose top-1 changed, ``attack_success``
    the share of clean-correct items that became wrong, ``gold_rank_shift`` the mean change
    of the gold's rank (positive = pushed down).
    """
    shared = sorted(set(clean) & set(attacked))
    if not shared:
        return {
            "n": 0,
            "acc_drop": math.nan,
            "flip_rate": math.nan,
            "attack_success": math.nan,
            "gold_rank_shift": math.nan,
        }
    before = [clean[i] for i in shared]
    after = [attacked[i] for i in shared]
    clean_correct = [b["correct"] for b in before]
    n_correct = sum(clean_correct)
    broken = sum(1 for b, a in zip(before, after, strict=True) if b["correct"] and not a["correct"])
    return {
        "n": len(shared),
        "acc_drop": round(float(np.mean(clean_correct)) - float(np.mean([a["correct"] for a in after])), 6),
        "flip_rate": round(
            float(np.mean([b["prediction"] != a["prediction"] for b, a in zip(before, after, strict=True)])),
            6,
        ),
        "attack_success": round(broken / n_correct, 6) if n_correct else math.nan,
        "gold_rank_shift": round(
            float(np.mean([a["rank"] - b["rank"] for b, a in zip(before, after, strict=True)])), 4
        ),
    }


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def _interval(samples: np.ndarray) -> list[float] | None:
    """The percentile 95% interval of bootstrap samples (None when there were none)."""
    if samples.size == 0 or not np.isfinite(samples).all():
        return None
    low, high = np.percentile(samples, [2.5, 97.5])
    return [round(float(low), 6), round(float(high), 6)]


def _per_seed_columns(ranks: np.ndarray) -> np.ndarray:
    """Ranks as (mentions, seeds) floats; a flat vector is one seed."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return ranks[:, None] if ranks.ndim == 1 else ranks


def _resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(
    ranks: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, list[float] | None]:
    """95% percentile bootstrap intervals of acc@1 and MRR, resampling mentions.

    ``ranks`` is (mentions, seeds): every seed's rank of each mention, so one resample draws
    whole mentions and the statistic is the mean over seeds, as the reported metric is.
    """
    ranks = _per_seed_columns(ranks)
    if ranks.size == 0:
        return {"acc@1": None, "mrr": None}
    rows = _resamples(len(ranks), resamples, seed)
    drawn = ranks[rows]  # (resamples, mentions, seeds)
    return {
        "acc@1": _interval((drawn == 1).mean(axis=(1, 2))),
        "mrr": _interval((1.0 / drawn).mean(axis=(1, 2))),
    }


def paired_bootstrap(
    before: np.ndarray,
    after: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Difference after − before of acc@1 and MRR on the same mentions, with paired 95% intervals.

    ``before`` and ``after`` are (mentions, seeds) ranks of the same mentions in the same order
    (e.g. clean vs attacked, or Model vs Model*); one resample draws the same mentions for both,
    so the interval is of the paired difference, narrower than two independent intervals.
    ``p_sign``: the share of resamples whose acc@1 difference has the opposite sign of the
    observed one (a bootstrap stand-in for a one-sided p-value).
    """
    before, after = _per_seed_columns(before), _per_seed_columns(after)
    if before.shape != after.shape:
        raise ValueError(f"paired bootstrap needs the same mentions: {before.shape} vs {after.shape}")
    if before.size == 0:
        return {"n": 0, "acc@1": None, "mrr": None, "ci95": {"acc@1": None, "mrr": None}, "p_sign": None}
    rows = _resamples(len(before), resamples, seed)
    acc = ((after[rows] == 1).mean(axis=(1, 2))) - ((before[rows] == 1).mean(axis=(1, 2)))
    mrr = (1.0 / after[rows]).mean(axis=(1, 2)) - (1.0 / before[rows]).mean(axis=(1, 2))
    observed = float((after == 1).mean() - (before == 1).mean())
    opposite = acc < 0 if observed > 0 else acc > 0 if observed < 0 else np.zeros_like(acc, dtype=bool)
    return {
        "n": len(before),
        "acc@1": round(observed, 6),
        "mrr": round(float((1.0 / after).mean() - (1.0 / before).mean()), 6),
        "ci95": {"acc@1": _interval(acc), "mrr": _interval(mrr)},
        "p_sign": round(float(opposite.mean()), 4),
    }
