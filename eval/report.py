"""``python -m eval.report``: one self-contained HTML page over evaluation runs.

    python -m eval.report RUN_DIR [RUN_DIR ...] [--out report.html] [--flips 6]

The page holds, for every run folder given (``eval.run --out``; scorer or agent runs, I2T and
IT2T): the seed paper's Table 2 layout (``eval.tables``: RAW, PGD/APGD/CW N and S per task,
one row per scorer and ``agent (<scorer>)`` for the agent), where a run ranked the whole KB the
full-KB table in MIMIC's layout (``eval.full_kb_table``), the accuracy-per-attack plot, the
drift of each attack (accuracy drop, flips, attack success), for agent runs the node where
flipped decisions first diverged (``divergence`` of ``results.json``), and the worst flips:
clean and adversarial image side by side with their perturbation |adv − clean| (block means,
normalised to the brightest block, the factor printed) and, for the agent, links to both
decisions' traces, exported as HTML (``agent.trace export``) into ``<report name>_traces/``
beside the report.

Every image and plot is an inline base64 PNG, the page has no script and no external file
except the trace pages it links. The markup is the Jinja2 template
``eval/templates/report.html.j2``, rendered with autoescaping on (labels, captions and
retrieved text are data); this module only gathers what the page shows. Worst first: decisions that were right on the clean image and
wrong on the adversarial one, then by how far the gold fell in the ranking.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from tqdm import tqdm

from eval import full_kb_table, tables
from eval.agent_pipeline import CHECKPOINTS
from kb.errors import ImageError
from kb.images import load_pixels
from kb.runcore.files import read_jsonl

THUMBNAIL = 320


@dataclass
class Run:
    """One ``eval.run`` output folder: its results, per-item lines and configuration."""

    path: Path
    results: dict[str, Any]
    records: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.path.name} ({tables.row_name(self.results)}, {self.results['task']})"

    @property
    def is_agent(self) -> bool:
        return self.results.get("pipeline") == "agent"


@dataclass(frozen=True)
class Flip:
    """A mention whose top-1 changed under an attack: its clean and attacked item lines."""

    run: Run
    preset: str
    clean: dict[str, Any]
    attacked: dict[str, Any]

    @property
    def severity(self) -> tuple[int, int]:
        broke = bool(self.clean.get("correct")) and not self.attacked.get("correct")
        return (int(broke), int(self.attacked.get("rank", 0)) - int(self.clean.get("rank", 0)))


def load_run(path: Path) -> Run:
    results_path = path / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{path} is not an eval.run folder (no results.json)")
    results = tables.load_results(path)
    records = list(read_jsonl(path / "items.jsonl"))  # a cut last line (killed run) is left out
    config_path = path / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    return Run(path, results, records, config)


def flips(run: Run) -> list[Flip]:
    """Every flipped decision of every attack (first seed), worst first."""
    seed = run.results["seeds"][0]
    by_key = {(r.get("condition", "clean"), r["id"]): r for r in run.records if r.get("seed") == seed}
    found = []
    for preset in run.results.get("attacks") or {}:
        for (condition, mention), attacked in by_key.items():
            clean = by_key.get(("clean", mention))
            if condition != preset or clean is None or clean.get("error") or attacked.get("error"):
                continue
            if clean["prediction"] != attacked["prediction"]:
                found.append(Flip(run, preset, clean, attacked))
    return sorted(found, key=lambda f: f.severity, reverse=True)


# ------------------------------------------------------------------------------ images


def png_data_uri(image: Any) -> str:
    """A PIL image as an inline ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _png_uri(buffer.getvalue())


def to_pil(pixels: torch.Tensor, size: int = THUMBNAIL) -> Any:
    """(3, H, W) in [0, 1] to a PIL thumbnail no larger than ``size`` on its long side."""
    from PIL import Image

    array = pixels.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array, "RGB")
    image.thumbnail((size, size))
    return image


