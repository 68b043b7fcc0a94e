"""``attacks.generate --executor ray``: attack the batches of every preset on a pool of Ray actors.

The driver (``attacks.generate.run``) resumes from each manifest, groups images into exactly the
batches a local run makes (``attacks.items.mixed_batches``: an image's result does not depend
on its batch, its manifest line's ``batch_size`` does), and sends each batch as one JSON row:
the preset's name and folder, and per image its mention, candidate set, candidate texts and
context. An ``AttackWorker`` loads the scorer once, reads the images itself, runs the very
``attacks.generate.attack_or_record`` a local run runs, writes the PNG and ``.pt`` files
(atomically, so a batch retried after a lost worker just rewrites them) and returns the
manifest lines, which the driver alone appends. All presets share one pool: one model load
per actor for the whole run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb.runcore.items import candidates_from_row, candidates_row, mention_from_row, mention_row
from tools.executor import ExecutorConfig, JsonWorker, ray_map

if TYPE_CHECKING:
    import torch

    from attacks.generate import AttackItem, GenerateConfig
    from attacks.presets import Preset


def item_row(item: AttackItem) -> dict[str, Any]:
    return {
        "mention": mention_row(item.mention),
        "candidates": candidates_row(item.candidates),
        "candidate_texts": item.candidate_texts,
        "context": item.context,
    }


def item_from_row(row: dict[str, Any]) -> AttackItem:
    from attacks.generate import AttackItem

    return AttackItem(
        mention_from_row(row["mention"]),
        candidates_from_row(row["candidates"]),
        row["candidate_texts"],
        row["context"],
    )


class AttackWorker(JsonWorker):
    """One pool actor: the scorer loaded once (on its GPU with ``--device cuda``), attacking batches."""

    def __init__(self, config: dict[str, Any], presets: dict[str, Preset], threads: int = 1) -> None:
        from attacks.generate import GenerateConfig, ImageCache, load_attack_scorer

        super().__init__(threads)
        self.config = GenerateConfig(**config)
        self.presets = presets
        self.scorer = load_attack_scorer(self.config)
        self.images = ImageCache()

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from attacks.generate import attack_or_record

        results = []
        for row in rows:
            items = [item_from_row(r) for r in row["items"]]
            batch = [(item, self.images.get(item.mention)) for item in items]
            preset = self.presets[row["preset"]]
            records = attack_or_record(self.scorer, preset, batch, self.config, Path(row["folder"]))
            results.append({"index": row["index"], "records": records})
        return results


class RayAttacks:
    """Collects every preset's batches, then attacks them all on one Ray actor pool."""

    def __init__(self, config: GenerateConfig, executor: ExecutorConfig, threads: int = 1) -> None:
        self.config = config
        self.executor = executor
        self.threads = threads
        self.presets: dict[str, Preset] = {}
        self.rows: list[dict[str, Any]] = []

    def add(self, preset: Preset, folder: Path, batch: list[tuple[AttackItem, torch.Tensor]]) -> None:
        """Queue one batch (the driver's decoded images are not sent: workers read the files)."""
        self.presets[preset.name] = preset
        self.rows.append(
            {
                "index": len(self.rows),
                "preset": preset.name,
                "folder": str(folder),
                "items": [item_row(item) for item, _ in batch],
            }
        )

    def run(self, progress: bool) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """(preset name, manifest lines) of each batch, once, in completion order."""
        gpus = 1.0 if self.config.device.startswith("cuda") else 0.0
        for result in ray_map(
            self.rows,
            AttackWorker,
            (asdict(self.config), self.presets, self.threads),
            self.executor,
            rows_per_call=1,
            gpus_per_worker=gpus,
            progress=progress,
        ):
            yield self.rows[result["index"]]["preset"], result["records"]
