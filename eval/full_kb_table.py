"""Full-KB ranking in MIMIC's layout: H@1/3/5/10/20, MRR and MR per dataset, beside λ-candidate runs.

``eval.tables`` and ``eval.report`` add this table whenever a run ranked the whole KB
(``--candidates all`` or λ > 100, ``eval.full_kb``). Rows: each such run
(``<scorer> <TASK> full KB``), each λ-candidate run of the same scorer (``<scorer> <TASK> λ=10``)
and the published rows of MIMIC's "Main Result" table (pengfei-luo/MIMIC readme: MIMIC and its
CLIP baseline). Those are anchors, not a like-for-like comparison: MIMIC's cleaned WikiMEL KB has
109,976 entities (ours 18,880) and its splits are its own. Columns: per dataset (WikiMEL,
RichpediaMEL, WikiDiverse, then others), H@k and MRR in %, MR in ranks (a λ run's MR counts its λ
candidates). A λ run records acc@1/5/10 only; its H@3 and H@20 are read from its ``items.jsonl``
when that file is there, else shown as "–", as is whatever a published row lacks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.config import FULL_KB_ABOVE
from eval.metrics import FULL_KB_KS, mean_std, metrics_from_ranks
from kb.runcore.files import read_jsonl

METRICS = (*(f"acc@{k}" for k in FULL_KB_KS), "mrr", "mr")
HEADERS = (*(f"H@{k}" for k in FULL_KB_KS), "MRR", "MR")
DATASETS = {"wikimel": "WikiMEL", "richpedia-mel": "RichpediaMEL", "wikidiverse": "WikiDiverse"}
MARKDOWN_TITLE = "Full-KB ranking (MIMIC's layout): H@k and MRR in %, MR in ranks"
CSV = "table_full_kb.csv"
MISSING = "–"

PUBLISHED: dict[str, dict[str, tuple[float, float, float, float, float]]] = {
    # (H@1, H@3, H@5, MRR, MR) from pengfei-luo/MIMIC readme.md, "Main Result" (KDD 2023)
    "MIMIC (published)": {
        "wikimel": (87.98, 95.07, 96.37, 91.82, 11.02),
        "richpedia-mel": (81.02, 91.77, 94.38, 86.95, 55.11),
        "wikidiverse": (63.51, 81.04, 86.43, 73.44, 227.08),
    },
    "CLIP (MIMIC's baseline, published)": {
        "wikimel": (83.23, 92.10, 94.51, 88.23, 17.60),
        "richpedia-mel": (67.78, 85.22, 90.04, 77.57, 107.16),
        "wikidiverse": (61.21, 79.63, 85.18, 71.69, 313.35),
    },
}

Row = dict[str, dict[str, float | None]]  # dataset -> metric -> value (H@k, MRR in %; MR in ranks)


def is_full_kb(run: dict[str, Any]) -> bool:
    candidates = run.get("candidates")
    return (
        bool(run.get("full_kb"))
        or candidates == "all"
        or (isinstance(candidates, int) and candidates > FULL_KB_ABOVE)
    )


def row_name(run: dict[str, Any]) -> str:
    scorer = (
        run["scorer"]
        if run.get("pipeline", "prerank") == "prerank"
        else f"{run['pipeline']} ({run['scorer']})"
    )
    setting = "full KB" if is_full_kb(run) else f"λ={run.get('candidates')}"
    return f"{scorer} {run['task'].upper()} {setting}"


def collect(results: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, Row]]:
    """Datasets (MIMIC's three, then the runs' others) and rows; no rows when no run ranked the full KB."""
    full = [r for r in results if is_full_kb(r)]
    if not full:
        return [], {}
    scorers = {r["scorer"] for r in full}
    runs = full + [r for r in results if not is_full_kb(r) and r["scorer"] in scorers]
    rows: dict[str, Row] = {}
    for run in runs:
        rows.setdefault(row_name(run), {})[run["dataset"]] = _values(run)
    for name, by_dataset in PUBLISHED.items():
        rows[name] = {
            dataset: dict(zip(("acc@1", "acc@3", "acc@5", "mrr", "mr"), values, strict=True))
            for dataset, values in by_dataset.items()
        }
    seen = {r["dataset"] for r in runs}
    datasets = [*DATASETS, *sorted(seen - set(DATASETS))]  # MIMIC's three always, as anchors
    return datasets, rows


def _values(run: dict[str, Any]) -> dict[str, float | None]:
    metrics = dict(run.get("metrics") or {})
    if any(m not in metrics for m in METRICS):
        metrics = {**_from_items(run), **metrics}
    values: dict[str, float | None] = {}
    for metric in METRICS:
        mean = (metrics.get(metric) or {}).get("mean")
        values[metric] = None if mean is None else (mean if metric == "mr" else mean * 100)
    return values


def _from_items(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """acc@k for ``FULL_KB_KS`` from a run's clean item lines (mean over seeds), if the file is there."""
    path = Path(run.get("items") or "")
    if not path.is_file():
        return {}
    ranks: dict[int, list[int]] = {}
    for record in read_jsonl(path):
        if record.get("condition", "clean") == "clean" and not record.get("error") and "rank" in record:
            ranks.setdefault(record["seed"], []).append(record["rank"])
    per_seed = [metrics_from_ranks(r, FULL_KB_KS).to_json() for r in ranks.values() if r]
    return mean_std(per_seed) if per_seed else {}


def cell(value: float | None, metric: str) -> str:
    if value is None or value != value:
        return MISSING
    return f"{value:.1f}" if metric == "mr" else f"{value:.2f}"


def headers(datasets: Sequence[str]) -> list[str]:
    return [f"{DATASETS.get(d, d)} {h}" for d in datasets for h in HEADERS]


def table_rows(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Column names and text cells (for ``eval.report``); no rows without a full-KB run."""
    datasets, rows = collect(results)
    names = ["Model", *headers(datasets)]
    body = [
        [name, *(cell((row.get(d) or {}).get(m), m) for d in datasets for m in METRICS)]
        for name, row in rows.items()
    ]
    return names, body


def counts_line(results: Sequence[dict[str, Any]]) -> str:
    parts = []
    for run in results:
        if is_full_kb(run):
            kb = run.get("full_kb") or {}
            keep, mode = kb.get("keep_top", "?"), kb.get("mode", "?")
            if mode == "retrieve+rerank":  # the cross-encoder reranks exactly the kept top k
                mode = f"{mode} of the top {keep}"
            parts.append(
                f"{row_name(run)}: {run['dataset']}/{run['split']} n={run['n']}, "
                f"{kb.get('entities', '?')} entities, top {keep} kept, {mode}, {kb.get('index', '?')} index"
            )
    return "; ".join(parts)


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """The table as Markdown, or "" when no run ranked the full KB."""
    names, body = table_rows(results)
    if not body:
        return ""
    lines = [f"## {MARKDOWN_TITLE}", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", counts_line(results) + "; published rows: pengfei-luo/MIMIC readme (their KB and splits)"]
    return "\n".join(lines)


def csv_text(results: Sequence[dict[str, Any]]) -> str:
    datasets, rows = collect(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Model", *headers(datasets)])
    for name, row in rows.items():
        values = [(row.get(d) or {}).get(m) for d in datasets for m in METRICS]
        writer.writerow([name, *("" if v is None else round(v, 4) for v in values)])
    return buffer.getvalue()
