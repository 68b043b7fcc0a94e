"""WIKIPerson (VNEL, ict-bigdatalab/VNEL): visual-only person linking.

``WIKIPerson_Test.json`` (or ``_Train``/``_Dev``) is a list of {id, image, boundingbox, wikiid}
where ``boundingbox`` is a *string* "[x1, y1, x2, y2]". There is no caption and no mention
string: the mention is the boxed person, so images are cropped to the box when read. Images
live in ``images/``. The release has no KB text here, so entities carry their QID as label
unless an optional ``qid2ne.json`` / ``qid2abs.json`` sits in the folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kb.dataset import Dataset, DatasetSpec, read_json, register
from kb.errors import DatasetFileMissing, ItemError
from kb.loaders.common import entities_from_maps, image_in_folder, make_mention, record_id

NAME = "wikiperson"
PUBLISHED_AT = "https://github.com/ict-bigdatalab/VNEL (released_data/WIKIPerson_*.json)"
SPLIT_FILES = {
    "train": "WIKIPerson_Train.json",
    "dev": "WIKIPerson_Dev.json",
    "test": "WIKIPerson_Test.json",
}


def parse_bbox(raw: Any) -> tuple[float, float, float, float] | None:
    """'[x1, y1, x2, y2]' (or a list) -> floats, None when it is not four ordered numbers."""
    try:
        values = json.loads(raw) if isinstance(raw, str) else raw
        x1, y1, x2, y2 = (float(v) for v in values)
    except (ValueError, TypeError, OverflowError, json.JSONDecodeError):
        return None
    finite = all(math.isfinite(v) for v in (x1, y1, x2, y2))
    return (x1, y1, x2, y2) if finite and x2 > x1 and y2 > y1 else None


def load(root: Path) -> Dataset:
    present = {split: root / name for split, name in SPLIT_FILES.items() if (root / name).is_file()}
    if not present:
        raise DatasetFileMissing(root / SPLIT_FILES["test"], NAME, PUBLISHED_AT)
    errors: list[ItemError] = []
    mentions = []
    images = root / "images"
    for split, path in present.items():
        for position, record in enumerate(read_json(path, NAME, PUBLISHED_AT, expect=list)):
            if not isinstance(record, dict):
                errors.append(ItemError(f"{split}#{position}", "record", "expected a JSON object", str(path)))
                continue
            own_id = record_id(record["id"]) if "id" in record else str(position)
            if own_id is None:
                errors.append(
                    ItemError(f"{split}#{position}", "id", "expected a string or integer id", str(path))
                )
                continue
            item = f"{split}-{own_id}"
            bbox = parse_bbox(record.get("boundingbox"))
            if bbox is None:
                errors.append(
                    ItemError(
                        item,
                        "boundingbox",
                        f"expected '[x1, y1, x2, y2]', got {record.get('boundingbox')!r}",
                        str(path),
                    )
                )
                continue
            built = make_mention(
                mention_id=item,
                sentence="",
                surface="",
                gold_raw=record.get("wikiid"),
                split=split,
                source=str(path),
                errors=errors,
                image_path=image_in_folder(images, record.get("image"), item, str(path), errors),
                bbox=bbox,
                caption_id=str(record.get("image")),
            )
            if built is not None:
                mentions.append(built)
    labels = _optional_map(root / "qid2ne.json")
    abstracts = _optional_map(root / "qid2abs.json")
    gold = {m.gold: m.gold for m in mentions if not m.is_nil}
    entities = entities_from_maps({**gold, **labels}, abstracts)
    return Dataset(
        NAME,
        root,
        mentions,
        entities,
        captions=len({m.caption_id for m in mentions}),
        errors=errors,
    )


def _optional_map(path: Path) -> dict[str, Any]:
    return read_json(path, NAME, PUBLISHED_AT, expect=dict) if path.is_file() else {}


register(DatasetSpec(NAME, load, "wikiperson", PUBLISHED_AT), aliases=["wiki-person", "vnel"])