def perturbation(clean: torch.Tensor, adversarial: torch.Tensor, size: int = THUMBNAIL) -> tuple[Any, str]:
    """|adv − clean| as a thumbnail: block means (a max would show ε everywhere under L∞),
    scaled so the brightest block is white; and a caption with L∞ and the scale factor."""
    diff = (adversarial - clean).abs()
    linf = float(diff.max()) * 255
    height, width = diff.shape[1:]
    scale = size / max(height, width)
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    blocks = torch.nn.functional.adaptive_avg_pool2d(diff.unsqueeze(0), target)[0]
    peak = float(blocks.max())
    factor = 1.0 / peak if peak > 0 else 1.0
    caption = f"|adv − clean|, L∞ {linf:.1f}/255, block means shown ×{factor:.0f}"
    return to_pil(blocks * factor, size), caption


class Images:
    """Clean and adversarial pixels of a flip: from the agent's trace when there is one (it names
    both image files), else from the dataset (clean) and the attack folder (adversarial)."""

    def __init__(self) -> None:
        self._datasets: dict[tuple[str, str | None], Any] = {}

    def clean(self, flip: Flip, traces: Any | None) -> torch.Tensor:
        from agent.resources import load_pixels as trace_pixels

        if traces is not None and flip.clean.get("thread"):
            image = traces.get(flip.clean["thread"]).values.get("image")
            if image:
                return trace_pixels(image)
        mention = self.dataset(flip.run).mention(flip.clean["id"])
        if mention.image_path is None:
            raise FileNotFoundError(f"mention {flip.clean['id']} has no image")
        return load_pixels(mention.image_path, mention.bbox)

    def adversarial(self, flip: Flip) -> torch.Tensor:
        block = flip.run.results["attacks"][flip.preset]
        if not flip.attacked.get("adv_file"):
            raise FileNotFoundError(f"item {flip.attacked['id']} names no adversarial file")
        root = Path(block["adv_dir"])
        path = (root if root.is_absolute() else Path.cwd() / root) / flip.attacked["adv_file"]
        return load_pixels(path)

    def dataset(self, run: Run) -> Any:
        from kb.dataset import load_dataset

        key = (run.results["dataset"], run.config.get("data_dir"))
        if key not in self._datasets:
            self._datasets[key] = load_dataset(*key)
        return self._datasets[key]


# ------------------------------------------------------------------------------ sections
# The page's markup is eval/templates/report.html.j2 (autoescaping on: every value is data).
# The functions below only gather what it shows.

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Table:
    names: list[str]
    rows: list[list[Any]]
    css: str


@dataclass(frozen=True)
class Figure:
    uri: str
    caption: str


@dataclass(frozen=True)
class Link:
    href: str
    label: str


@dataclass
class Card:
    """One flip as the page shows it: the two decisions, the images, the trace links."""

    run: str
    preset: str
    mention: str
    gold: str
    clean: str
    clean_rank: Any
    attacked: str
    attacked_rank: Any
    divergence: str | None = None
    figures: list[Figure] = field(default_factory=list)
    note: str | None = None
    links: list[Link] = field(default_factory=list)
    thread: str | None = None


def table_section(results: Sequence[dict[str, Any]], table: str = "table2") -> list[dict[str, Any]]:
    """One of ``eval.tables``' tables (2, 3 or 4), one per dataset (none where no run fills it);
    cells carry their 95% bootstrap interval where the results hold one."""
    cells, columns = tables.collect(results, table)
    spans = tables.intervals(results, table)
    names = ["Model", *tables.headers(columns)]
    return [
        {
            "dataset": dataset,
            "table": Table(
                names,
                [
                    [name, *_cells(row, columns, spans.get(dataset, {}).get(name, {}))]
                    for name, row in rows.items()
                ],
                table,
            ),
            "counts": tables.counts_line(results, dataset),
        }
        for dataset, rows in cells.items()
    ]


def _cells(
    row: dict[tuple[str, str], float | None], columns: Sequence[str], spans: dict[tuple[str, str], Any]
) -> list[str]:
    return [
        tables.cell_text(row.get((t, c)), tables.MISSING, spans.get((t, c)))
        for t in tables.TASKS
        for c in columns
    ]


