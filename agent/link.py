"""``python -m agent.link``: link mentions with the LLM-RetLink graph, one checkpointed thread each.

    # one decision, ad hoc: an image, its caption, the mention and the candidate QIDs
    python -m agent.link --image PATH --text "CAPTION" --mention "M" --qids Q1,Q2,... [--kb demo]
    # one decision of a dataset
    python -m agent.link --dataset NAME --id MENTION_ID
    # many: every pictured mention of a split (JSON lines, then an accuracy line on stderr)
    python -m agent.link --dataset NAME [--split test|all|...] [--limit N]

Common options: [--data-dir DIR] [--task it2t|i2t] [--scorer tagger] [--candidates 10|all]
[--seed 0] [--run-id NAME] [--skip-judge-margin M] [--temperature T] [--checkpoint-db PATH]
[--wiki offline|online] [--llm-base-url URL --llm-model NAME --llm-api-key KEY] [--concurrency N].
The flags mean what they mean in every command (``kb.cli_args``): ``--candidates`` is λ per
mention, ``--qids`` an explicit candidate list, ``--split`` defaults to ``test``.

Each decision prints one JSON object: ``decision`` (QID), ``label``, ``ranking``,
``thread_id``, ``judge`` (used / skipped / fallback), ``seconds`` per node, and the gold when
known. A decision whose thread already finished is read back, not recomputed; one cut off
mid-graph resumes from its last checkpoint (LangGraph's durable execution), so a killed run
re-run with the same ``--run-id`` does no finished decision twice. Candidate labels of the ad
hoc form come from ``--kb``'s knowledge base, else from the Wikidata client (offline replica
by default).

``--concurrency N`` runs N decisions at once on a thread pool (``in_order``), sharing one set of
resources and one SQLite checkpointer (LangGraph's ``SqliteSaver`` guards its connection with a
lock, so threads may share it); records still come out in mention order, so the output is a
sequential run's. The default follows the backend (``default_concurrency``): 1 for the
in-process embedded model, which generates one answer at a time anyway, 8 for a served LLM,
whose waits the other decisions' work then fills.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.concurrency import add_concurrency_argument, default_concurrency, in_order
from agent.graph import compile_graph, open_checkpointer, thread_id
from agent.nodes import AgentContext
from agent.resources import Resources, resources_for
from agent.settings import AgentSettings
from agent.state import ImageRef, LinkState
from agent.traces import node_seconds
from kb.candidates import CandidateSet
from kb.cli_args import (
    LLM_FLAGS,
    add_candidate_arguments,
    add_checkpoint_db_argument,
    add_dataset_arguments,
    add_llm_arguments,
)
from kb.dataset import Dataset, load_dataset
from kb.errors import DatasetError
from kb.ranking import gold_rank_in_order
from kb.records import NIL, Entity, Mention
from kb.runcore.items import candidate_builder


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
    if not mention.has_image:
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
    rank = gold_rank_in_order(ranking, gold)
    return {
        "id": final["mention_id"],
        "gold": gold,
        "candidates": [c["qid"] for c in final["candidates"]],
        "ranking": ranking,
        "prediction": final["decision"],
        "correct": bool(final.get("correct")),
        "rank": rank,
        "gold_in_candidates": gold in ranking,
        "prerank_scores": final["prerank"]["scores"],  # Model*: the pre-ranker on enriched descriptions
        "decided_by": final["decided_by"],
        "judge": judge_status(final),
        "node_seconds": node_seconds(final.get("steps", [])),
        "consult": consult_summary(final),
        "fallbacks": final.get("fallbacks", []),
        "thread": thread,
        "seconds": round(seconds, 2),
        "error": None,
    }


def consult_summary(final: dict[str, Any]) -> dict[str, Any] | None:
    """The consult step of a decision for its item line (None: it did not run): the calls made,
    why it stopped, the uncertainty that started it, and the decision without its evidence."""
    record = final.get("consult")
    if not record:
        return None
    without = ((final.get("judge") or {}).get("without_consult") or {}).get("decision")
    return {
        "calls": len(record["calls"]),
        "tools": [call["name"] for call in record["calls"]],
        "failed_calls": sum(1 for call in record["calls"] if call["status"] != "success"),
        "stopped": record["stopped"],
        "margin": record["margin"],
        "entropy": record["entropy"],
        "seconds": round(record["seconds"], 3),
        "decision_without": without or final["decision"],
    }


def judge_status(final: dict[str, Any]) -> str:
    """``used`` (the judge decided), ``skipped`` (pre-ranker decisive) or ``fallback`` (it failed)."""
    if final["prerank"]["decisive"]:
        return "skipped"
    return "used" if final["decided_by"] == "judge" else "fallback"


def link_mentions(
    linker: Linker,
    dataset: Dataset,
    mentions: Sequence[Mention],
    candidate_sets: Sequence[CandidateSet],
    run_id: str,
    images: dict[str, ImageRef | None] | None = None,
    condition: str = "clean",
    concurrency: int = 1,
) -> Iterator[dict[str, Any]]:
    """Yield one record per mention, in mention order (``concurrency`` decisions at once, see
    ``in_order``); a failing item becomes an ``error`` record."""

    def decide(job: tuple[Mention, CandidateSet]) -> dict[str, Any]:
        mention, candidates = job
        image = images[mention.id] if images and mention.id in images else clean_image(mention)
        started = time.perf_counter()
        try:
            state = initial_state(run_id, mention, candidates, dataset.entities, image)
            final, thread, _ = linker.link(state, condition)
            return decision_record(final, thread, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - recorded per item, the run goes on
            return {
                "id": mention.id,
                "gold": mention.gold,
                "candidates": list(candidates.qids),
                "thread": thread_id(run_id, mention.id, condition),
                "error": f"agent_error: {type(exc).__name__}: {str(exc)[:200]}",
            }

    yield from in_order(decide, list(zip(mentions, candidate_sets, strict=True)), concurrency)


def build_candidates(
    dataset: Dataset, mentions: Sequence[Mention], size: int | None, seed: int
) -> list[CandidateSet]:
    """The same candidate sets ``eval.run`` builds (same builder, same seed)."""
    return candidate_builder(dataset, progress=False).build_all(list(mentions), size, seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.link", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    adhoc = parser.add_argument_group("one ad hoc decision")
    adhoc.add_argument("--image", type=Path, default=None)
    adhoc.add_argument("--text", default=None, help="the caption")
    adhoc.add_argument("--mention", default=None)
    adhoc.add_argument("--kb", default="demo", help="dataset whose KB names the candidates (default demo)")
    data = parser.add_argument_group("dataset mentions")
    add_dataset_arguments(
        data, dataset_required=False, with_images=False, limit_help="first N pictured mentions of the split"
    )
    data.add_argument("--id", default=None, help="one mention id")
    candidates = parser.add_argument_group(
        "candidates (--qids for an ad hoc decision, --candidates λ otherwise)"
    )
    add_candidate_arguments(candidates, qids=True, seeds=False)
    parser.add_argument("--run-id", default=None, help="names the threads (default: a timestamp)")
    add_concurrency_argument(parser)
    add_settings_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.image is None) == (args.dataset is None):
        parser.error("give either --image/--text/--mention/--qids or --dataset")
    if args.dataset is not None and args.qids is not None:
        parser.error(
            "--qids is the candidate list of an ad hoc --image decision; with --dataset, --candidates sets λ"
        )
    settings = settings_from_args(args)
    run_id = args.run_id or time.strftime("link-%Y%m%d-%H%M%S")
    try:
        dataset, mentions, sets = _adhoc(args, settings) if args.image else _from_dataset(args)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    linker = Linker(resources_for(settings, dataset.entities, dataset.name), settings.checkpoint_db)
    correct = total = 0
    try:
        concurrency = args.concurrency or default_concurrency(settings)
        for record in link_mentions(linker, dataset, mentions, sets, run_id, concurrency=concurrency):
            print(json.dumps(cli_record(record, dataset.entities), ensure_ascii=False), flush=True)
            if record["error"] is None and record["gold_in_candidates"]:
                total += 1
                correct += record["correct"]
    finally:
        linker.close()
    if total > 1:
        print(
            f"accuracy {correct}/{total} = {correct / total:.1%} (run {run_id}, {settings.checkpoint_db})",
            file=sys.stderr,
        )
    return 0


def _from_dataset(args: argparse.Namespace) -> tuple[Dataset, list[Mention], list[CandidateSet]]:
    dataset = load_dataset(args.dataset, args.data_dir)
    if args.id:
        mentions = [dataset.mention(args.id)]
    else:
        mentions = [m for m in dataset.split(args.split) if m.image_path is not None][: args.limit]
    return dataset, mentions, build_candidates(dataset, mentions, args.candidates, args.seed)


def _adhoc(
    args: argparse.Namespace, settings: AgentSettings
) -> tuple[Dataset, list[Mention], list[CandidateSet]]:
    """A one-mention dataset from the command line; candidate labels from the KB or Wikidata."""
    import hashlib

    if not (args.text and args.mention and args.qids):
        raise ValueError("--image needs --text, --mention and --qids Q1,Q2,...")
    if not args.image.is_file():
        raise ValueError(f"--image {args.image}: no such file")
    qids = list(args.qids)
    if len(qids) < 2:
        raise ValueError("--qids needs at least two QIDs")
    kb = load_dataset(args.kb)
    entities = {q: kb.entities[q] for q in qids if q in kb.entities}
    unknown = [q for q in qids if q not in entities]
    if unknown:
        wiki = resources_for(settings, kb.entities, kb.name).wiki
        for qid, found in wiki.wikidata_entities(unknown).items():
            entities[qid] = Entity(qid=qid, label=found.title, description=found.text)
    key = hashlib.sha256(f"{args.image.resolve()}\0{args.text}\0{args.mention}".encode()).hexdigest()[:12]
    mention = Mention(
        id=f"adhoc-{key}",
        sentence=args.text,
        mention=args.mention,
        gold=NIL,
        split="adhoc",
        image_path=args.image.resolve(),
    )
    dataset = Dataset(
        name=kb.name, root=kb.root, mentions=[mention], entities={**kb.entities, **entities}, captions=1
    )
    return dataset, [mention], [CandidateSet(mention.id, tuple(qids), None, "command line")]


def cli_record(record: dict[str, Any], entities: dict[str, Entity]) -> dict[str, Any]:
    """The printed object: the decision, its label, how the judge went and per-node seconds."""
    if record["error"]:
        return {"id": record["id"], "thread_id": record["thread"], "error": record["error"]}
    decision = record["prediction"]
    return {
        "id": record["id"],
        "decision": decision,
        "label": entities[decision].label if decision in entities else decision,
        "ranking": record["ranking"],
        "thread_id": record["thread"],
        "judge": record["judge"],
        "gold": record["gold"],
        "correct": record["correct"] if record["gold"] is not None else None,
        "seconds": record["node_seconds"],
        "total_seconds": record["seconds"],
        "fallbacks": record["fallbacks"],
    }


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's settings as flags (shared by ``agent.link`` and ``agent.chat``); an unset flag
    keeps the environment's value or the default (``AgentSettings``: it2t, tagger)."""
    parser.add_argument("--task", choices=("i2t", "it2t"), default=None)
    parser.add_argument("--scorer", default=None)
    add_checkpoint_db_argument(parser)
    add_llm_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    chosen = {"task": args.task, "scorer": args.scorer}
    if args.checkpoint_db:
        chosen["checkpoint_db"] = args.checkpoint_db
    flags = {flag: getattr(args, flag) for flag in LLM_FLAGS}
    return AgentSettings.from_flags(flags, **{k: v for k, v in chosen.items() if v is not None})


if __name__ == "__main__":
    raise SystemExit(main())
