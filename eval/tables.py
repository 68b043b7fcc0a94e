"""Seed paper 000's Tables 2, 3 and 4 from ``results.json`` files: top-1 accuracy per attack.

Table 2: per scorer (and the agent, and the MLLM alone). Table 3: Model vs Model* of an agent
run's stages (``eval.stages``), on the same items. Table 4: the MLLM alone (``--pipeline
mllm``) vs MLLM* (the agent with that LLM as judge).

    python -m eval.tables RUN [RUN ...] [--out DIR]      # RUN: a run folder or its results.json

One table per dataset. Rows are scorers (an agent run's row: ``agent (<scorer>)``); columns
follow Table 2, for I2T and then IT2T: RAW (the clean run), PGD-N, PGD-S, APGD-N, APGD-S,
CW-N, CW-S, then any custom preset a run replayed (by name). Cells are acc@1 in % (mean over
seeds), "–" where no run filled them; a later file overrides an earlier one's cell, so an
i2t run and an it2t run fill one table. Runs of other tasks (t2t) are left out. Writes
``table.md`` (the printed tables), ``table.csv`` (Table 2: one header row, a ``Dataset``
column, empty cells where the Markdown has "–"; ``table3.csv`` and ``table4.csv`` likewise when
a run fills them) and ``accuracy_per_attack.png`` (grouped bars: conditions on
x, one bar per scorer, one panel per dataset and task). ``eval.run --attack`` calls
``write_tables`` on its own results; ``eval.report`` puts the same tables and plot in HTML.
Where a run ranked the whole KB (``--candidates all``), the full-KB table of ``eval.full_kb_table``
follows (MIMIC's layout: H@1/3/5/10/20, MRR, MR, beside the same scorer's λ runs; t2t included),
also as ``table_full_kb.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from eval import full_kb_table
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

Cells = dict[str, dict[str, dict[tuple[str, str], float]]]  # dataset -> row -> (task, column) -> acc %
Block = Callable[[dict[str, Any]], dict[str, Any] | None]
"""Picks the block a row's cell is read from out of a condition's results (clean or an attack)."""

TABLES = {
    "table2": "Seed paper Table 2: acc@1 under attack, per model",
    "table3": "Seed paper Table 3: Model (static prompts) vs Model* (LLM-enriched descriptions), same items",
    "table4": "Seed paper Table 4: MLLM alone vs MLLM* (the same LLM inside LLM-RetLink)",
}


def rows_of(run: dict[str, Any], table: str) -> list[tuple[str, Block]]:
    """The rows ``run`` fills in ``table``, each with how to read its block of a condition.

    Table 2: one row per run (the scorer, ``agent (<scorer>)``, or the MLLM). Table 3: an agent
    run's ``model`` and ``model*`` stages as ``<scorer>`` and ``<scorer>*``. Table 4: an MLLM
    run as ``<llm>`` and an agent run's final decision as ``<llm>*``.
    """
    pipeline = run.get("pipeline", "prerank")
    whole: Block = lambda block: block  # noqa: E731
    if table == "table2":
        return [(row_name(run), whole)]
    if table == "table3" and run.get("stages"):
        return [
            (run["scorer"], lambda block: (block.get("stages") or {}).get("model")),
            (f"{run['scorer']}*", lambda block: (block.get("stages") or {}).get("model*")),
        ]
    if table == "table4" and pipeline in ("mllm", "agent") and run.get("llm"):
        return [(run["llm"] if pipeline == "mllm" else f"{run['llm']}*", whole)]
    return []


def collect(results: Sequence[dict[str, Any]], table: str = "table2") -> tuple[Cells, list[str]]:
    """Accuracy cells (acc@1 %, mean over seeds) of every run for ``table``, and the condition
    columns in Table 2 order (custom presets last)."""
    return _gather(results, table, lambda picked: _number(picked, "metrics", "acc@1", "mean"))


def intervals(results: Sequence[dict[str, Any]], table: str = "table2") -> dict[str, dict[str, dict]]:
    """The cells' 95% bootstrap intervals of acc@1 (in %), where the results hold them."""
    return _gather(results, table, lambda picked: ((picked or {}).get("ci95") or {}).get("acc@1"))[0]


