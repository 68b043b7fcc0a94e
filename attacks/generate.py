"""``python -m attacks.generate``: white-box adversarial images of a dataset's mention images.

    python -m attacks.generate --dataset NAME [--data-dir DIR] --scorer NAME --attack PRESET|all
        [--task i2t|it2t] [--split test|all|NAME] [--limit N] [--candidates 10|all] [--device cpu|cuda]
        [--batch-size B] [--max-batch-pixels P] [--seed S] [--threads T] [--presets-file presets.toml]
        [--out DIR]

For every mention whose image is on disk (``--limit``: the first N of those), candidates are
built exactly as ``eval.run`` builds them (same builder, same seed, same context text), and the
image is attacked so the scorer stops ranking the gold first: cross-entropy between candidate
logits and the gold's index (PGD/APGD) or the CW margin, in [0, 1] pixel space. Images are
batched only with images of identical (H, W) (resizing to a common canvas would change what
the scorer's own preprocessing sees); a lone size is a batch of one. A batch also holds at most
``--max-batch-pixels`` pixels (B * H * W), so memory stays bounded on multi-megapixel photos.
Random starts (PGD, APGD) are drawn per batch after seeding torch with ``--seed``, so the exact
perturbation of an image depends on the batch it was in: keep ``--batch-size`` and
``--max-batch-pixels`` fixed to reproduce a folder bit for bit.

Writes ``<out>/<PRESET folder>/<dataset>/`` (see ``attacks.output``): PNG (rounded), ``.pt``
(float), ``manifest.jsonl`` and ``summary.json``. Rerunning the same command resumes: ids
already in the manifest are skipped. A folder holding another preset, scorer, task, seed or
candidate count is refused. Unreadable images and mentions without a gold candidate become
manifest error lines. Checks (``attacks.checks``) run after every batch; failures go to the
manifest and to stderr.

Manifest ``success``: the scorer ranked the gold first on the clean image and not on the
adversarial one (``success_png``: on the saved PNG). Images it already got wrong are not
attacked, come back unchanged and have ``already_misclassified: true, success: false``.

``--threads N`` sets torch's CPU threads (0, the default, keeps torch's own choice); on a CPU
shared with other busy processes, 1 avoids intra-op threads spinning against them (one
EfficientNet-Lite0 forward was seen taking 2.4 s instead of 0.04 s on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from attacks.checks import batch_checks, failed, perturbation_norms, success_summary
from attacks.engine import attack_batch
from attacks.output import claim_attack_folder, file_stem, write_png, write_tensor
from attacks.presets import Preset, resolve
from attacks.sharded import RayAttacks
from kb.candidates import CandidateSet
from kb.cli_args import (
    add_candidate_arguments,
    add_dataset_arguments,
    add_presets_file_argument,
    add_quiet_argument,
)
from kb.dataset import Dataset, load_dataset
from kb.errors import DatasetError, ImageError
from kb.images import load_rgb, to_tensor
from kb.records import Mention
from kb.runcore.files import write_json
from kb.runcore.item_log import ItemLog
from kb.runcore.items import IMAGE_TASKS, candidate_builder, prepare
from kb.runcore.selection import DEFAULT_SPLIT, select_mentions
from tools.executor import ExecutorConfig, add_executor_arguments, executor_from_args
from tools.scorers.base import template_for

# B * H * W per attacked batch. APGD-S on 8 WikiMEL 8-megapixel images (64 M pixels) peaked at
# about 20 GB (~300 bytes a pixel with the autograd graph of the resize); 16 M keeps a batch
# near 5 GB. An image larger than the budget is still attacked, alone.
DEFAULT_MAX_BATCH_PIXELS = 16_000_000


@dataclass(frozen=True)
class GenerateConfig:
    dataset: str
    scorer: str = "tagger"
    attack: str = "all"
    task: str = "i2t"
    split: str = DEFAULT_SPLIT
    limit: int | None = None
    candidates: int | None = 10
    device: str = "cpu"
    batch_size: int = 8
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS
    seed: int = 0
    data_dir: str | None = None
    preset_file: str | None = None


@dataclass
class AttackItem:
    """One mention ready to attack: its candidate set, candidate texts and context."""

    mention: Mention
    candidates: CandidateSet
    candidate_texts: list[str]
    context: str | None
    error: str | None = None
    detail: str | None = None


def attackable(dataset: Dataset, split: str, limit: int | None) -> tuple[list[Mention], int]:
    """Mentions of ``split`` whose image file exists (first ``limit``), and how many had none."""
    pictured = select_mentions(dataset, split, pictured_only=True)
    return (pictured[:limit] if limit else pictured), len(dataset.split(split)) - len(pictured)


def prepare_items(dataset: Dataset, mentions: list[Mention], config: GenerateConfig) -> list[AttackItem]:
    """Candidate sets and texts exactly as ``eval.run`` builds them for the same seed and task."""
    builder = candidate_builder(dataset)
    sets = builder.build_all(mentions, config.candidates, config.seed)
    template = template_for(config.scorer)
    digests: dict[Path, str] = {}
    items = []
    for mention, candidates in zip(mentions, sets, strict=True):
        prepared = prepare(mention, candidates, dataset, config.task, template, digests)
        item = AttackItem(mention, candidates, prepared.candidate_texts, prepared.context, prepared.skip)
        if item.error is None and candidates.gold_index is None:
            item.error = "no_gold_in_candidates"
            item.detail = "NIL or gold outside the candidate set: no label to attack"
        items.append(item)
    return items


class ImageCache:
    """Decoded images as uint8 (shared by every preset of a run), keyed by path and box."""

    def __init__(self) -> None:
        self._images: dict[tuple[str, Any], torch.Tensor | ImageError] = {}

    def get(self, mention: Mention) -> torch.Tensor:
        key = (str(mention.image_path), mention.bbox)
        if key not in self._images:
            try:
                self._images[key] = (
                    (to_tensor(load_rgb(mention.image_path, mention.bbox)) * 255).round().byte()
                )
            except ImageError as exc:
                self._images[key] = exc
        value = self._images[key]
        if isinstance(value, ImageError):
            raise value
        return value.float() / 255


def batches_by_size(
    items: list[tuple[AttackItem, torch.Tensor]],
    batch_size: int,
    max_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
) -> Iterator[list[tuple[AttackItem, torch.Tensor]]]:
    """Groups of identical (H, W), in chunks of at most ``batch_size`` images and ``max_pixels``
    pixels (B * H * W, the memory cap); a lone size, or an image over the budget, is a batch of one."""
    groups: dict[tuple[int, int], list[tuple[AttackItem, torch.Tensor]]] = {}
    for item, image in items:
        groups.setdefault(tuple(image.shape[-2:]), []).append((item, image))
    for (height, width), group in groups.items():
        size = max(1, min(batch_size, max_pixels // (height * width)))
        for start in range(0, len(group), size):
            yield group[start : start + size]


def folder_identity(preset: Preset, config: GenerateConfig, dataset: str) -> dict[str, Any]:
    """What ``attack.json`` pins: a folder holds one attack of one scorer on one dataset."""
    return {
        "preset": preset.params(),
        "scorer": config.scorer,
        "task": config.task,
        "dataset": dataset,
        "seed": config.seed,
        "candidates": config.candidates if config.candidates is not None else "all",
    }


def base_record(item: AttackItem, preset: Preset, config: GenerateConfig) -> dict[str, Any]:
    mention, candidates = item.mention, item.candidates
    return {
        "id": mention.id,
        "seed": config.seed,
        "preset": preset.name,
        "params": preset.params(),
        "scorer": config.scorer,
        "task": config.task,
        "image": str(mention.image_path) if mention.image_path else None,
        "gold": mention.gold,
        "candidates": list(candidates.qids),
        "gold_index": candidates.gold_index,
    }


def error_record(item: AttackItem, preset: Preset, config: GenerateConfig) -> dict[str, Any]:
    return {**base_record(item, preset, config), "error": item.error, "detail": item.detail}


def run(
    config: GenerateConfig,
    out: Path,
    progress: bool = True,
    executor: ExecutorConfig | None = None,
    threads: int = 1,
) -> dict[str, dict[str, Any]]:
    """Attack every preset of ``config.attack``; returns {preset name: summary}.

    With a Ray ``executor`` the batches of all presets go to one actor pool (``attacks.sharded``,
    ``threads`` torch threads per actor) after every preset's batches are made.
    """
    sharded = RayAttacks(config, executor, threads) if executor is not None and executor.is_ray else None
    presets = resolve(config.attack, config.preset_file)
    dataset = load_dataset(config.dataset, config.data_dir)
    mentions, without_image = attackable(dataset, config.split, config.limit)
    folders = {}
    for preset in presets:  # refuse a mismatching folder before any work
        folder = out / preset.folder / dataset.name
        claim_attack_folder(folder, folder_identity(preset, config, dataset.name))
        folders[preset.name] = folder
    items = prepare_items(dataset, mentions, config)
    images = ImageCache()
    scorer = None
    summaries = {}
    presets_by_name = {p.name: p for p in presets}
    logs = {p.name: ItemLog(folders[p.name] / "manifest.jsonl") for p in presets}
    todo_count = sum(
        1 for p in presets for i in items if (config.seed, i.mention.id) not in logs[p.name].done
    )
    bar = tqdm(total=todo_count, desc="attack", unit="img", disable=not progress, file=sys.stderr)
    try:
        for preset in presets:
            log, folder = logs[preset.name], folders[preset.name]
            bar.set_description(f"attack {preset.name}")
            ready = []
            for item in items:
                if (config.seed, item.mention.id) in log.done:
                    continue
                if item.error is None:
                    try:
                        ready.append((item, images.get(item.mention)))
                        continue
                    except ImageError as exc:
                        item.error, item.detail = f"image_{exc.reason}", str(exc)
                log.append(error_record(item, preset, config))
                bar.update(1)
            if ready and scorer is None and sharded is None:
                scorer = load_attack_scorer(config)
            for batch in batches_by_size(ready, config.batch_size, config.max_batch_pixels):
                if sharded is not None:
                    sharded.add(preset, folder, batch)
                    continue
                for record in attack_or_record(scorer, preset, batch, config, folder):
                    append_record(log, preset, record)
                bar.update(len(batch))
        if sharded is not None:
            for name, records in sharded.run(progress):
                for record in records:
                    append_record(logs[name], presets_by_name[name], record)
                bar.update(len(records))
        for preset in presets:
            log, folder = logs[preset.name], folders[preset.name]
            ids = {i.mention.id for i in items}
            records = [r for (seed, key), r in log.done.items() if seed == config.seed and key in ids]
            summary = {
                "preset": preset.name,
                "folder": str(folder),
                "scorer": config.scorer,
                "task": config.task,
                "dataset": dataset.name,
                "split": config.split,
                "mentions_without_image": without_image,
                **success_summary(records),
                "images_per_second": images_per_second(records),
            }
            write_json(folder / "summary.json", summary)
            summaries[preset.name] = summary
    finally:
        bar.close()
        for log in logs.values():
            log.close()
    return summaries


def append_record(log: ItemLog, preset: Preset, record: dict[str, Any]) -> None:
    """Write one manifest line; a failed check is also shouted on stderr."""
    log.append(record)
    if record["checks_failed"]:
        print(
            f"CHECK FAILED [{preset.name}] {record['id']}: {', '.join(record['checks_failed'])}",
            file=sys.stderr,
            flush=True,
        )


def images_per_second(records: list[dict[str, Any]]) -> float | None:
    seconds = sum(r.get("seconds", 0.0) for r in records if not r.get("error"))
    count = sum(1 for r in records if not r.get("error"))
    return round(count / seconds, 4) if seconds > 0 else None


def load_attack_scorer(config: GenerateConfig) -> torch.nn.Module:
    from tools.scorers import load_scorer

    return load_scorer(config.scorer, task=config.task).to(config.device).eval()


def attack_or_record(
    scorer: torch.nn.Module,
    preset: Preset,
    batch: list[tuple[AttackItem, torch.Tensor]],
    config: GenerateConfig,
    folder: Path,
) -> list[dict[str, Any]]:
    """``attack_and_save``, but one item the attack cannot handle never ends the run: a failing
    batch is retried item by item and an item that still fails becomes a manifest error line."""
    try:
        return attack_and_save(scorer, preset, batch, config, folder)
    except Exception as exc:  # noqa: BLE001 - recorded per item, the run goes on
        if len(batch) > 1:
            return [r for one in batch for r in attack_or_record(scorer, preset, [one], config, folder)]
        item = batch[0][0]
        item.error, item.detail = "attack_error", f"{type(exc).__name__}: {str(exc)[:300]}"
        return [{**error_record(item, preset, config), "checks_failed": []}]


def attack_and_save(
    scorer: torch.nn.Module,
    preset: Preset,
    batch: list[tuple[AttackItem, torch.Tensor]],
    config: GenerateConfig,
    folder: Path,
) -> list[dict[str, Any]]:
    """Attack one same-size batch as one tensor, write its files, return its manifest lines."""
    clean = torch.stack([image for _, image in batch]).to(config.device)
    labels = torch.tensor([item.candidates.gold_index for item, _ in batch])
    texts = [item.context or "" for item, _ in batch] if config.task == "it2t" else None
    result = attack_batch(
        scorer, preset, clean, labels, [item.candidate_texts for item, _ in batch], texts, config.seed
    )
    norms = perturbation_norms(clean, result.adversarial)
    flags = batch_checks(preset, clean, result, norms)
    records = []
    for b, (item, _) in enumerate(batch):
        stem = file_stem(item.mention.id)
        adversarial = result.adversarial[b].cpu()
        write_png(adversarial, folder / f"{stem}.png")
        write_tensor(adversarial, folder / f"{stem}.pt")
        qids = item.candidates.qids
        attacked = not bool(result.already_misclassified[b])
        records.append(
            {
                **base_record(item, preset, config),
                "shape": list(clean.shape[-2:]),
                "batch": len(batch),
                "png": f"{stem}.png",
                "pt": f"{stem}.pt",
                "linf": round(float(norms["linf"][b]), 6),
                "l2": round(float(norms["l2"][b]), 6),
                "linf_png": round(float(norms["linf_png"][b]), 6),
                "l2_png": round(float(norms["l2_png"][b]), 6),
                "clean_prediction": qids[int(result.clean_pred[b])],
                "adv_prediction": qids[int(result.adv_pred[b])],
                "png_prediction": qids[int(result.png_pred[b])],
                "clean_loss": round(float(result.clean_loss[b]), 5),
                "adv_loss": round(float(result.adv_loss[b]), 5),
                "already_misclassified": bool(result.already_misclassified[b]),
                "success": attacked and int(result.adv_pred[b]) != item.candidates.gold_index,
                "success_png": attacked and int(result.png_pred[b]) != item.candidates.gold_index,
                "seconds": round(result.seconds / len(batch), 4),
                "checks": flags[b],
                "checks_failed": failed(flags[b]),
                "error": None,
            }
        )
    return records


def summary_line(summary: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 100:.1f}%"

    return (
        f"{summary['preset']:>7} {summary['dataset']} {summary['task']} {summary['scorer']}: "
        f"success {pct(summary['success_rate'])} (png {pct(summary['success_rate_png'])}) "
        f"on {summary['n_clean_correct']} clean-correct; already wrong {summary['n_already_misclassified']}, "
        f"errors {summary['n_errors']}; mean linf {summary['mean_linf']} l2 {summary['mean_l2']}; "
        f"{summary['images_per_second']} img/s; check failures {summary['n_check_failures']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attacks.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(
        parser, with_images=False, limit_help="first N mentions of the split that have an image"
    )
    parser.add_argument("--scorer", default="tagger")
    parser.add_argument(
        "--attack", default="all", help="pgd-n, pgd-s, apgd-n, apgd-s, cw-n, cw-s, a comma list, all"
    )
    add_presets_file_argument(parser)
    parser.add_argument("--task", choices=IMAGE_TASKS, default="i2t")
    add_candidate_arguments(parser, seeds=False)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-batch-pixels",
        type=int,
        default=DEFAULT_MAX_BATCH_PIXELS,
        help="memory cap: at most this many pixels (B*H*W) in one attacked batch",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    parser.add_argument("--out", type=Path, default=Path("ADV-MEL"))
    add_quiet_argument(parser)
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = GenerateConfig(
        dataset=args.dataset,
        scorer=args.scorer,
        attack=args.attack,
        task=args.task,
        split=args.split,
        limit=args.limit,
        candidates=args.candidates,
        device=args.device,
        batch_size=args.batch_size,
        max_batch_pixels=args.max_batch_pixels,
        seed=args.seed,
        data_dir=args.data_dir,
        preset_file=args.presets_file,
    )
    started = time.perf_counter()
    try:
        summaries = run(
            config,
            args.out,
            progress=not args.quiet,
            executor=executor_from_args(args),
            threads=args.threads or 1,
        )
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for summary in summaries.values():
        print(summary_line(summary))
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
