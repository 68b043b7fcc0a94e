"""Seed paper 000's Table 2 from ``results.json`` files: top-1 accuracy per attack, per scorer.

    python -m eval.tables RUN [RUN ...] [--out DIR]      # RUN: a run folder or its results.json

One table per dataset. Rows are scorers (an agent run's row: ``agent (<scorer>)``); columns
follow Table 2, for I2T and then IT2T: RAW (the clean run), PGD-N, PGD-S, APGD-N, APGD-S,
CW-N, CW-S, then any custom preset a run replayed (by name). Cells are acc@1 in % (mean over
seeds), "–" where no run filled them; a later file overrides an earlier one's cell, so an
i2t run and an it2t run fill one table. Runs of other tasks (t2t) are left out. Writes
``table.md`` (the printed tables), ``table.csv`` (one header row, a ``Dataset`` column, empty
cells where the Markdown has "–") and ``accuracy_per_attack.png`` (grouped bars: conditions on
x, one bar per scorer, one panel per dataset and task). ``eval.run --attack`` calls
``write_tables`` on its own results; ``eval.report`` puts the same tables and plot in HTML.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from eval.results import load_results

TASKS = {"i2t": "I2T", "it2t": "IT2T"}
RAW = "RAW"
TABLE2 = {
    "pgd-n": "PGD-N",
    "pgd-s": "PGD-S",
    "apgd-n": "APGD-N",
    "apgd-s": "APGD-S",
    "cw-n": "CW-N",
    "cw-s": "CW-S",
}
MARKDOWN, CSV, PLOT = "table.md", "table.csv", "accuracy_per_attack.png"
MISSING = "–"

Cells = dict[str, dict[str, dict[tuple[str, str], float]]]  # dataset -> scorer -> (task, column) -> acc %


def collect(results: Sequence[dict[str, Any]]) -> tuple[Cells, list[str]]:
    """Accuracy cells of every run, and the condition columns in Table 2 order (custom ones last)."""
    cells: Cells = {}
    custom: list[str] = []
    for run in results:
        if run["task"] not in TASKS:
            continue
        row = cells.setdefault(run["dataset"], {}).setdefault(row_name(run), {})
        row[(run["task"], RAW)] = run["metrics"]["acc@1"]["mean"] * 100
        for preset, attacked in (run.get("attacks") or {}).items():
            column = TABLE2.get(preset, preset)
            if preset not in TABLE2 and column not in custom:
                custom.append(column)
            row[(run["task"], column)] = attacked["metrics"]["acc@1"]["mean"] * 100
    return cells, [RAW, *TABLE2.values(), *custom]


def row_name(run: dict[str, Any]) -> str:
    """A scorer's row, or ``agent (<scorer>)`` for the agent with that scorer as pre-ranker."""
    return f"agent ({run['scorer']})" if run.get("pipeline") == "agent" else run["scorer"]


def headers(columns: Sequence[str]) -> list[str]:
    return [f"{label} {column}" for label in TASKS.values() for column in columns]


def cell_text(value: float | None, missing: str) -> str:
    return missing if value is None or value != value else f"{value:.1f}"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    cells, columns = collect(results)
    blocks = []
    for dataset, rows in cells.items():
        names = ["Model", *headers(columns)]
        lines = [f"### {dataset}", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        for scorer, row in rows.items():
            values = [cell_text(row.get((task, c)), MISSING) for task in TASKS for c in columns]
            lines.append("| " + " | ".join([scorer, *values]) + " |")
        lines += ["", f"acc@1 (%); {counts_line(results, dataset)}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def counts_line(results: Sequence[dict[str, Any]], dataset: str) -> str:
    """Which items each cell is over: n per run and condition."""
    parts = []
    for run in results:
        if run["dataset"] == dataset and run["task"] in TASKS:
            attacks = run.get("attacks") or {}
            order = [*(p for p in TABLE2 if p in attacks), *(p for p in attacks if p not in TABLE2)]
            attacked = ", ".join(f"{TABLE2.get(p, p)} {attacks[p]['n']}" for p in order)
            parts.append(
                f"{row_name(run)} {TASKS[run['task']]}: split {run['split']}, λ={run['candidates']}, "
                f"RAW n={run['n']}" + (f", {attacked}" if attacked else "")
            )
    return "; ".join(parts)


def csv_text(results: Sequence[dict[str, Any]]) -> str:
    cells, columns = collect(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Dataset", "Model", *headers(columns)])
    for dataset, rows in cells.items():
        for scorer, row in rows.items():
            values = [row.get((task, c)) for task in TASKS for c in columns]
            writer.writerow([dataset, scorer, *("" if v is None else round(v, 2) for v in values)])
    return buffer.getvalue()


def plot(results: Sequence[dict[str, Any]], path: Path | BinaryIO) -> None:
    """Grouped bars of accuracy per condition, one bar per scorer, one panel per dataset and task
    (a PNG file, or PNG bytes into a binary stream for ``eval.report``)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    cells, columns = collect(results)
    panels = [
        (dataset, task)
        for dataset, rows in cells.items()
        for task in TASKS
        if any(key[0] == task for row in rows.values() for key in row)
    ]
    figure = Figure(figsize=(1.0 + 0.9 * len(columns), 3.2 * max(len(panels), 1)), layout="constrained")
    axes = figure.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
    for ax, (dataset, task) in zip(axes, panels, strict=False):
        rows = cells[dataset]
        shown = [c for c in columns if any((task, c) in row for row in rows.values())]
        width = 0.8 / max(len(rows), 1)
        for k, (scorer, row) in enumerate(rows.items()):
            xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(shown))]
            ax.bar(xs, [row.get((task, c), float("nan")) for c in shown], width, label=scorer)
        ax.set_xticks(range(len(shown)), shown)
        ax.set_ylabel("acc@1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{dataset} {TASKS[task]}")
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=120, format="png")


def write_tables(results: Sequence[dict[str, Any]], out: Path) -> str:
    """Write table.md, table.csv and the PNG plot into ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (out / MARKDOWN).write_text(text, encoding="utf-8")
    (out / CSV).write_text(csv_text(results), encoding="utf-8")
    plot(results, out / PLOT)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.tables",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or their results.json)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for table.md/.csv and the plot")
    args = parser.parse_args(argv)
    try:
        results = [load_results(path) for path in args.runs]
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(write_tables(results, args.out))
    print(f"tables: {args.out / MARKDOWN}, {args.out / CSV}, {args.out / PLOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
