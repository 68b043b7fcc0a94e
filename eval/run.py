"""``python -m eval.run``: link a dataset's mentions with a scorer and report ranking metrics.

    python -m eval.run --dataset NAME [--data-dir DIR] [--split test] [--limit N]
        [--task i2t|it2t|t2t] [--scorer NAME] [--checkpoint PATH] [--candidates 10|100|all]
        [--keep-top 100] [--kb-index auto|exact|hnsw]
        [--seeds 0,1,2] [--with-images] [--batch-size 64] [--out DIR]
        [--attack PRESET|LIST|all [--adv-dir ADV-MEL] [--adv-format png|pt]
         [--presets-file FILE] [--threads T]] [--executor local|ray [--ray-address ADDR]]

Writes ``<out>/items.jsonl`` (one line per condition, mention and seed, appended and flushed
as it finishes, so a killed run resumes from it with the same command and ``--out``),
``<out>/config.json`` and ``<out>/results.json`` (schema in ../shared/ARCHITECTURE.md), and
prints a one-line summary. Mentions a task cannot score (no image in i2t, an unreadable
image, no text in t2t) are skipped and counted by reason, never a crash; a run that scores
no mention at all exits with status 1 and says why per reason, with the fix.

Every item line has ``condition``: ``"clean"``, or the attack preset whose stored adversarial
image replaced the mention's image (lines written before conditions existed read as clean).
With ``--attack`` the clean run is followed by a replay of each preset's adversarial images
(``eval.replay``; missing ones are generated first) and ``results.json`` gains ``attacks``:
``{preset: {n, n_skipped, skipped, metrics, metrics_per_seed, drift, ...}}`` (fields in
``eval.replay``); ``table.md``, ``table.csv`` and ``accuracy_per_attack.png`` (``eval.tables``)
are written next to it and the Markdown table is printed. The clean part of ``results.json``
is the same as without ``--attack``.

Context text for it2t/t2t is ``Mention.context_text()``: "<mention>. <caption>".

``--candidates all`` (or λ above 100) ranks each mention against the whole KB with one matrix
product per batch and stores the top ``--keep-top`` k plus the gold's rank and score
(``eval.full_kb``); metrics add acc@3 and acc@20 and ``results.json`` gains ``full_kb``.

``--executor ray`` scores the cache misses on a Ray actor pool (``eval.sharded``; cluster from
``--ray-address``, ``$RAY_ADDRESS`` or a new local one) and generates missing adversarial images
the same way (``attacks.sharded``). This process stays the only writer of ``items.jsonl``, so
resuming works across executors and the per-item lines and ``results.json`` equal a local run's
(lines are written in the order items come back; scores may differ in their last float bits, see
``eval.sharded``). ``--pipeline agent`` runs locally only.

The parts: ``eval.config`` (RunConfig, folder identity), ``eval.evaluator`` (conditions over
a ``eval.pipelines.Pipeline``), ``eval.scoring`` (the prerank scorer), ``eval.results`` (the
one results schema) and this module (the run and its CLI).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from agent.concurrency import add_concurrency_argument
from eval import replay, tables
from eval.config import LLM_PIPELINES, PIPELINES, RunConfig, default_out
from eval.evaluator import Evaluator
from eval.full_kb import KB_INDEXES, FullKBPipeline, describe
from eval.results import AttackResults, RunResults, summary_line, write_results
from kb.cli_args import (
    LLM_FLAGS,
    add_candidate_arguments,
    add_dataset_arguments,
    add_llm_arguments,
    add_presets_file_argument,
    add_quiet_argument,
)
from kb.dataset import Dataset, load_dataset, spec_for
from kb.errors import DatasetError
from kb.records import Mention
from kb.runcore.files import claim_folder
from kb.runcore.item_log import CLEAN
from kb.runcore.items import IMAGE_TASKS, TASKS
from kb.runcore.selection import select_mentions
from tools.executor import ExecutorConfig, add_executor_arguments, executor_from_args

__all__ = ["RunConfig", "main", "run", "summary_line"]


class NothingScored(DatasetError):
    """A run whose every mention was skipped: it measured nothing, and the message says why."""


def run(
    config: RunConfig, out: Path, progress: bool = True, executor: ExecutorConfig | None = None
) -> dict[str, Any]:
    """Evaluate (and replay attacks), resuming from ``out/items.jsonl`` when it holds this config.

    Raises ``NothingScored`` (after writing ``results.json``) when no mention could be scored.
    """
    started = time.perf_counter()
    if executor is not None and executor.is_ray and config.pipeline != "prerank":
        raise ValueError(
            f"--executor ray shards the prerank pipeline; run --pipeline {config.pipeline} locally"
        )
    if config.attack and config.task not in IMAGE_TASKS:
        raise ValueError(f"--attack perturbs images: use an image task ({', '.join(IMAGE_TASKS)})")
    presets = replay.presets_for(config) if config.attack else []  # unknown names fail before work
    if config.pipeline in LLM_PIPELINES and config.agent is None:
        from eval.agent_pipeline import agent_identity

        config = replace(config, agent=agent_identity(config))
    claim_folder(out, config.identity(), "config.json")
    dataset = load_dataset(config.dataset, config.data_dir)
    mentions = select_mentions(dataset, config.split, config.limit, config.with_images)
    evaluator = Evaluator(config, dataset, mentions, out, progress, executor)
    attacks = None
    try:
        evaluator.evaluate(CLEAN)
        if presets:
            attacks = replay.replay_attacks(evaluator, presets, progress)
    finally:
        evaluator.close()
    results = RunResults(
        dataset=dataset.name,
        split=config.split,
        task=config.task,
        pipeline=config.pipeline,
        scorer=config.scorer,
        checkpoint=config.checkpoint,
        attack=list(attacks) if attacks is not None else None,
        candidates=config.candidates if config.candidates is not None else "all",
        seeds=list(config.seeds),
        **evaluator.summary(CLEAN),
        n_mentions=len(mentions),
        nil=sum(1 for m in mentions if m.is_nil),
        items=str(out / "items.jsonl"),
        seconds=round(time.perf_counter() - started, 2),
        model_load_seconds=round(evaluator.pipeline.load_seconds, 2),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        attacks={name: AttackResults(**block) for name, block in attacks.items()} if attacks else None,
        llm=judge_name(config.agent),
    )
    if config.pipeline == "agent":
        from eval.agent_pipeline import add_agent_fields

        add_agent_fields(results, evaluator)
    if isinstance(evaluator.pipeline, FullKBPipeline):  # how the KB was ranked (eval.full_kb)
        results.full_kb = describe(evaluator.pipeline)
    written = write_results(out / "results.json", results)
    if attacks is not None:
        tables.write_tables([written], out)
    if written["n"] == 0:
        raise NothingScored(nothing_scored_message(written, dataset, mentions, config))
    return written


def judge_name(agent: dict[str, Any] | None) -> str | None:
    """The agent's judge as tables name its row: the served model, else the embedded model's file."""
    if agent is None:
        return None
    llm = agent.get("vlm") or agent.get("llm") or {}
    name = llm.get("model") or llm.get("model_file") or llm.get("backend")
    return str(name).removesuffix(".gguf") if name else None


def nothing_scored_message(
    results: dict[str, Any], dataset: Dataset, mentions: list[Mention], config: RunConfig
) -> str:
    """Why a run scored nothing, per skip reason, and what to do about each."""
    total = results["n_skipped"]
    if not mentions:
        return (
            f"{dataset.name}/{config.split}: no mention selected"
            f"{' (--with-images: none has its image on disk)' if config.with_images else ''}; "
            f"check --split, --limit and --with-images (results: {results['items']})"
        )
    lines = [f"{total} of {len(mentions)} mentions skipped, none scored ({dataset.name}/{config.split}):"]
    for reason, count in Counter(results["skipped"]).most_common():
        lines.append(f"  {reason} x{count}: {_fix_for(reason, dataset, mentions, config)}")
    return "\n".join(lines)


def _fix_for(reason: str, dataset: Dataset, mentions: list[Mention], config: RunConfig) -> str:
    if reason == "image_missing":
        folders = sorted({str(m.image_path.parent) for m in mentions if m.image_path and not m.has_image})
        where = folders[0] if len(folders) == 1 else f"{folders[0]} and {len(folders) - 1} more folders"
        return (
            f"no images under {where}; the images are published with the dataset at "
            f"{spec_for(dataset.name).published_at}: download them there (or pass --data-dir), "
            "or use --task t2t, which needs none"
        )
    if reason == "no_image":
        return "these mentions have no image in the dataset; use --task t2t, which needs none"
    if reason == "no_text":
        return "these mentions have no caption; use --task i2t"
    if reason == "no_candidates":
        return "the knowledge base gave no candidate; check the dataset's entity files"
    if reason.startswith("adv_"):
        return "no usable adversarial image; check --adv-dir and --adv-format"
    return "see the per-item lines in items.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataset_arguments(parser)
    parser.add_argument("--task", choices=TASKS, default="it2t")
    parser.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default="prerank",
        help="prerank: the scorer alone; agent: the LLM-RetLink graph with this scorer as pre-ranker; "
        "mllm: the judge alone on the image and candidate labels (Table 4's MLLM baseline)",
    )
    parser.add_argument(
        "--scorer", default="tagger", help="tagger, mcr, clip:DIR, openclip:ARCH/WEIGHTS, ..."
    )
    parser.add_argument("--checkpoint", default=None, help="trained weights (mcr)")
    add_candidate_arguments(parser)
    full_kb = parser.add_argument_group("full-KB ranking (--candidates all or above 100; eval.full_kb)")
    full_kb.add_argument(
        "--keep-top",
        type=int,
        default=100,
        metavar="K",
        help="item lines keep the top K with scores, plus the gold's rank and score (0: all; default 100)",
    )
    full_kb.add_argument(
        "--kb-index",
        choices=KB_INDEXES,
        default="auto",
        help="exact: the KB matrix in memory; hnsw: approximate Chroma HNSW; auto: exact unless huge",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a new one under runs/)"
    )
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
    add_presets_file_argument(attack)
    agent = parser.add_argument_group("agent (--pipeline agent): LLM and routing")
    add_llm_arguments(agent)
    add_concurrency_argument(agent)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    add_quiet_argument(parser)
    add_executor_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = RunConfig(
        dataset=args.dataset,
        split=args.split,
        task=args.task,
        scorer=args.scorer,
        pipeline=args.pipeline,
        candidates=args.candidates,
        seeds=args.seeds,
        limit=args.limit,
        checkpoint=args.checkpoint,
        data_dir=args.data_dir,
        with_images=args.with_images,
        batch_size=args.batch_size,
        keep_top=args.keep_top,
        kb_index=args.kb_index,
        attack=args.attack,
        adv_dir=args.adv_dir,
        adv_format=args.adv_format,
        presets_file=args.presets_file,
        agent_flags={flag: getattr(args, flag) for flag in LLM_FLAGS if getattr(args, flag) is not None}
        or None,
        concurrency=args.concurrency,
    )
    out = args.out or default_out(config)
    try:
        results = run(config, out, progress=not args.quiet, executor=executor_from_args(args))
    except NothingScored as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"results: {out / 'results.json'}", file=sys.stderr)
        return 1
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


if __name__ == "__main__":
    raise SystemExit(main())
