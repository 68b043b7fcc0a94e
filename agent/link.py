"""``python -m agent.link``: link mentions with the LLM-RetLink graph, one checkpointed thread each.

    python -m agent.link --dataset demo [--data-dir DIR] [--split test] [--limit N] [--mention ID ...]
        [--task it2t|i2t] [--scorer tagger] [--candidates 10] [--seed 0] [--run-id NAME]
        [--skip-judge-margin M] [--temperature 0] [--db PATH] [--wiki offline|online]
        [--llm-base-url URL --llm-model NAME --llm-api-key KEY] [--json]

Prints one line per decision (mention, decision, gold, who decided, seconds, thread id) and
an accuracy line. A decision whose thread already finished is read back, not recomputed; one
cut off mid-graph resumes from its last checkpoint (LangGraph's durable execution), so a
killed run re-run with the same ``--run-id`` does no finished decision twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.graph import compile_graph, open_checkpointer, thread_id
from agent.nodes import AgentContext
from agent.resources import Resources, resources_for
from agent.settings import AgentSettings
from agent.state import ImageRef, LinkState
from kb.candidates import CandidateBuilder, CandidateSet
from kb.dataset import Dataset, dataset_names, load_dataset
from kb.errors import DatasetError
from kb.records import Entity, Mention


def initial_state(
    run_id: str,
    mention: Mention,
    candidates: CandidateSet,
    entities: dict[str, Entity],
    image: ImageRef | None,
) -> LinkState:
    """The state a decision starts from: the mention, its candidates and where its image is."""
    return {
        "run_id": run_id,
        "mention_id": mention.id,
        "mention": mention.mention,
        "sentence": mention.sentence,
        "language": mention.language,
        "gold": None if mention.is_nil else mention.gold,
        "image": image,
        "candidates": [
            {
                "qid": q,
                "label": entities[q].label if q in entities else q,
                "description": entities[q].description if q in entities else "",
            }
            for q in candidates.qids
        ],
        "fallbacks": [],
        "steps": [],
    }


def clean_image(mention: Mention) -> ImageRef | None:
    if mention.image_path is None or not mention.image_path.is_file():
        return None
    return {
        "path": str(mention.image_path),
        "bbox": list(mention.bbox) if mention.bbox else None,
        "condition": "clean",
    }


@dataclass
class Linker:
    """A compiled graph on a checkpointer plus the resources its nodes use."""

    resources: Resources
    db: Path

    def __post_init__(self) -> None:
        self.checkpointer = open_checkpointer(self.db)
        self.graph = compile_graph(self.checkpointer)

    def link(self, state: LinkState, condition: str) -> tuple[dict[str, Any], str, bool]:
        """Run (or resume, or read back) one decision: (final state, thread id, computed now)."""
        thread = thread_id(state["run_id"], state["mention_id"], condition)
        config = {"configurable": {"thread_id": thread}}
        context = AgentContext(self.resources)
        snapshot = self.graph.get_state(config)
        if snapshot.values.get("decision") is not None and not snapshot.next:
            return snapshot.values, thread, False
        if snapshot.next:  # cut off mid-graph: continue from the last checkpoint
            return self.graph.invoke(None, config, context=context), thread, True
        return self.graph.invoke(state, config, context=context), thread, True

    def close(self) -> None:
        self.checkpointer.conn.close()


def decision_record(final: dict[str, Any], thread: str, seconds: float) -> dict[str, Any]:
    """The per-item line of a decision, in eval's schema plus the agent's own fields."""
    ranking = final["ranking"]
    gold = final.get("gold")
    rank = ranking.index(gold) + 1 if gold in ranking else len(ranking) + 1
    return {
        "id": final["mention_id"],
        "gold": gold,
        "candidates": [c["qid"] for c in final["candidates"]],
        "ranking": ranking,
        "prediction": final["decision"],
        "correct": bool(final.get("correct")),
        "rank": rank,
        "gold_in_candidates": gold in ranking,
        "decided_by": final["decided_by"],
        "fallbacks": final.get("fallbacks", []),
        "thread": thread,
        "seconds": round(seconds, 2),
        "error": None,
    }


def link_mentions(
    linker: Linker,
    dataset: Dataset,
    mentions: Sequence[Mention],
    candidate_sets: Sequence[CandidateSet],
    run_id: str,
    images: dict[str, ImageRef | None] | None = None,
    condition: str = "clean",
) -> Iterator[dict[str, Any]]:
    """Yield one record per mention as it finishes; a failing item becomes an ``error`` record."""
    for mention, candidates in zip(mentions, candidate_sets, strict=True):
        image = (
            (images or {}).get(mention.id, clean_image(mention))
            if images is not None
            else clean_image(mention)
        )
        started = time.perf_counter()
        try:
            state = initial_state(run_id, mention, candidates, dataset.entities, image)
            final, thread, _ = linker.link(state, condition)
            yield decision_record(final, thread, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - recorded per item, the run goes on
            yield {
                "id": mention.id,
                "gold": mention.gold,
                "candidates": list(candidates.qids),
                "thread": thread_id(run_id, mention.id, condition),
                "error": f"agent_error: {type(exc).__name__}: {str(exc)[:200]}",
            }


def build_candidates(
    dataset: Dataset, mentions: Sequence[Mention], size: int | None, seed: int
) -> list[CandidateSet]:
    """The same candidate sets ``eval.run`` builds (same builder, same seed)."""
    from kb.build import store_for

    store = store_for(dataset, progress=False)
    builder = CandidateBuilder(dataset.entities, store.vectors(sorted(dataset.entities)))
    return builder.build_all(list(mentions), size, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.link", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(dataset_names())}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="all")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--mention", nargs="*", default=None, help="link only these mention ids")
    parser.add_argument("--task", choices=("i2t", "it2t"), default="it2t")
    parser.add_argument("--scorer", default="tagger")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-id", default=None, help="names the threads (default: a timestamp)")
    parser.add_argument("--skip-judge-margin", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None, help="judge temperature (paper: 0.75)")
    parser.add_argument("--db", type=Path, default=None, help="SQLite checkpoint file")
    parser.add_argument("--wiki", choices=("offline", "online"), default=None)
    parser.add_argument("--llm-base-url", default=None)
    parser.add_argument("--llm-model", default=None)
    parser.add_argument("--llm-api-key", default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON record per decision")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    try:
        dataset = load_dataset(args.dataset, args.data_dir)
        mentions = [dataset.mention(m) for m in args.mention] if args.mention else dataset.split(args.split)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mentions = [m for m in mentions if m.image_path is not None][: args.limit] if args.limit else mentions
    run_id = args.run_id or time.strftime("link-%Y%m%d-%H%M%S")
    sets = build_candidates(dataset, mentions, args.candidates, args.seed)
    linker = Linker(resources_for(settings, dataset.entities, dataset.name), settings.checkpoint_db)
    correct = total = 0
    try:
        for record in link_mentions(linker, dataset, mentions, sets, run_id):
            if args.json:
                print(json.dumps(record, ensure_ascii=False), flush=True)
            else:
                print(format_record(record, dataset.entities), flush=True)
            if record["error"] is None and record["gold_in_candidates"]:
                total += 1
                correct += record["correct"]
    finally:
        linker.close()
    if total:
        print(
            f"accuracy {correct}/{total} = {correct / total:.1%} (run {run_id}, checkpoints {settings.checkpoint_db})"
        )
    return 0


def format_record(record: dict[str, Any], entities: dict[str, Entity]) -> str:
    if record["error"]:
        return f"{record['id']}: {record['error']}"

    def name(qid: str | None) -> str:
        return f"{entities[qid].label} ({qid})" if qid in entities else str(qid)

    mark = "✓" if record["correct"] else "✗"
    return (
        f"{mark} {record['id']}: {name(record['prediction'])} | gold {name(record['gold'])} | "
        f"{record['decided_by']} | {record['seconds']:.1f}s | {record['thread']}"
    )


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    settings = AgentSettings.from_env(
        task=args.task, scorer=args.scorer, skip_judge_margin=args.skip_judge_margin
    )
    llm = settings.llm
    overrides = {
        k: v
        for k, v in (
            ("base_url", args.llm_base_url),
            ("model", args.llm_model),
            ("api_key", args.llm_api_key),
        )
        if v is not None
    }
    if args.temperature is not None:
        overrides["temperature"] = args.temperature
    settings = replace(settings, llm=replace(llm, **overrides))
    if args.wiki:
        settings = replace(settings, wiki=replace(settings.wiki, mode=args.wiki))
    if args.db:
        settings = replace(settings, checkpoint_db=args.db)
    return settings


if __name__ == "__main__":
    raise SystemExit(main())
