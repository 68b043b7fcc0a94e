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

from tqdm import tqdm

from eval.config import RunConfig
from eval.metrics import drift, mean_std, metrics_from_ranks
from eval.pipelines import Pipeline, PrerankPipeline
from kb.dataset import Dataset
from kb.records import Mention
from kb.runcore.item_log import CLEAN, ItemLog, condition_seed_id
from kb.runcore.items import PreparedItem, candidate_builder, prepare
from tools.executor import ExecutorConfig
from tools.scorers.base import template_for


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
        self.builder = candidate_builder(dataset)
        self.template = template_for(config.scorer)
        self.log = ItemLog(out / "items.jsonl", key=condition_seed_id)
        self.digests: dict[Path, str] = {}
        self.pipeline: Pipeline
        if config.pipeline == "agent":
            from eval.agent_pipeline import AgentPipeline

            self.pipeline = AgentPipeline(config, dataset, out)
        else:
            self.pipeline = PrerankPipeline(config, self.executor, progress)

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
        """n, skips (first seed) and metrics (mean/std over seeds and per seed) of one condition."""
        ranks: dict[int, list[int]] = {seed: [] for seed in self.config.seeds}
        skipped: Counter[str] = Counter()  # counted on the first seed: every seed skips the same items
        first = self.config.seeds[0]
        for seed in self.config.seeds:
            for record in self.records(condition, seed):
                if not record["error"]:
                    ranks[seed].append(record["rank"])
                elif seed == first:
                    skipped[record["error"]] += 1
        per_seed = {seed: metrics_from_ranks(r) for seed, r in ranks.items()}
        return {
            "n": per_seed[self.config.seeds[0]].n,
            "n_skipped": sum(skipped.values()),
            "skipped": dict(skipped),
            "metrics": mean_std([m.to_json() for m in per_seed.values()]),
            "metrics_per_seed": {str(seed): m.to_json() for seed, m in per_seed.items()},
        }

    def drift_from_clean(self, condition: str) -> dict[str, float]:
        """``eval.metrics.drift`` of clean vs ``condition``, pooled over (seed, item) pairs scored in both."""
        scored: dict[str, dict[str, dict[str, Any]]] = {CLEAN: {}, condition: {}}
        for name, by_key in scored.items():
            for seed in self.config.seeds:
                for record in self.records(name, seed):
                    if not record["error"]:
                        by_key[f"{seed}:{record['id']}"] = record
        return drift(scored[CLEAN], scored[condition])

    def close(self) -> None:
        self.log.close()
        self.pipeline.close()
