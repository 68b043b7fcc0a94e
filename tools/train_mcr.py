"""``python -m tools.train_mcr``: train MCR (paper 003) on a dataset's train split.

    python -m tools.train_mcr --dataset wikimel --limit 2000 --out checkpoints/mcr-wikimel.pt

Paper 003's settings are the defaults (Table 2): lr 1e-5, weight decay 0.001, batch 64,
alpha 0.5 (0.4 for COCO-CN). Only the train split is read; ``--folds K`` first reports
K-fold cross-validated top-1 of the text-text module on it (paper 003 uses cross-validation
for stability), then trains the saved model on all of it.

The text-text module is trained with cross-entropy over each mention's candidate set (the
gold's S_text against the hard negatives of ``kb.candidates``); a batch of 64 is 64
(label, description) pairs, i.e. 64 // lambda whole candidate sets. The visual-text module
is trained with InfoNCE (eq. 7) on all train mentions that have an image on disk (whatever
``--limit``); with the
frozen offline tagger backbone that learns tau, with a CLIP-family backbone its weights too.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from kb.candidates import CandidateSet
from kb.cli_args import add_candidate_arguments, add_dataset_arguments
from kb.dataset import Dataset, load_dataset
from kb.errors import DatasetError, ImageError
from kb.images import load_rgb, to_tensor
from kb.records import Mention
from kb.runcore.items import candidate_builder
from tools.scorers.mcr import MCRConfig, MCRScorer, infonce


def labelled(
    mentions: list[Mention], sets: list[CandidateSet], dataset: Dataset
) -> list[tuple[Mention, list[str], int]]:
    """(mention, candidate labels, gold index) for mentions whose gold is in their set."""
    return [
        (m, [dataset.entities[q].label for q in s.qids], s.gold_index)
        for m, s in zip(mentions, sets, strict=True)
        if s.gold_index is not None and m.context_text()
    ]


def train_text(
    model: MCRScorer,
    examples: list,
    optimizer: torch.optim.Optimizer,
    batch_pairs: int,
    epochs: int,
    rng: random.Random,
) -> list[float]:
    width = len(examples[0][1])
    per_step = max(1, batch_pairs // width)
    losses = []
    model.text_text.train()
    for epoch in range(epochs):
        order = examples[:]
        rng.shuffle(order)
        bar = tqdm(range(0, len(order), per_step), desc=f"text-text epoch {epoch + 1}", unit="step")
        for start in bar:
            batch = order[start : start + per_step]
            scores = model.text_similarity(
                [m.context_text() for m, _, _ in batch], [labels for _, labels, _ in batch]
            )
            loss = F.cross_entropy(scores, torch.tensor([g for _, _, g in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.text_text.eval()
    return losses


def train_image(
    model: MCRScorer, examples: list, optimizer: torch.optim.Optimizer, epochs: int
) -> list[float]:
    with_images = []
    for mention, labels, gold in examples:
        if not mention.has_image:
            continue
        try:
            with_images.append(
                (to_tensor(load_rgb(mention.image_path, mention.bbox)).unsqueeze(0), labels, gold)
            )
        except ImageError:
            continue
    losses = []
    for _ in range(epochs):
        for pixels, labels, gold in tqdm(with_images, desc="visual-text InfoNCE", unit="image"):
            loss = infonce(model.image_similarity(pixels, [labels]), torch.tensor([gold]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def accuracy(model: MCRScorer, examples: list, batch: int = 16) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            scores = model.text_similarity(
                [m.context_text() for m, _, _ in chunk], [labels for _, labels, _ in chunk]
            )
            correct += int((scores.argmax(dim=1) == torch.tensor([g for _, _, g in chunk])).sum())
    return correct / max(len(examples), 1)


def fit(
    config: MCRConfig, examples: list, image_examples: list, args: argparse.Namespace
) -> tuple[MCRScorer, dict]:
    torch.manual_seed(args.seed)
    model = MCRScorer(config, task="it2t")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
    text_losses = train_text(
        model, examples, optimizer, args.batch_size, args.epochs, random.Random(args.seed)
    )
    image_losses = train_image(model, image_examples, optimizer, args.epochs)
    return model, {
        "text_loss_first": round(float(np.mean(text_losses[:10])), 4),
        "text_loss_last": round(float(np.mean(text_losses[-10:])), 4),
        "image_steps": len(image_losses),
        "image_loss_last": round(float(np.mean(image_losses[-10:])), 4) if image_losses else None,
        "tau": round(float(model.log_tau.exp()), 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.train_mcr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Training reads the train split: the one command whose --split default is not test.
    add_dataset_arguments(
        parser, split_default="train", with_images=False, limit_help="train on N mentions (seeded sample)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--weight-decay", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=64, help="(label, description) pairs per step")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument(
        "--tau", type=float, default=None, help="fix InfoNCE's temperature (default: learnable)"
    )
    parser.add_argument("--image-model", default="tagger")
    parser.add_argument("--text-model", default="minilm")
    parser.add_argument("--folds", type=int, default=0, help="K-fold cross-validation first (0: off)")
    add_candidate_arguments(parser, seeds=False)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.split != "train":
        print("warning: training on a split other than train", file=sys.stderr)
    started = time.perf_counter()
    try:
        dataset = load_dataset(args.dataset, args.data_dir)
        mentions = dataset.split(args.split)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    random.Random(args.seed).shuffle(mentions)
    pictured = [m for m in mentions if m.has_image]
    mentions = mentions[: args.limit] if args.limit else mentions
    builder = candidate_builder(dataset)
    examples = labelled(mentions, builder.build_all(mentions, args.candidates, args.seed), dataset)
    image_examples = labelled(pictured, builder.build_all(pictured, args.candidates, args.seed), dataset)
    config = MCRConfig(
        image_model=args.image_model, text_model=args.text_model, alpha=args.alpha, tau=args.tau
    )
    folds = []
    for fold in range(args.folds):
        held = examples[fold :: args.folds]
        kept = [e for i, e in enumerate(examples) if i % args.folds != fold]
        model, _ = fit(config, kept, image_examples, args)
        folds.append(accuracy(model, held))
        print(
            f"fold {fold + 1}/{args.folds}: text-text acc@1 {folds[-1] * 100:.1f}% on {len(held)} held-out mentions"
        )
    model, training = fit(config, examples, image_examples, args)
    report = {
        "dataset": dataset.name,
        "split": args.split,
        "train_mentions": len(examples),
        "train_image_mentions": len(image_examples),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": training,
        "cv_acc@1": {"folds": folds, "mean": float(np.mean(folds)), "std": float(np.std(folds))}
        if folds
        else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    model.save(args.out, {"report": report})
    print(
        json.dumps(
            report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
