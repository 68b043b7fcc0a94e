"""Ranking metrics of the seed papers (Top-k accuracy, MRR, mean rank) and attack drift.

Ranks come from ``kb.ranking`` (1-based, ties pessimistic, n + 1 for a gold outside the
candidates, which counts as wrong at every k).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kb.ranking import gold_rank, ranking

__all__ = ["KS", "Metrics", "drift", "gold_rank", "mean_std", "metrics_from_ranks", "ranking"]

KS = (1, 5, 10)


@dataclass(frozen=True)
class Metrics:
    acc_at: dict[int, float]
    mrr: float
    mr: float
    n: int

    def to_json(self) -> dict[str, float]:
        out = {f"acc@{k}": round(v, 6) for k, v in self.acc_at.items()}
        return {**out, "mrr": round(self.mrr, 6), "mr": round(self.mr, 4)}


def metrics_from_ranks(ranks: Iterable[int]) -> Metrics:
    values = np.asarray(list(ranks), dtype=np.float64)
    if values.size == 0:
        return Metrics({k: math.nan for k in KS}, math.nan, math.nan, 0)
    return Metrics(
        acc_at={k: float((values <= k).mean()) for k in KS},
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
