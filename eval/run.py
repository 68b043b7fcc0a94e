"""``python -m eval.run``: link a dataset's mentions with a scorer and report ranking metrics.

    python -m eval.run --dataset NAME [--data-dir DIR] [--split test] [--limit N]
        [--task i2t|it2t|t2t] [--scorer NAME] [--checkpoint PATH] [--candidates 10|100|all]
        [--seeds 0,1,2] [--with-images] [--batch-size 64] [--out DIR]
        [--attack PRESET|LIST|all [--adv-dir ADV-MEL] [--adv-format png|pt]
         [--attack-config FILE] [--threads T]] [--executor local|ray [--ray-address ADDR]]

Writes ``<out>/items.jsonl`` (one line per condition, mention and seed, appended and flushed
as it finishes, so a killed run resumes from it with the same command and ``--out``),
``<out>/config.json`` and ``<out>/results.json`` (schema in ../shared/ARCHITECTURE.md), and
prints a one-line summary. Mentions a task cannot score (no image in i2t, an unreadable
image, no text in t2t) are skipped and counted by reason, never a crash.

Every item line has ``condition``: ``"clean"``, or the attack preset whose stored adversarial
image replaced the mention's image (lines written before conditions existed read as clean).
With ``--attack`` the clean run is followed by a replay of each preset's adversarial images
(``eval.replay``; missing ones are generated first) and ``results.json`` gains ``attacks``:
``{preset: {n, n_skipped, skipped, metrics, metrics_per_seed, drift, ...}}`` (fields in
``eval.replay``); ``table.md``, ``table.csv`` and ``accuracy_per_attack.png`` (``eval.tables``)
are written next to it and the Markdown table is printed. The clean part of ``results.json``
is the same as without ``--attack``.

Context text for it2t/t2t is ``Mention.context_text()``: "<mention>. <caption>".

``--executor ray`` scores the cache misses on a Ray actor pool (``eval.sharded``; cluster from
``--ray-address``, ``$RAY_ADDRESS`` or a new local one) and generates missing adversarial images
the same way (``attacks.sharded``). This process stays the only writer of ``items.jsonl``, so
resuming works across executors and the per-item lines and ``results.json`` equal a local run's
(lines are written in the order items come back; scores may differ in their last float bits, see
``eval.sharded``). ``--pipeline agent`` runs locally only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agent.traces import TraceStore
from eval import replay, tables
from eval.agent_pipeline import AgentPipeline, divergence_shares, fallback_counts, node_timings
from eval.metrics import drift, gold_rank, mean_std, metrics_from_ranks, ranking
from eval.score_cache import ScoreCache, file_digest
from eval.sharded import RayScoring
from kb.candidates import CandidateBuilder, CandidateSet
from kb.dataset import Dataset, dataset_names, load_dataset
from kb.errors import DatasetError, ImageError
from kb.images import load_rgb, to_tensor
from kb.records import Mention
from tools.executor import ExecutorConfig, add_executor_arguments, executor_from_args

IMAGE_TASKS = ("i2t", "it2t")
TEXT_TASKS = ("it2t", "t2t")
CLEAN = "clean"
ATTACK_FIELDS = ("attack", "adv_dir", "adv_format", "attack_config")


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    split: str = "test"
    task: str = "it2t"
    scorer: str = "tagger"
    candidates: int | None = 10
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    checkpoint: str | None = None
    data_dir: str | None = None
    pipeline: str = "prerank"
    with_images: bool = False
    batch_size: int = 64
    attack: str | None = None  # preset name, comma list or "all": replay after the clean run
    adv_dir: str = "ADV-MEL"
    adv_format: str = "png"
    attack_config: str | None = None  # custom presets file (attacks.presets.load_presets)

    def identity(self) -> dict[str, Any]:
        """What must match for an existing output folder to be resumed.

        A clean run leaves the attack fields out, so folders written before they existed resume.
        """
        identity = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        if self.attack is None:
            for key in ATTACK_FIELDS:
                identity.pop(key)
        return identity


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
        self.key = ScoreCache.key(task, self.image_digest, bbox, self.context, self.candidate_texts)


@dataclass
class SeedOutcome:
    ranks: list[int] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def scorer_identity(name: str, checkpoint: str | None) -> str:
    return f"{name}@{file_digest(Path(checkpoint))[:16]}" if checkpoint else name


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


def candidate_builder(dataset: Dataset) -> CandidateBuilder:
    from kb.build import store_for

    store = store_for(dataset)
    return CandidateBuilder(dataset.entities, store.vectors(sorted(dataset.entities)))


def prepare(
    mention: Mention, candidates: CandidateSet, dataset: Dataset, config: RunConfig, digests: dict[Path, str]
) -> PreparedItem:
    from tools.scorers.base import candidate_prompt, template_for

    template = template_for(config.scorer)
    texts = [
        candidate_prompt(dataset.entities[q].label if q in dataset.entities else q, template)
        for q in candidates.qids
    ]
    context = mention.context_text() if config.task in TEXT_TASKS else None
    item = PreparedItem(mention, candidates, texts, context, None)
    if config.task in TEXT_TASKS and not context:
        item.skip = "no_text"
    if config.task in IMAGE_TASKS:
        if mention.image_path is None:
            item.skip = "no_image"
        elif not mention.image_path.is_file():
            item.skip = "image_missing"
        else:
            if mention.image_path not in digests:
                digests[mention.image_path] = file_digest(mention.image_path)
            item.image_digest = digests[mention.image_path]
    if not candidates.qids:  # e.g. an empty knowledge base: nothing to rank
        item.skip = "no_candidates"
    if item.skip is None:
        item.refresh_key(config.task)
    return item


def pixels_of(item: PreparedItem) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: the item's adversarial image if it has one, else its mention's."""
    if item.source is not None:
        return replay.read_adversarial(item.source).unsqueeze(0)
    return to_tensor(load_rgb(item.mention.image_path, item.mention.bbox)).unsqueeze(0)