def _number(block: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        block = (block or {}).get(key)
    return block


def _gather(
    results: Sequence[dict[str, Any]], table: str, value: Callable[[Any], Any]
) -> tuple[Cells, list[str]]:
    cells: Cells = {}
    custom: list[str] = []
    for run in results:
        if run["task"] not in TASKS:
            continue
        for name, pick in rows_of(run, table):
            row = cells.setdefault(run["dataset"], {}).setdefault(name, {})
            for preset, block in [(RAW, run), *(run.get("attacks") or {}).items()]:
                column = TABLE2.get(preset, preset)
                if preset not in TABLE2 and preset != RAW and column not in custom:
                    custom.append(column)
                found = value(pick(block))
                if isinstance(found, list) and len(found) == 2:
                    row[(run["task"], column)] = (found[0] * 100, found[1] * 100)
                elif isinstance(found, int | float):
                    row[(run["task"], column)] = found * 100
    return cells, [RAW, *TABLE2.values(), *custom]


def row_name(run: dict[str, Any]) -> str:
    """A scorer's row, ``agent (<scorer>)`` for the agent with that scorer as pre-ranker, or the
    MLLM's name for the judge alone."""
    if run.get("pipeline") == "agent":
        return f"agent ({run['scorer']})"
    if run.get("pipeline") == "mllm":
        return f"mllm ({run.get('llm') or '?'})"
    return run["scorer"]


def headers(columns: Sequence[str]) -> list[str]:
    return [f"{label} {column}" for label in TASKS.values() for column in columns]


def cell_text(value: float | None, missing: str, interval: tuple[float, float] | None = None) -> str:
    if value is None or value != value:
        return missing
    return f"{value:.1f}" if interval is None else f"{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """Table 2 for every dataset, then Tables 3 and 4 where some run fills them."""
    blocks = []
    for table, title in TABLES.items():
        cells, columns = collect(results, table)
        if not cells:
            continue
        if table != "table2":
            blocks.append(f"## {title}")
        spans = intervals(results, table)
        for dataset, rows in cells.items():
            names = ["Model", *headers(columns)]
            lines = [f"### {dataset}", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
            for name, row in rows.items():
                span = spans.get(dataset, {}).get(name, {})
                values = [
                    cell_text(row.get((task, c)), MISSING, span.get((task, c)))
                    for task in TASKS
                    for c in columns
                ]
                lines.append("| " + " | ".join([name, *values]) + " |")
            lines += ["", f"acc@1 (%) [95% bootstrap interval]; {counts_line(results, dataset)}"]
            blocks.append("\n".join(lines))
    full_kb = full_kb_table.markdown(results)  # MIMIC's layout, where a run ranked the whole KB
    if full_kb:
        blocks.append(full_kb)
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


def csv_text(results: Sequence[dict[str, Any]], table: str = "table2") -> str:
    """One table's cells, one row per (dataset, model); empty where the Markdown has "–"."""
    cells, columns = collect(results, table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Dataset", "Model", *headers(columns)])
    for dataset, rows in cells.items():
        for name, row in rows.items():
            values = [row.get((task, c)) for task in TASKS for c in columns]
            writer.writerow([dataset, name, *("" if v is None else round(v, 2) for v in values)])
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
    for table in ("table3", "table4"):
        if collect(results, table)[0]:
            (out / f"{table}.csv").write_text(csv_text(results, table), encoding="utf-8")
    if full_kb_table.collect(results)[1]:
        (out / full_kb_table.CSV).write_text(full_kb_table.csv_text(results), encoding="utf-8")
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
