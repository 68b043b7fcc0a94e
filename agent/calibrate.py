"""``python -m agent.calibrate``: choose the judge's fusion weight and skip margin on a dev split.

    python -m agent.calibrate --dataset wikimel --split dev [--limit N] [--candidates 10]
        [--task it2t] [--seed 0] [--out FILE] [--run-id NAME] [--checkpoint-db PATH]

Runs the agent on the split's pictured mentions with the judge always on (each decision a
checkpointed thread, so a re-run reads them back), keeps per mention the pre-ranker's and the
judge's distributions over the shortlist, and then, without another model call, scores every
pair of ``judge_weight`` w (``WEIGHTS``) and ``skip_judge_margin`` (``MARGINS``; None: always
judge, 0: never) by acc@1 on those mentions. The best pair wins; ties go to the lower mean
negative log-likelihood of the gold (a proper scoring rule), then to fewer judge calls. It
prints one JSON object and writes it to ``--out`` (default
``runs/calibration/<dataset>-<split>-<task>.json``): ``settings`` ({judge_weight,
skip_judge_margin}, what ``AgentSettings.replace(**settings)`` takes), ``env`` (the same as
``MEL_AGENT_*`` assignments), ``acc@1``, the pre-ranker's and the judge's own acc@1 on the same
mentions, ``n`` and the whole grid. ``eval`` can call ``collect`` and ``choose`` instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.judge import FLOOR, argmax, fuse, shortlist_distribution

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
MARGINS: tuple[float | None, ...] = (None, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.0)


def calibration_item(final: dict[str, Any]) -> dict[str, Any]:
    """What ``choose`` needs of one finished decision (the judge having run)."""
    prerank = final["prerank"]
    qids = prerank.get("qids") or [c["qid"] for c in final["candidates"]]
    judge = final.get("judge") or {}
    shortlist = judge.get("shortlist") or prerank["order"][:1]
    judged = (judge.get("distributions") or {}).get("judge")
    gold = final.get("gold")
    return {
        "id": final["mention_id"],
        "gold": gold,
        "in_candidates": gold in qids,
        "margin": prerank["margin"],
        "top": prerank["order"][0],
        "p_top": dict(zip(qids, prerank["probabilities"], strict=True)),
        "shortlist": shortlist,
        "prerank": shortlist_distribution(prerank, qids, shortlist),
        "judge": [judged[q] for q in shortlist] if judged else None,
        "free_text": judge.get("decision")
        if judge and not judged and judge.get("fallback") is None
        else None,
    }


def decide(item: dict[str, Any], weight: float, margin: float | None) -> tuple[str, float, bool]:
    """(decision, probability given to the gold, whether the judge ran) under (weight, margin)."""
    gold = item["gold"]
    if margin is not None and item["margin"] >= margin:
        return item["top"], float(item["p_top"].get(gold, 0.0)), False
    if item["judge"] is None:
        decision = item["free_text"] or item["top"]
        return decision, 1.0 if decision == gold else 0.0, True
    fused = fuse(item["prerank"], item["judge"], weight)
    p_gold = fused[item["shortlist"].index(gold)] if gold in item["shortlist"] else 0.0
    return item["shortlist"][argmax(fused)], p_gold, True


def choose(
    items: Sequence[dict[str, Any]],
    weights: Iterable[float] = WEIGHTS,
    margins: Iterable[float | None] = MARGINS,
) -> dict[str, Any]:
    """The (weight, margin) with the best acc@1 on ``items`` (see module doc), and the grid."""
    scored = [i for i in items if i["in_candidates"]]
    if not scored:
        raise ValueError("no calibration mention has its gold among the candidates")
    grid = []
    for margin in margins:
        for weight in weights:
            outcomes = [decide(i, weight, margin) for i in scored]
            correct = sum(d == i["gold"] for (d, _, _), i in zip(outcomes, scored, strict=True))
            nll = sum(-math.log(max(p, FLOOR)) for _, p, _ in outcomes) / len(scored)
            calls = sum(ran for _, _, ran in outcomes)
            grid.append(
                {
                    "judge_weight": weight,
                    "skip_judge_margin": margin,
                    "acc@1": round(correct / len(scored), 4),
                    "nll": round(nll, 4),
                    "judge_calls": calls,
                }
            )
    best = max(grid, key=lambda g: (g["acc@1"], -g["nll"], -g["judge_calls"]))
    settings = {"judge_weight": best["judge_weight"], "skip_judge_margin": best["skip_judge_margin"]}
    prerank_alone = next(g for g in grid if g["skip_judge_margin"] == 0.0)
    judge_alone = next(g for g in grid if g["skip_judge_margin"] is None and g["judge_weight"] == 1.0)
    margin = settings["skip_judge_margin"]
    return {
        "settings": settings,
        "env": f"MEL_AGENT_JUDGE_WEIGHT={settings['judge_weight']} "
        f"MEL_AGENT_SKIP_JUDGE_MARGIN={'' if margin is None else margin}",
        "acc@1": best["acc@1"],
        "nll": best["nll"],
        "judge_calls": best["judge_calls"],
        "prerank_acc@1": prerank_alone["acc@1"],
        "judge_acc@1": judge_alone["acc@1"],
        "n": len(scored),
        "n_without_gold": len(items) - len(scored),
        "grid": grid,
    }


def collect(
    linker: Any, dataset: Any, mentions: Sequence[Any], candidate_sets: Sequence[Any], run_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(calibration items, errors) from the agent's decisions; the linker's settings must have
    ``skip_judge_margin=None`` so that every decision has the judge's distribution."""
    from agent.link import link_mentions

    if linker.resources.settings.skip_judge_margin is not None:
        raise ValueError("calibration needs every judge distribution: run with skip_judge_margin=None")
    items, errors = [], []
    for record in link_mentions(linker, dataset, mentions, candidate_sets, run_id):
        if record["error"]:
            errors.append({"id": record["id"], "error": record["error"]})
            continue
        final = linker.graph.get_state({"configurable": {"thread_id": record["thread"]}}).values
        items.append(calibration_item(final))
    return items, errors


