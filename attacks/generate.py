"""``python -m attacks.generate``: white-box adversarial images of a dataset's mention images.

    python -m attacks.generate --dataset NAME [--data-dir DIR] --scorer NAME --attack PRESET|all
        [--task i2t|it2t] [--split test|all|NAME] [--limit N] [--candidates 10|all] [--device cpu|cuda]
        [--batch-size B] [--max-batch-pixels P] [--dtype float32|bfloat16|float16]
        [--space pixels|model-input] [--seed S] [--threads T] [--presets-file presets.toml] [--out DIR]

For every mention whose image is on disk (``--limit``: the first N of those), candidates are
built exactly as ``eval.run`` builds them (same builder, same seed, same context text), and the
image is attacked so the scorer stops ranking the gold first: cross-entropy between candidate
logits and the gold's index (PGD/APGD) or the CW margin.

Batches: images of any sizes share a batch (``attacks.items.mixed_batches``), at most
``--batch-size`` images and ``--max-batch-pixels`` pixels (sum of H * W), so memory stays
bounded on multi-megapixel photos. Each image keeps its own exact preprocessing and its own
random draws from (``--seed``, mention id), so an image's ``.pt`` is the same bytes whatever its
batch (on CPU; ``attacks.target``): a resumed or sharded run that regroups images reproduces it.

``--space pixels`` (default) attacks the full-resolution photo, eps in its pixels, as released;
``--space model-input`` resizes and crops it to the scorer's input first and attacks that
(Cui et al.'s attack code; every image one size). ``--dtype`` runs PGD/APGD's scorer passes
under autocast (CW always float32; checks and rounding in float32).

Writes ``<out>/<PRESET folder>/<dataset>/`` (see ``attacks.output``): PNG (rounded), ``.pt``
(float), ``manifest.jsonl`` (``attacks.records``) and ``summary.json``. Rerunning the same
command resumes: ids already in the manifest are skipped. A folder holding another preset,
scorer, task, seed, candidate count, space or dtype is refused. Unreadable images and mentions
without a gold candidate become manifest error lines. Checks (``attacks.checks``) run after
every batch; failures go to the manifest and to stderr.

``--threads N`` sets torch's CPU threads (0, the default, keeps torch's own choice); on a CPU
shared with other busy processes, 1 avoids intra-op threads spinning against them (one
EfficientNet-Lite0 forward was seen taking 2.4 s instead of 0.04 s on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from attacks.checks import success_summary
from attacks.engine import DTYPES, SPACES
from attacks.items import (  # noqa: F401 - the generator's public names (eval.replay, sharded, tests)
    DEFAULT_MAX_BATCH_PIXELS,
    AttackItem,
    GenerateConfig,
    ImageCache,
    attackable,
    folder_identity,
    mixed_batches,
    prepare_items,
)
from attacks.output import claim_attack_folder
from attacks.presets import resolve
from attacks.records import (  # noqa: F401
    append_record,
    attack_and_save,
    attack_or_record,
    base_record,
    error_record,
    images_per_second,
    summary_line,
)
from attacks.sharded import RayAttacks
from kb.cli_args import (
    add_candidate_arguments,
    add_dataset_arguments,
    add_presets_file_argument,
    add_quiet_argument,
)
from kb.dataset import load_dataset
from kb.errors import DatasetError, ImageError
from kb.runcore.files import write_json
from kb.runcore.item_log import ItemLog
from kb.runcore.items import IMAGE_TASKS
from tools.executor import ExecutorConfig, add_executor_arguments, executor_from_args


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
            budget = config.max_batch_pixels if config.space == "pixels" else None
            for batch in mixed_batches(ready, config.batch_size, budget):
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


def load_attack_scorer(config: GenerateConfig) -> torch.nn.Module:
    from tools.scorers import load_scorer

    return load_scorer(config.scorer, task=config.task).to(config.device).eval()


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
        help="memory cap: at most this many pixels (sum of H*W) in one attacked batch",
    )
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="precision of PGD/APGD's scorer passes (autocast); CW always float32",
    )
    parser.add_argument(
        "--space",
        choices=list(SPACES),
        default="pixels",
        help="pixels: attack the full-resolution photo; model-input: the scorer's resized, cropped input",
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
        dtype=args.dtype,
        space=args.space,
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
