"""The evaluator: one condition at a time over the run's mentions, resuming from ``items.jsonl``.

The clean condition scores each mention's own image; an attack condition scores the same
mentions with the same candidate sets (same builder, same seed) after ``attach`` has pointed
each item at its adversarial image or recorded why it has none. What scores an item is the
run's pipeline (``eval.pipelines``); the evaluator prepares the items, writes every record
and summarises a condition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from eval.config import RunConfig
from eval.full_kb import FullKBPipeline, uses_full_kb
from eval.metrics import FULL_KB_KS, KS, bootstrap_ci, drift, mean_std, metrics_from_ranks, paired_bootstrap
from eval.pipelines import Pipeline, PrerankPipeline
from eval.stages import CONSULT_DIFFERENCES, DIFFERENCES, NO_CONSULT, STAGES, StagedPipeline
from kb.dataset import Dataset
from kb.records import Mention
from kb.runcore.item_log import CLEAN, ItemLog, condition_seed_id
from kb.runcore.items import PreparedItem, candidate_builder, prepare
from tools.executor import ExecutorConfig
from tools.scorers.base import template_for


def drop_interval(paired: dict[str, Any]) -> list[float] | None:
    """95% interval of clean − attacked acc@1: the negated paired interval of attacked − clean."""
    interval = paired["ci95"]["acc@1"]
    return (
        None if interval is None else [round(-interval[1], 6) + 0.0, round(-interval[0], 6) + 0.0]
    )  # no -0.0


class Evaluator:
    def __init__(
        self,
        config: RunConfig,
        dataset: Dataset,
        mentions: list[Mention],
        out: Path,
        progress: bool,
        executor: ExecutorConfig | None = None,
    ) -> None:
        self.config = config
        self.executor = executor or ExecutorConfig()
        self.dataset = dataset
        self.mentions = mentions
        self.progress = progress
        full_kb = uses_full_kb(config)  # λ = all or > 100: the KB matrix, top-k lines (eval.full_kb)
        self.builder = None if full_kb else candidate_builder(dataset)
        self.ks = FULL_KB_KS if full_kb else KS
        self.template = template_for(config.scorer)
        self.log = ItemLog(out / "items.jsonl", key=condition_seed_id)
        self.digests: dict[Path, str] = {}
        self.pipeline: Pipeline = (
            FullKBPipeline(config, dataset, progress)
            if full_kb
            else PrerankPipeline(config, self.executor, progress)
        )
        self.agent = None
        if config.pipeline == "agent":
            from eval.agent_pipeline import AgentPipeline

            self.agent = AgentPipeline(config, dataset, out)
            self.pipeline = StagedPipeline(self.agent, self.pipeline)
        elif config.pipeline == "mllm":
            from eval.mllm_pipeline import MllmPipeline

            self.pipeline = MllmPipeline(config, dataset)

    def evaluate(self, condition: str = CLEAN, attach: Callable[[PreparedItem], None] | None = None) -> None:
        config, log = self.config, self.log
        bar = tqdm(
            total=len(self.mentions) * len(config.seeds),
            desc=f"eval {config.dataset} {config.task} {condition}",
            unit="mention",
            disable=not self.progress,
        )
        try:
            for seed in config.seeds:
                for start in range(0, len(self.mentions), config.batch_size):
                    chunk = self.mentions[start : start + config.batch_size]
                    todo = [m for m in chunk if (condition, seed, m.id) not in log.done]
                    bar.update(len(chunk) - len(todo))
                    if isinstance(self.pipeline, FullKBPipeline):  # the KB is one shared set
                        items = self.pipeline.prepare(todo, seed, self.digests)
                    else:
                        sets = self.builder.build_all(todo, config.candidates, seed)
                        items = [
                            prepare(m, c, self.dataset, config.task, self.template, self.digests)
                            for m, c in zip(todo, sets, strict=True)
                        ]
                    if attach is not None:
                        for item in items:
                            attach(item)
                    for record in self.pipeline.process(items, seed, condition):
                        log.append(record)
                        bar.update(1)
            for record in self.pipeline.finish(condition):
                log.append(record)
                bar.update(1)
        finally:
            bar.close()

    def records(self, condition: str, seed: int) -> list[dict[str, Any]]:
        """This run's lines of one condition and seed, in mention order."""
        return [self.log.done[(condition, seed, m.id)] for m in self.mentions]

    def summary(self, condition: str) -> dict[str, Any]:
        """n, skips (first seed), metrics (mean/std over seeds and per seed) and 95% intervals of
        one condition; for a staged (agent) run also each stage's and their paired differences."""
        ranks: dict[int, list[int]] = {seed: [] for seed in self.config.seeds}
        skipped: Counter[str] = Counter()  # counted on the first seed: every seed skips the same items
        first = self.config.seeds[0]
        for seed in self.config.seeds:
            for record in self.records(condition, seed):
                if not record["error"]:
                    ranks[seed].append(record["rank"])
                elif seed == first:
                    skipped[record["error"]] += 1
        per_seed = {seed: metrics_from_ranks(r, self.ks) for seed, r in ranks.items()}
        summary = {
            "n": per_seed[first].n,
            "n_skipped": sum(skipped.values()),
            "skipped": dict(skipped),
            "metrics": mean_std([m.to_json() for m in per_seed.values()]),
            "metrics_per_seed": {str(seed): m.to_json() for seed, m in per_seed.items()},
            "ci95": bootstrap_ci(self.rank_matrix(condition)[1]),
        }
        if self.agent is not None:
            summary.update(self.stage_summary(condition))
        if self.config.pipeline == "mllm":  # answers naming no candidate: wrong, and counted
            summary["invalid_answers"] = sum(1 for r in self.records(condition, first) if r.get("invalid"))
        return summary

    def rank_matrix(self, condition: str, stage: str | None = None) -> tuple[list[str], np.ndarray]:
        """Ids of the mentions scored under every seed, and their (mentions, seeds) gold ranks
        (of ``stage`` when given: ``model``, ``model*`` or ``agent``)."""
        by_seed = []
        for seed in self.config.seeds:
            ranks = {}
            for record in self.records(condition, seed):
                entry = record if stage is None else (record.get("stages") or {}).get(stage)
                if not record["error"] and entry is not None:
                    ranks[record["id"]] = entry["rank"]
            by_seed.append(ranks)
        ids = [m.id for m in self.mentions if all(m.id in ranks for ranks in by_seed)]
        return ids, np.array([[ranks[i] for ranks in by_seed] for i in ids], dtype=np.float64).reshape(
            len(ids), len(by_seed)
        )

    @property
    def consulting(self) -> bool:
        """Whether this agent run has its consult step on (``--consult``)."""
        return self.agent is not None and self.agent.settings.consult_margin is not None

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages ``results.json`` reports: ``no-consult`` too when the consult step is on."""
        return (*STAGES, NO_CONSULT) if self.consulting else STAGES

    def stage_summary(self, condition: str) -> dict[str, Any]:
        """``stages`` {model, model*, agent}: each stage's metrics and intervals on the items all
        three scored, and ``stage_differences``: paired bootstrap of after − before."""
        matrices = {stage: self.rank_matrix(condition, stage) for stage in self.stages}
        shared = set.intersection(*(set(ids) for ids, _ in matrices.values()))
        aligned = {}
        for stage, (ids, ranks) in matrices.items():
            keep = [k for k, i in enumerate(ids) if i in shared]
            aligned[stage] = ranks[keep]
        stages = {}
        for stage, ranks in aligned.items():
            per_seed = [metrics_from_ranks(ranks[:, s]).to_json() for s in range(ranks.shape[1])]
            stages[stage] = {"n": len(ranks), "metrics": mean_std(per_seed), "ci95": bootstrap_ci(ranks)}
        differences = {
            f"{after}-{before}": paired_bootstrap(aligned[before], aligned[after])
            for before, after in (CONSULT_DIFFERENCES if self.consulting else DIFFERENCES)
        }
        return {"stages": stages, "stage_differences": differences}

    def drift_from_clean(self, condition: str) -> dict[str, Any]:
        """``eval.metrics.drift`` of clean vs ``condition``, pooled over (seed, item) pairs scored in both."""
        scored: dict[str, dict[str, dict[str, Any]]] = {CLEAN: {}, condition: {}}
        for name, by_key in scored.items():
            for seed in self.config.seeds:
                for record in self.records(name, seed):
                    if not record["error"]:
                        by_key[f"{seed}:{record['id']}"] = record
        return drift(scored[CLEAN], scored[condition])

    def drift_intervals(self, condition: str) -> dict[str, Any]:
        """The paired bootstrap 95% interval of the accuracy drop clean − ``condition`` and, for a
        staged (agent) run, each stage's drop with its interval."""
        intervals: dict[str, Any] = {"acc_drop": drop_interval(self._paired(condition, None))}
        if self.agent is not None:
            intervals["stages"] = {}
            for stage in self.stages:
                paired = self._paired(condition, stage)
                drop = None if paired["acc@1"] is None else round(-paired["acc@1"], 6) + 0.0
                intervals["stages"][stage] = {
                    "n": paired["n"],
                    "acc_drop": drop,
                    "acc_drop_ci95": drop_interval(paired),
                }
        return intervals

    def _paired(self, condition: str, stage: str | None) -> dict[str, Any]:
        """Paired bootstrap of attacked − clean ranks on the mentions scored in both."""
        clean_ids, clean = self.rank_matrix(CLEAN, stage)
        attacked_ids, attacked = self.rank_matrix(condition, stage)
        attacked_row = {mention: row for row, mention in enumerate(attacked_ids)}
        both = [(row, attacked_row[m]) for row, m in enumerate(clean_ids) if m in attacked_row]
        return paired_bootstrap(clean[[a for a, _ in both]], attacked[[b for _, b in both]])

    def close(self) -> None:
        self.log.close()
        self.pipeline.close()
