"""``python -m attacks.bench``: images/s of the batched attack path vs a per-image torchattacks loop.

    python -m attacks.bench [--dataset demo] [--split test] [--limit N] [--candidates 10|all]
        [--scorer tagger] [--attack all] [--presets-file FILE] [--steps N] [--batch-size 8]
        [--threads 0] [--seed 0]

Both paths run in the same process on the same decoded images, candidate texts and labels:

* batched: ``attacks.engine.attack_batch`` on groups of identical (H, W) (what
  ``attacks.generate`` runs, including its clean-gradient probe and the rounded re-scoring);
* per-image: a plain loop calling the torchattacks object on one image at a time
  (``torchattacks.PGD`` / ``torchattacks.APGD``; for CW the engine's ``FixedCW``, because
  stock CW's batch-level early stop would make the two paths do different work).

Each preset runs its own Table 1 step count unless ``--steps`` replaces it in both paths alike
(a quick look; with few steps the batched path's fixed cost, one clean forward-backward and two
re-scoring forwards per batch, weighs more than it does in a real run). Labels are the scorer's clean top-1 candidate, so
no image is skipped as already misclassified and both paths attack every image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from attacks.engine import attack_batch, build_attack
from attacks.generate import GenerateConfig, ImageCache, attackable, batches_by_size, prepare_items
from attacks.presets import resolve
from attacks.target import CandidateTarget
from kb.cli_args import add_candidate_arguments, add_dataset_arguments, add_presets_file_argument
from kb.dataset import load_dataset
from kb.errors import ImageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attacks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(
        parser, dataset_default="demo", with_images=False, limit_help="first N mentions that have an image"
    )
    add_candidate_arguments(parser, seeds=False)
    parser.add_argument("--scorer", default="tagger")
    parser.add_argument("--attack", default="all", help="pgd-n, ..., cw-s, a comma list, or all")
    add_presets_file_argument(parser)
    parser.add_argument(
        "--steps", type=int, default=None, help="steps for every preset, both paths (default: Table 1's)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from tools.scorers import load_scorer

    config = GenerateConfig(
        dataset=args.dataset,
        scorer=args.scorer,
        split=args.split,
        limit=args.limit,
        candidates=args.candidates,
        seed=args.seed,
        data_dir=args.data_dir,
        preset_file=args.presets_file,
    )
    dataset = load_dataset(args.dataset, args.data_dir)
    mentions, _ = attackable(dataset, args.split, args.limit)
    cache = ImageCache()
    data = []
    for item in prepare_items(dataset, mentions, config):
        if item.error is None:
            try:
                data.append((item, cache.get(item.mention)))
            except ImageError:
                pass
    scorer = load_scorer(args.scorer, task="i2t").eval()
    labels = {}
    for item, image in data:  # the clean top-1 as label: every image is attacked by both paths
        with torch.no_grad():
            labels[item.mention.id] = int(scorer(image[None], None, [item.candidate_texts]).argmax())
    batches = list(batches_by_size(data, args.batch_size))
    print(
        f"# {len(data)} images of {args.dataset} in {len(batches)} same-size batches "
        f"(sizes {sorted(len(b) for b in batches)}); "
        f"{args.steps or 'Table 1'} steps per preset in BOTH paths; {torch.get_num_threads()} torch thread(s)",
        flush=True,
    )
    rows = []
    for preset in resolve(args.attack, args.presets_file):
        if args.steps:
            preset = preset.with_steps(args.steps)
        started = time.perf_counter()
        for batch in batches:
            attack_batch(
                scorer,
                preset,
                torch.stack([image for _, image in batch]),
                torch.tensor([labels[item.mention.id] for item, _ in batch]),
                [item.candidate_texts for item, _ in batch],
                None,
                args.seed,
            )
        batched = time.perf_counter() - started
        started = time.perf_counter()
        for item, image in data:
            target = CandidateTarget(scorer, None, [item.candidate_texts]).eval()
            attack = build_attack(preset, target, args.seed)
            torch.manual_seed(args.seed)
            attack(image[None], torch.tensor([labels[item.mention.id]]))
        single = time.perf_counter() - started
        row = {
            "preset": preset.name,
            "steps": preset.steps,
            "images": len(data),
            "batched_img_s": round(len(data) / batched, 3),
            "per_image_img_s": round(len(data) / single, 3),
            "ratio": round(single / batched, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    total_b = sum(r["images"] / r["batched_img_s"] for r in rows)
    total_s = sum(r["images"] / r["per_image_img_s"] for r in rows)
    print(
        f"# overall: batched {sum(r['images'] for r in rows) / total_b:.3f} img/s, per-image "
        f"{sum(r['images'] for r in rows) / total_s:.3f} img/s, ratio {total_s / total_b:.2f}x "
        "(target >= 5x)",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