def full_kb_section(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The full-KB table (``eval.full_kb_table``: MIMIC's layout beside the λ runs), or None."""
    names, rows = full_kb_table.table_rows(results)
    if not rows:
        return None
    return {
        "title": full_kb_table.MARKDOWN_TITLE,
        "table": Table(names, rows, "full-kb"),
        "counts": full_kb_table.counts_line(results),
    }


def accuracy_plot(results: Sequence[dict[str, Any]]) -> str:
    buffer = io.BytesIO()
    tables.plot(results, buffer)
    return _png_uri(buffer.getvalue())


def drift_section(runs: Sequence[Run]) -> Table | None:
    """Per run and attack: accuracy before/after, drop, flip rate, attack success, rank shift."""
    rows = []
    for run in runs:
        for preset, block in (run.results.get("attacks") or {}).items():
            drift = block.get("drift") or {}
            rows.append(
                [
                    run.name,
                    preset,
                    _pct(run.results["metrics"]["acc@1"]["mean"]),
                    _pct(block["metrics"]["acc@1"]["mean"]),
                    *(_pct(drift.get(key)) for key in ("acc_drop", "flip_rate", "attack_success")),
                    drift.get("gold_rank_shift", "–"),
                    block.get("n", "–"),
                ]
            )
    names = ["run", "attack", "acc@1 clean", "acc@1 attacked", "drop", "flips", "attack success"]
    return Table([*names, "gold rank shift", "n"], rows, "drift") if rows else None


def divergence_section(runs: Sequence[Run]) -> tuple[Table, str] | None:
    """Agent runs: for flipped decisions, the share whose path first diverged at each node
    (a table and a stacked-bar plot), or None without an attacked agent run."""
    from agent.state import NODES

    rows, bars = [], []
    for run in runs:
        if not run.is_agent:
            continue
        for preset, block in (run.results.get("attacks") or {}).items():
            divergence = block.get("divergence")
            if not divergence:
                continue
            shares = divergence["shares"]
            rows.append(
                [run.name, preset, divergence["flipped"]]
                + [f"{divergence['counts'][n]} ({_pct(shares[n])})" for n in NODES]
            )
            bars.append((f"{run.path.name} {preset}", [shares[n] or 0.0 for n in NODES]))
    if not rows:
        return None
    return Table(["run", "attack", "flipped", *NODES], rows, "divergence"), _divergence_plot(bars, NODES)


def _divergence_plot(bars: list[tuple[str, list[float]]], nodes: Sequence[str]) -> str:
    from matplotlib.figure import Figure as PlotFigure

    figure = PlotFigure(figsize=(8, 1.2 + 0.5 * len(bars)), layout="constrained")
    ax = figure.subplots()
    left = [0.0] * len(bars)
    for i, node in enumerate(nodes):
        widths = [shares[i] * 100 for _, shares in bars]
        ax.barh([name for name, _ in bars], widths, left=left, label=node)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("flipped decisions (%) by the node where they first diverged")
    figure.legend(ncols=len(nodes), fontsize="small", loc="outside upper center")
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png")
    return _png_uri(buffer.getvalue())


def flip_card(flip: Flip, images: Images, traces: Any | None, trace_dir: Path, report_dir: Path) -> Card:
    """One flip: the two decisions, the three images, and (agent) the divergence node and trace
    links (both traces exported as HTML into ``trace_dir``)."""
    clean, attacked = flip.clean, flip.attacked
    labels: dict[str, str] = {}
    links: list[Link] = []
    divergence, thread_id = None, None
    if traces is not None and clean.get("thread") and attacked.get("thread"):
        from agent.trace import export_html
        from agent.traces import first_divergence

        a, b = traces.get(clean["thread"]), traces.get(attacked["thread"])
        labels = {c["qid"]: c["label"] for c in a.values.get("candidates", [])}
        for thread in (a, b):
            path = trace_dir / (re.sub(r"[^A-Za-z0-9._-]+", "_", thread.thread) + ".html")
            path.write_text(export_html(thread), encoding="utf-8")
            links.append(Link(path.relative_to(report_dir).as_posix(), f"{thread.condition} trace"))
        divergence, thread_id = first_divergence(a.values, b.values) or "none", a.thread
    else:
        entities = images.dataset(flip.run).entities
        shown = (clean["gold"], clean["prediction"], attacked["prediction"])
        labels = {q: entities[q].label for q in shown if q in entities}

    def who(qid: str | None) -> str:
        return f"{labels.get(qid, qid)} ({qid})" if qid else "none"

    card = Card(
        run=flip.run.path.name,
        preset=flip.preset,
        mention=str(clean["id"]),
        gold=who(clean["gold"]),
        clean=who(clean["prediction"]),
        clean_rank=clean.get("rank"),
        attacked=who(attacked["prediction"]),
        attacked_rank=attacked.get("rank"),
        divergence=divergence,
        links=links,
        thread=thread_id,
    )
    try:
        clean_pixels, adversarial_pixels = images.clean(flip, traces), images.adversarial(flip)
        card.figures = [
            Figure(png_data_uri(to_pil(clean_pixels)), f"clean: {card.clean}"),
            Figure(png_data_uri(to_pil(adversarial_pixels)), f"{flip.preset}: {card.attacked}"),
        ]
        if clean_pixels.shape == adversarial_pixels.shape:
            difference, caption = perturbation(clean_pixels, adversarial_pixels)
            card.figures.append(Figure(png_data_uri(difference), caption))
        else:
            shapes = f"{tuple(clean_pixels.shape)} vs {tuple(adversarial_pixels.shape)}"
            card.note = f"sizes differ ({shapes}): no difference image"
    except (OSError, ValueError, KeyError, ImageError) as exc:  # shown in the card, the page goes on
        card.figures, card.note = [], f"images unavailable: {exc}"
    return card


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value * 100:.1f}%"


# ------------------------------------------------------------------------------ the page


def build(run_dirs: Sequence[Path], out: Path, per_run: int = 6, progress: bool = True) -> Path:
    """Write the report to ``out`` (and the flips' traces beside it); returns ``out``."""
    from agent.traces import TraceStore

    runs = [load_run(path) for path in run_dirs]
    results = [run.results for run in runs]
    chosen = [(run, flips(run)[:per_run]) for run in runs]
    out.parent.mkdir(parents=True, exist_ok=True)
    trace_dir = out.parent / f"{out.stem}_traces"
    images = Images()
    bar = tqdm(
        total=2 + sum(len(f) for _, f in chosen), desc="report", unit="part", delay=2, disable=not progress
    )
    table2 = table_section(results)
    bar.update(1)
    divergence, divergence_plot = divergence_section(runs) or (None, None)
    page: dict[str, Any] = {
        "runs": runs,
        "table2": table2,
        "stage_tables": [
            {"title": tables.TABLES[name], "parts": parts}
            for name in ("table3", "table4")
            if (parts := table_section(results, name))
        ],
        "accuracy_plot": accuracy_plot(results),
        "drift": drift_section(runs),
        "divergence": divergence,
        "divergence_plot": divergence_plot,
        "full_kb": full_kb_section(results),
    }
    bar.update(1)
    cards = []
    for run, picked in chosen:
        db = run.path / CHECKPOINTS
        traces = TraceStore(db) if run.is_agent and db.is_file() else None
        if traces is not None:
            trace_dir.mkdir(exist_ok=True)
        try:
            for flip in picked:
                cards.append(flip_card(flip, images, traces, trace_dir, out.parent))
                bar.update(1)
        finally:
            if traces is not None:
                traces.close()
    bar.close()
    page.update(cards=cards, total_flips=sum(len(flips(run)) for run in runs))
    out.write_text(TEMPLATES.get_template("report.html.j2").render(page), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, help="eval.run output folders")
    parser.add_argument("--out", type=Path, default=Path("report.html"))
    parser.add_argument("--flips", type=int, default=6, help="worst flips shown per run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        out = build(args.runs, args.out, args.flips, progress=not args.quiet)
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
