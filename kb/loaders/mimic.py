"""MIMIC's cleaned release (pengfei-luo/MIMIC), shared by WikiMEL, WikiDiverse and RichpediaMEL.

One folder per dataset holding ``kb_entity.json`` (list of {id: QID, type, entity_name
(URL-quoted), attr, image_list}), ``qid2id.json``, mention files
``{WIKIMEL|wiki_diverse|RichpediaMEL}_{train,dev,test}.json`` (lists of {id?, mentions,
sentence, imgPath, answer: QID or "nil"}), mention images in ``mention_image/`` (one upload
names it ``mention_images/``) stored as ``<stem>.jpg`` (MIMIC converted every image to JPEG)
and entity images in ``kb_image/``. NIL mentions are kept (MIMIC's own code drops them).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from kb.dataset import Dataset, DatasetSpec, read_json, register
from kb.errors import DatasetError, ItemError
from kb.loaders.common import image_in_folder, make_mention, optional_text, record_id, text_field
from kb.records import Entity

NAME = "mimic"
PUBLISHED_AT = "https://github.com/pengfei-luo/MIMIC (cleaned WikiMEL / WikiDiverse / RichpediaMEL)"
PREFIXES = ("WIKIMEL", "wiki_diverse", "RichpediaMEL")
SPLIT_NAMES = {"train": "train", "dev": "dev", "valid": "dev", "val": "dev", "test": "test"}


def _mention_files(root: Path) -> list[tuple[Path, str]]:
    found = []
    for prefix in PREFIXES:
        for stem, split in SPLIT_NAMES.items():
            path = root / f"{prefix}_{stem}.json"
            if path.is_file():
                found.append((path, split))
    return found


def load(root: Path) -> Dataset:
    files = _mention_files(root)
    if not files:
        raise DatasetError(
            f"{NAME}: no mention file in {root}; expected WIKIMEL_test.json, wiki_diverse_test.json "
            f"or RichpediaMEL_test.json (and _train/_dev). Published at {PUBLISHED_AT}."
        )
    kb_path = root / "kb_entity.json"
    raw_entities = read_json(kb_path, NAME, PUBLISHED_AT, expect=list)
    errors: list[ItemError] = []
    kb_images = root / "kb_image"
    entities: dict[str, Entity] = {}
    for position, record in enumerate(raw_entities):
        qid = text_field(record, "id", f"kb#{position}", str(kb_path), errors)
        name = (
            text_field(record, "entity_name", qid or f"kb#{position}", str(kb_path), errors) if qid else None
        )
        if qid is None or name is None:
            continue
        images = record.get("image_list") or []
        attr = optional_text(record, "attr", qid, str(kb_path), errors)
        if attr is None:
            continue
        entities[qid] = Entity(
            qid=qid,
            label=unquote(name),
            description=attr,
            image_paths=tuple(kb_images / i for i in images if isinstance(i, str))
            if isinstance(images, list)
            else (),
        )
    image_dir = next(
        (root / d for d in ("mention_image", "mention_images") if (root / d).is_dir()),
        root / "mention_image",
    )
    mentions = []
    for path, split in files:
        for position, record in enumerate(read_json(path, NAME, PUBLISHED_AT, expect=list)):
            has_id = isinstance(record, dict) and record.get("id") is not None
            own_id = record_id(record["id"]) if has_id else str(position)
            if own_id is None:
                errors.append(
                    ItemError(f"{split}#{position}", "id", "expected a string or integer id", str(path))
                )
                continue
            mention_id = f"{split}-{own_id}"
            surface = text_field(record, "mentions", mention_id, str(path), errors)
            sentence = (
                text_field(record, "sentence", mention_id, str(path), errors) if surface is not None else None
            )
            if surface is None or sentence is None:
                continue
            image_name = record.get("imgPath") or ""
            named = (
                image_in_folder(image_dir, image_name, mention_id, str(path), errors) if image_name else None
            )
            if image_name and named is None:
                continue
            image = image_dir / (named.stem + ".jpg") if named is not None else None  # MIMIC stores JPEGs
            built = make_mention(
                mention_id=mention_id,
                sentence=sentence,
                surface=unquote(surface),
                gold_raw=record.get("answer"),
                split=split,
                source=str(path),
                errors=errors,
                image_path=image,
                caption_id=mention_id,
            )
            if built is not None:
                mentions.append(built)
    return Dataset(NAME, root, mentions, entities, captions=len(mentions), errors=errors)


register(DatasetSpec(NAME, load, "mimic", PUBLISHED_AT))
