"""``python -m eval.consult_margin``: choose the consult step's margin on one split, report on another.

    python -m eval.run --dataset wikimel --split all --with-images --pipeline agent --task it2t \\
        --consult --consult-margin 1.01 --out runs/consult-all     # every decision consults
    python -m eval.consult_margin runs/consult-all --choose train --report dev

A run whose every decision consulted (margin threshold above 1) holds, per decision, the agent's
rank with its look-ups and without them (``stages["no-consult"]``, the judge asked again without
the evidence), and the pre-ranker's margin. A threshold t then needs no model call: a decision
consults when its margin is below t, so its rank is the consulted one, else the unconsulted one.
Every t in ``MARGINS`` is scored by acc@1 on the ``--choose`` split's mentions; ties go to the
lower mean negative log-likelihood of the gold under the fused decision distribution (read from
the run's checkpoints: with and without the look-ups; a proper scoring rule, as
``agent.calibrate`` breaks its ties), then to the smaller t (fewer look-ups). The winner is reported on the ``--report`` split beside never (t = 0)
and always consulting, Model and Model*, each with its 95% bootstrap interval, and the paired
difference chosen − never. Splits are the dataset's own (WikiMEL's test split holds no photo,
so its photos are chosen on train and reported on dev). Prints one JSON object; ``--out`` writes it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from agent.judge import FLOOR
from eval.metrics import bootstrap_ci, paired_bootstrap
from kb.dataset import load_dataset
from kb.runcore.files import read_jsonl, strict

MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 0.999, 1.01)


def _gold_probabilities(values: dict[str, Any]) -> tuple[float, float]:
    """The fused probability of the gold with the look-ups and without them (0 off the shortlist)."""
    judge = values.get("judge") or {}
    gold = values.get("gold")
    fused = (judge.get("distributions") or {}).get("fused") or {}
    alone = ((judge.get("without_consult") or {}).get("distributions") or {}).get("fused") or fused
    return float(fused.get(gold, 0.0)), float(alone.get(gold, 0.0))


def consulted_rows(run: Path) -> list[dict[str, Any]]:
    """Per decision of a run that consulted every time: id, margin, the four stage ranks and the
    gold's fused probability with and without the look-ups."""
    from agent.traces import TraceStore

    traces = TraceStore(run / "checkpoints.sqlite")
    rows = []
    for record in read_jsonl(run / "items.jsonl"):
        if record.get("error"):
            continue
        if not record.get("consult"):
            raise ValueError(
                f"{run / 'items.jsonl'}: {record['id']} did not consult; run eval.run with "
                "--consult --consult-margin 1.01 so that every decision does"
            )
        stages = record["stages"]
        p_with, p_without = _gold_probabilities(traces.get(record["thread"]).values)
        rows.append(
            {
                "id": record["id"],
                "margin": record["consult"]["margin"],
                "with": record["rank"],
                "without": stages["no-consult"]["rank"],
                "model": stages["model"]["rank"] if stages.get("model") else None,
                "model*": stages["model*"]["rank"],
                "p_with": p_with,
                "p_without": p_without,
            }
        )
    traces.close()
    return rows


def ranks_at(rows: list[dict[str, Any]], margin: float) -> np.ndarray:
    """(mentions, 1) ranks had the step consulted below ``margin`` only."""
    return np.array([[r["with"] if r["margin"] < margin else r["without"]] for r in rows], dtype=np.float64)


def nll_at(rows: list[dict[str, Any]], margin: float) -> float:
    """Mean −log p(gold) of the fused decision had the step consulted below ``margin`` only."""
    chosen = [r["p_with"] if r["margin"] < margin else r["p_without"] for r in rows]
    return round(float(np.mean([-math.log(max(p, FLOOR)) for p in chosen])), 5)


def accuracy(ranks: np.ndarray) -> float | None:
    return round(float((ranks == 1).mean()), 4) if ranks.size else None


def choose_and_report(rows: list[dict[str, Any]], split_of: dict[str, str], choose: str, report: str) -> dict:
    chosen_rows = [r for r in rows if split_of.get(r["id"]) == choose]
    report_rows = [r for r in rows if split_of.get(r["id"]) == report]
    if not chosen_rows or not report_rows:
        raise ValueError(
            f"{len(chosen_rows)} decisions in {choose!r}, {len(report_rows)} in {report!r}: need both"
        )
    grid = [
        {
            "margin": m,
            "acc@1": accuracy(ranks_at(chosen_rows, m)),
            "nll": nll_at(chosen_rows, m),
            "consulted": sum(r["margin"] < m for r in chosen_rows),
        }
        for m in MARGINS
    ]
    best = max(grid, key=lambda g: (g["acc@1"], -g["nll"], -g["margin"]))

    def block(ranks: np.ndarray) -> dict[str, Any]:
        return {"acc@1": accuracy(ranks), "ci95": bootstrap_ci(ranks)["acc@1"]}

    never, always = ranks_at(report_rows, 0.0), ranks_at(report_rows, 2.0)
    at_best = ranks_at(report_rows, best["margin"])
    stage = {
        name: np.array([[r[name]] for r in report_rows if r[name] is not None], dtype=np.float64)
        for name in ("model", "model*")
    }
    return {
        "choose": {"split": choose, "n": len(chosen_rows), "margin": best["margin"], "grid": grid},
        "report": {
            "split": report,
            "n": len(report_rows),
            "consulted": sum(r["margin"] < best["margin"] for r in report_rows),
            "chosen": {**block(at_best), "nll": nll_at(report_rows, best["margin"])},
            "never": {**block(never), "nll": nll_at(report_rows, 0.0)},
            "always": {**block(always), "nll": nll_at(report_rows, 2.0)},
            "model": block(stage["model"]),
            "model*": block(stage["model*"]),
            "chosen-never": paired_bootstrap(never, at_best),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.consult_margin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", type=Path, help="an eval.run --pipeline agent --consult folder")
    parser.add_argument("--choose", default="dev", help="split the margin is chosen on (default dev)")
    parser.add_argument("--report", default="test", help="split it is reported on (default test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    config = json.loads((args.run / "config.json").read_text(encoding="utf-8"))
    dataset = load_dataset(config["dataset"], config.get("data_dir"))
    split_of = {m.id: m.split for m in dataset.mentions}
    try:
        result = choose_and_report(consulted_rows(args.run), split_of, args.choose, args.report)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = strict({"run": str(args.run), "dataset": dataset.name, **result})
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