def score_missing(items: list[PreparedItem], scorer: LazyScorer, config: RunConfig) -> None:
    """Fill ``logits`` of items the cache did not have.

    An unreadable image becomes a skip with the reader's reason; a scorer failure on one item
    becomes that item's ``scorer_error`` (a failing text batch is retried item by item so one
    bad input cannot take its neighbours down). Loading the model is not guarded: a scorer
    that cannot load fails the run at once with its own message.
    """
    model = scorer()
    if config.task in IMAGE_TASKS:
        for item in items:  # images differ in size, and resizing is the scorer's job
            try:
                pixels = pixels_of(item)
            except ImageError as exc:
                item.skip = f"image_{exc.reason}"
                continue
            _score(model, [item], pixels)
        return
    for batch in _batches_by_width(items, config.batch_size):
        if not _score(model, batch, None) and len(batch) > 1:
            for item in batch:
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


def item_record(item: PreparedItem, seed: int, condition: str = CLEAN) -> dict[str, Any]:
    mention, candidates = item.mention, item.candidates
    record: dict[str, Any] = {
        "condition": condition,
        "id": mention.id,
        "seed": seed,
        "gold": mention.gold,
        "candidates": list(candidates.qids),
        **item.notes,
    }
    if item.skip is not None:
        return {**record, "error": item.skip}
    order = ranking(item.logits)
    rank = gold_rank(item.logits, candidates.gold_index)
    prediction = candidates.qids[order[0]]
    return {
        **record,
        "ranking": [candidates.qids[i] for i in order],
        "scores": [round(float(v), 5) for v in item.logits],
        "prediction": prediction,
        "correct": rank == 1,
        "rank": rank,
        "gold_in_candidates": candidates.gold_index is not None,
        "error": None,
    }


def record_key(record: dict[str, Any]) -> tuple[str, int, str]:
    """Resume key of an ``items.jsonl`` line: (condition, seed, id); old lines are clean."""
    return (record.get("condition", CLEAN), record["seed"], record["id"])


def _seed_and_id(record: dict[str, Any]) -> tuple[int, str]:
    return (record["seed"], record["id"])


