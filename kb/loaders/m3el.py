"""M3EL (ww-ffff/M3EL): mention-level records that carry their own candidate lists.

Each record: {Qid, name, description, sentence, image: [file, url, localpath],
candidates: [{Qid, name, description, image}]}, in ``.json`` (a list) or ``.jsonl`` files;
a file name containing train/dev/valid/test sets the split. Records have no separate
mention string, so the surface form is the record's optional ``mention`` field, else empty:
the seed paper links M3EL from the image and the sentence (never from ``name``, which is the
gold entity's name and would leak the answer). Images are looked up in ``images/`` by the
first element of ``image``. The KB is the union of every record's candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kb.dataset import Dataset, DatasetSpec, register
from kb.errors import DatasetFileMissing, ItemError
from kb.loaders.common import QID_PATTERN, image_in_folder, make_mention, optional_text, read_records
from kb.records import Entity

NAME = "m3el"
PUBLISHED_AT = "https://github.com/ww-ffff/M3EL"


def split_from_name(path: Path) -> str:
    stem = path.stem.lower()
    for key, split in (("train", "train"), ("valid", "dev"), ("dev", "dev"), ("test", "test")):
        if key in stem:
            return split
    return "all"


def _entity(record: Any, images: Path, item: str, source: str, errors: list[ItemError]) -> Entity | None:
    """The entity a record or candidate describes; None when it has no valid Qid (the caller
    says so) or when its name or description is not text (recorded here)."""
    if not isinstance(record, dict) or not isinstance(record.get("Qid"), str):
        return None
    if not QID_PATTERN.match(record["Qid"]):
        return None
    qid = record["Qid"]
    name = optional_text(record, "name", f"{item}/{qid}", source, errors)
    description = optional_text(record, "description", f"{item}/{qid}", source, errors)
    if name is None or description is None:
        return None
    image = record.get("image")
    first = image[0] if isinstance(image, list) and image else None
    return Entity(
        qid=qid,
        label=name or qid,
        description=description,
        image_paths=(images / first,) if image_in_folder(images, first, item, source, []) else (),
    )


def load(root: Path) -> Dataset:
    files = sorted(p for p in root.iterdir() if p.suffix in (".json", ".jsonl")) if root.is_dir() else []
    if not files:
        raise DatasetFileMissing(root / "M3EL.json", NAME, PUBLISHED_AT)
    images = root / "images"
    errors: list[ItemError] = []
    entities: dict[str, Entity] = {}
    mentions = []
    for path in files:
        records = read_records(path, NAME, PUBLISHED_AT, errors)
        split = split_from_name(path)
        for position, record in enumerate(records):
            item = f"{path.stem}-{position}"
            if not isinstance(record, dict):
                errors.append(ItemError(item, "record", "expected a JSON object", str(path)))
                continue
            candidates = record.get("candidates") or []
            candidate_ids = []
            if not isinstance(candidates, list):
                errors.append(
                    ItemError(item, "candidates", "expected a list of candidate objects", str(path))
                )
                continue
            for candidate in candidates:
                entity = _entity(candidate, images, item, str(path), errors)
                if entity is None:
                    errors.append(
                        ItemError(
                            item,
                            "candidates",
                            f"candidate without a valid Qid: {str(candidate)[:80]}",
                            str(path),
                        )
                    )
                    continue
                entities.setdefault(entity.qid, entity)
                candidate_ids.append(entity.qid)
            gold_entity = _entity(record, images, item, str(path), errors)
            if gold_entity is not None:
                entities.setdefault(gold_entity.qid, gold_entity)
            image = record.get("image")
            first = image[0] if isinstance(image, list) and image else image
            sentence = optional_text(record, "sentence", item, str(path), errors)
            surface = optional_text(record, "mention", item, str(path), errors)
            if sentence is None or surface is None:
                continue
            built = make_mention(
                mention_id=item,
                sentence=sentence,
                surface=surface,
                gold_raw=record.get("Qid"),
                split=split,
                source=str(path),
                errors=errors,
                image_path=image_in_folder(images, first, item, str(path), errors),
                caption_id=item,
                candidates=tuple(dict.fromkeys(candidate_ids)),
            )
            if built is not None:
                mentions.append(built)
    return Dataset(NAME, root, mentions, entities, captions=len(mentions), errors=errors)


register(DatasetSpec(NAME, load, "m3el", PUBLISHED_AT))