def main(argv: list[str] | None = None) -> int:
    from agent.link import Linker, add_settings_arguments, build_candidates, settings_from_args
    from agent.resources import resources_for
    from kb.cli_args import add_candidate_arguments, add_dataset_arguments
    from kb.dataset import load_dataset

    parser = argparse.ArgumentParser(
        prog="python -m agent.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(
        parser, split_default="dev", with_images=False, limit_help="first N pictured mentions of the split"
    )
    add_candidate_arguments(parser, qids=False, seeds=False)
    add_settings_arguments(parser)
    parser.add_argument(
        "--run-id", default=None, help="names the threads (default: calibrate-<dataset>-<split>)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = settings_from_args(args).replace(skip_judge_margin=None)
    dataset = load_dataset(args.dataset, args.data_dir)
    mentions = [m for m in dataset.split(args.split) if m.image_path is not None and m.image_path.is_file()]
    mentions = mentions[: args.limit]
    if not mentions:
        print(f"error: no pictured mention in {args.dataset} {args.split}", file=sys.stderr)
        return 2
    sets = build_candidates(dataset, mentions, args.candidates, args.seed)
    run_id = args.run_id or f"calibrate-{dataset.name}-{args.split}-{settings.task}-l{args.candidates}"
    linker = Linker(resources_for(settings, dataset.entities, dataset.name), settings.checkpoint_db)
    try:
        items, errors = collect(linker, dataset, mentions, sets, run_id)
    finally:
        linker.close()
    result = choose(items)
    result.update(
        dataset=dataset.name,
        split=args.split,
        task=settings.task,
        candidates=args.candidates,
        seed=args.seed,
        run_id=run_id,
        checkpoint_db=str(settings.checkpoint_db),
        agent=settings.identity(),
        errors=errors,
        items=items,
    )
    out = args.out or Path("runs") / "calibration" / f"{dataset.name}-{args.split}-{settings.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = {k: result[k] for k in ("settings", "env", "acc@1", "prerank_acc@1", "judge_acc@1", "n")}
    print(json.dumps({**summary, "out": str(out)}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