class ItemLog:
    """The append-only per-item JSONL: reading what a killed run finished, appending and flushing.

    ``key`` names a line for resuming (default (seed, id), as attack manifests use).
    """

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], Hashable] = _seed_and_id) -> None:
        self.path = path
        self.key = key
        self.done: dict[Hashable, dict[str, Any]] = {}
        if path.is_file():
            with path.open("rb") as handle:
                for line in handle:
                    try:
                        record = json.loads(line.decode("utf-8"))
                        self.done[key(record)] = record
                    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
                        break  # a line cut by a kill (even mid-character): it and the rest are redone
            self._rewrite_complete_lines()
        self.handle = path.open("a", encoding="utf-8")

    def _rewrite_complete_lines(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            for record in self.done.values():
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(temporary, self.path)

    def append(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()
        self.done[self.key(record)] = record

    def close(self) -> None:
        self.handle.close()


def select_mentions(dataset: Dataset, config: RunConfig) -> list[Mention]:
    """The split's mentions the run scores (``--with-images``, then ``--limit``)."""
    mentions = dataset.split(config.split)
    if config.with_images:  # e.g. a partial image download: score what is on disk
        mentions = [m for m in mentions if m.image_path is not None and m.image_path.is_file()]
    return mentions[: config.limit] if config.limit else mentions


class Evaluator:
    """Scores the run's mentions under one condition at a time, resuming from ``items.jsonl``.

    The clean condition scores each mention's own image; an attack condition scores the same
    mentions with the same candidate sets (same builder, same seed) after ``attach`` has
    pointed each item at its adversarial image or recorded why it has none.
    """

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
        self.sharded = RayScoring(config, self.executor) if self.executor.is_ray else None
        self.dataset = dataset
        self.mentions = mentions
        self.progress = progress
        self.builder = candidate_builder(dataset)
        self.scorer = LazyScorer(config)
        self.cache = ScoreCache(scorer_identity(config.scorer, config.checkpoint))
        self.log = ItemLog(out / "items.jsonl", key=record_key)
        self.digests: dict[Path, str] = {}
        self.agent = AgentPipeline(config, dataset, out) if config.pipeline == "agent" else None

    def evaluate(self, condition: str = CLEAN, attach: Callable[[PreparedItem], None] | None = None) -> None:
        config, log = self.config, self.log
        bar = tqdm(
            total=len(self.mentions) * len(config.seeds),
            desc=f"eval {config.dataset} {config.task} {condition}",
            unit="mention",
            disable=not self.progress,
        )
        pending: list[tuple[PreparedItem, int]] = []  # cache misses for the Ray pool, scored last
        try:
            for seed in config.seeds:
                for start in range(0, len(self.mentions), config.batch_size):
                    chunk = self.mentions[start : start + config.batch_size]
                    todo = [m for m in chunk if (condition, seed, m.id) not in log.done]
                    sets = self.builder.build_all(todo, config.candidates, seed)
                    items = [
                        prepare(m, c, self.dataset, config, self.digests)
                        for m, c in zip(todo, sets, strict=True)
                    ]
                    if attach is not None:
                        for item in items:
                            attach(item)
                    deferred: list[PreparedItem] = []
                    if self.agent is not None:
                        for item in items:
                            log.append(self.agent.link(item, seed, condition))
                    else:
                        missing = self._from_cache(items)
                        if self.sharded is not None:  # one pool for the whole condition, below
                            deferred = missing
                            pending.extend((item, seed) for item in missing)
                            items = [i for i in items if i.logits is not None or i.skip is not None]
                        elif missing:
                            score_missing(missing, self.scorer, config)
                            self._to_cache(missing)
                        for item in items:
                            log.append(item_record(item, seed, condition))
                    bar.update(len(chunk) - len(deferred))
            if pending:
                self._score_sharded(pending, condition, bar)
        finally:
            bar.close()

    def _score_sharded(self, pending: list[tuple[PreparedItem, int]], condition: str, bar: tqdm) -> None:
        """Write each item as the Ray pool returns it; the cache is filled every ``batch_size`` items."""
        scored: list[PreparedItem] = []
        for item, seed in self.sharded.score(pending, self.progress):
            self.log.append(item_record(item, seed, condition))
            scored.append(item)
            if len(scored) >= self.config.batch_size:
                self._to_cache(scored)
                scored = []
            bar.update(1)
        self._to_cache(scored)

    def _from_cache(self, items: list[PreparedItem]) -> list[PreparedItem]:
        """Fill ``logits`` from the score cache; returns the scorable items it did not have."""
        scorable = [i for i in items if i.skip is None]
        hits = self.cache.get_many([i.key for i in scorable])
        for item in scorable:
            item.logits = hits.get(item.key)
        return [i for i in scorable if i.logits is None]

    def _to_cache(self, items: list[PreparedItem]) -> None:
        self.cache.put_many({i.key: i.logits for i in items if i.logits is not None})

    def records(self, condition: str, seed: int) -> list[dict[str, Any]]:
        """This run's lines of one condition and seed, in mention order."""
        return [self.log.done[(condition, seed, m.id)] for m in self.mentions]

    def summary(self, condition: str) -> dict[str, Any]:
        """n, skips (first seed) and metrics (mean/std over seeds and per seed) of one condition."""
        outcomes = {seed: SeedOutcome() for seed in self.config.seeds}
        for seed, outcome in outcomes.items():
            for record in self.records(condition, seed):
                if record["error"]:
                    outcome.skipped[record["error"]] += 1
                else:
                    outcome.ranks.append(record["rank"])
        per_seed = {seed: metrics_from_ranks(o.ranks) for seed, o in outcomes.items()}
        first = outcomes[self.config.seeds[0]]
        return {
            "n": per_seed[self.config.seeds[0]].n,
            "n_skipped": sum(first.skipped.values()),
            "skipped": dict(first.skipped),
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
        if self.agent is not None:
            self.agent.close()


def run(
    config: RunConfig, out: Path, progress: bool = True, executor: ExecutorConfig | None = None
) -> dict[str, Any]:
    """Evaluate (and replay attacks), resuming from ``out/items.jsonl`` when it holds this config."""
    started = time.perf_counter()
    if executor is not None and executor.is_ray and config.pipeline == "agent":
        raise ValueError("--executor ray shards the prerank pipeline; run --pipeline agent locally")
    if config.attack and config.task not in IMAGE_TASKS:
        raise ValueError(f"--attack perturbs images: use an image task ({', '.join(IMAGE_TASKS)})")
    presets = replay.presets_for(config) if config.attack else []  # unknown names fail before work
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, config)
    dataset = load_dataset(config.dataset, config.data_dir)
    mentions = select_mentions(dataset, config)
    evaluator = Evaluator(config, dataset, mentions, out, progress, executor)
    attacks = None
    try:
        evaluator.evaluate(CLEAN)
        if presets:
            attacks = replay.replay_attacks(evaluator, presets, progress)
    finally:
        evaluator.close()
    results = _results(config, dataset, mentions, evaluator, out, time.perf_counter() - started)
    if attacks is not None:
        results["attack"] = list(attacks)
        results["attacks"] = attacks
    if evaluator.agent is not None:
        add_agent_fields(results, evaluator)
    _write_json(out / "results.json", results)
    if attacks is not None:
        tables.write_tables([results], out)
    return results


def add_agent_fields(results: dict[str, Any], evaluator: Evaluator) -> None:
    """Per-node seconds and fallback counts of every condition and, per attack, where flipped
    decisions diverged."""
    seed = evaluator.config.seeds[0]
    clean = {r["id"]: r for r in evaluator.records(CLEAN, seed)}
    results["node_seconds"] = node_timings(r for r in clean.values() if not r["error"])
    results["fallbacks"] = fallback_counts(
        r for s in evaluator.config.seeds for r in evaluator.records(CLEAN, s)
    )
    attacks = results.get("attacks") or {}
    for preset, block in attacks.items():
        block["fallbacks"] = fallback_counts(
            r for s in evaluator.config.seeds for r in evaluator.records(preset, s)
        )
    if not attacks or not evaluator.agent.settings.checkpoint_db.is_file():
        return  # no attack, or no decision was ever made (every item skipped)
    traces = TraceStore(evaluator.agent.settings.checkpoint_db)
    try:
        for preset, block in attacks.items():
            attacked = {r["id"]: r for r in evaluator.records(preset, seed)}
            block["node_seconds"] = node_timings(r for r in attacked.values() if not r["error"])
            block["divergence"] = divergence_shares(traces, clean, attacked)
    finally:
        traces.close()


def _results(
    config: RunConfig,
    dataset: Dataset,
    mentions: Sequence[Mention],
    evaluator: Evaluator,
    out: Path,
    seconds: float,
) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "split": config.split,
        "task": config.task,
        "pipeline": config.pipeline,
        "scorer": config.scorer,
        "checkpoint": config.checkpoint,
        "attack": None,
        "candidates": config.candidates if config.candidates is not None else "all",
        "seeds": list(config.seeds),
        **evaluator.summary(CLEAN),
        "n_mentions": len(mentions),
        "nil": sum(1 for m in mentions if m.is_nil),
        "items": str(out / "items.jsonl"),
        "seconds": round(seconds, 2),
        "model_load_seconds": round(evaluator.scorer.load_seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _check_resume(out: Path, config: RunConfig) -> None:
    config_path = out / "config.json"
    if config_path.is_file():
        previous = json.loads(config_path.read_text())
        if previous != _jsonable(config.identity()):
            raise DatasetError(
                f"{out} holds a run with a different configuration ({config_path}); "
                "choose another --out or delete that folder"
            )
    else:
        _write_json(config_path, _jsonable(config.identity()))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False))
    os.replace(temporary, path)


def summary_line(results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    seeds = len(results["seeds"])
    std = f" ±{metrics['acc@1']['std'] * 100:.1f}" if seeds > 1 else ""
    return (
        f"{results['dataset']}/{results['split']} {results['task']} {results['scorer']} "
        f"λ={results['candidates']} seeds={seeds}: acc@1 {metrics['acc@1']['mean'] * 100:.1f}%{std} "
        f"acc@5 {metrics['acc@5']['mean'] * 100:.1f}% mrr {metrics['mrr']['mean']:.3f} "
        f"(n={results['n']}, skipped={results['n_skipped']}) in {results['seconds']:.1f}s"
    )


def parse_candidates(value: str) -> int | None:
    return None if value.lower() in ("all", "full") else int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(dataset_names())}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="test", help="split name, or 'all'")
    parser.add_argument("--limit", type=int, default=None, help="first N mentions of the split")
    parser.add_argument("--with-images", action="store_true", help="only mentions whose image is on disk")
    parser.add_argument("--task", choices=("i2t", "it2t", "t2t"), default="it2t")
    parser.add_argument(
        "--pipeline",
        choices=("prerank", "agent"),
        default="prerank",
        help="prerank: the scorer alone; agent: the LLM-RetLink graph with this scorer as pre-ranker",
    )
    parser.add_argument(
        "--scorer", default="tagger", help="tagger, mcr, clip:DIR, openclip:ARCH/WEIGHTS, ..."
    )
    parser.add_argument("--checkpoint", default=None, help="trained weights (mcr)")
    parser.add_argument(
        "--candidates", type=parse_candidates, default=10, help="λ per mention: 10, 100 or all"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated candidate-sampling seeds")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a new one under runs/)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    attack = parser.add_argument_group("attack replay (eval.replay)")
    attack.add_argument(
        "--attack", default=None, help="replay adversarial images: pgd-n, ..., cw-s, a comma list, or all"
    )
    attack.add_argument(
        "--adv-dir", default="ADV-MEL", help="root of <PRESET folder>/<dataset>/ (attacks.generate --out)"
    )
    attack.add_argument(
        "--adv-format",
        choices=replay.ADV_FORMATS,
        default="png",
        help="png: the released 8-bit images (default); pt: the exact float tensors",
    )
    attack.add_argument("--attack-config", default=None, help="JSON/TOML file of custom presets")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = RunConfig(
        dataset=args.dataset,
        split=args.split,
        task=args.task,
        scorer=args.scorer,
        pipeline=args.pipeline,
        candidates=args.candidates,
        seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()),
        limit=args.limit,
        checkpoint=args.checkpoint,
        data_dir=args.data_dir,
        with_images=args.with_images,
        batch_size=args.batch_size,
        attack=args.attack,
        adv_dir=args.adv_dir,
        adv_format=args.adv_format,
        attack_config=args.attack_config,
    )
    out = args.out or default_out(config)
    try:
        results = run(config, out, progress=not args.quiet, executor=executor_from_args(args))
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_line(results))
    if "fallbacks" in results:
        print(f"agent fallbacks (clean): {json.dumps(results['fallbacks'])}")
    for preset, attacked in results.get("attacks", {}).items():
        print(replay.summary_line(preset, attacked))
    if results.get("attacks"):
        print()
        print((out / tables.MARKDOWN).read_text(encoding="utf-8"))
        print(f"tables: {out / tables.MARKDOWN}, {out / tables.CSV}, {out / tables.PLOT}")
    print(f"results: {out / 'results.json'}")
    return 0


def default_out(config: RunConfig) -> Path:
    safe_scorer = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in config.scorer)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.dataset}-{config.task}-{safe_scorer}-{os.getpid()}"


if __name__ == "__main__":
    raise SystemExit(main())
