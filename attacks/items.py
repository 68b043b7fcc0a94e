"""What an attack run works on: its settings, the mentions ready to attack, their images, batches.

Batches (``mixed_batches``): images of any sizes share a batch, in input order, up to
``batch_size`` images and ``max_pixels`` pixels (sum of H * W, the memory cap); an image larger
than the budget is still attacked, alone. Every image keeps its own exact preprocessing inside
the target (``attacks.target``) and its own random draws (``attacks.seeding``), so how images
are grouped changes neither an adversarial nor a manifest line, apart from ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from attacks.engine import attack_dtype
from attacks.presets import Preset
from kb.candidates import CandidateSet
from kb.dataset import Dataset
from kb.errors import ImageError
from kb.images import load_rgb, to_tensor
from kb.records import Mention
from kb.runcore.items import candidate_builder, prepare
from kb.runcore.selection import DEFAULT_SPLIT, select_mentions
from tools.scorers.base import template_for

# Pixels (sum of H * W) per attacked batch. APGD-S on 8 WikiMEL 8-megapixel images (64 M pixels)
# peaked at about 20 GB (~300 bytes a pixel with the autograd graph of the resize); 16 M keeps a
# batch near 5 GB. An image larger than the budget is still attacked, alone.
DEFAULT_MAX_BATCH_PIXELS = 16_000_000

T = TypeVar("T")


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
    dtype: str = "float32"
    space: str = "pixels"


@dataclass
class AttackItem:
    """One mention ready to attack: its candidate set, candidate texts and context."""

    mention: Mention
    candidates: CandidateSet
    candidate_texts: list[str]
    context: str | None
    error: str | None = None
    detail: str | None = None


def folder_identity(preset: Preset, config: GenerateConfig, dataset: str) -> dict[str, Any]:
    """What ``attack.json`` pins: a folder holds one attack of one scorer on one dataset, in one
    space and precision (a folder from before per-image seeding has neither key and is refused:
    its random starts were drawn per batch)."""
    return {
        "preset": preset.params(),
        "scorer": config.scorer,
        "task": config.task,
        "dataset": dataset,
        "seed": config.seed,
        "candidates": config.candidates if config.candidates is not None else "all",
        "space": config.space,
        "dtype": attack_dtype(preset, config.dtype),
    }


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
        return value.float().div_(255)


def mixed_batches(
    items: Sequence[tuple[T, torch.Tensor]],
    batch_size: int,
    max_pixels: int | None = DEFAULT_MAX_BATCH_PIXELS,
) -> Iterator[list[tuple[T, torch.Tensor]]]:
    """Consecutive runs of at most ``batch_size`` images and ``max_pixels`` pixels (sum of H * W;
    None: no cap), any sizes mixed; an image over the budget is a batch of one."""
    batch: list[tuple[T, torch.Tensor]] = []
    pixels = 0
    for item, image in items:
        size = int(image.shape[-2]) * int(image.shape[-1])
        full = len(batch) >= batch_size or (max_pixels is not None and pixels + size > max_pixels)
        if batch and full:
            yield batch
            batch, pixels = [], 0
        batch.append((item, image))
        pixels += size
    if batch:
        yield batch
