"""Chinese MEL in a JSON Lines layout (EMMEL / COCO-CN-style captions with entity labels).

Folder layout (documented here because no single public Chinese MEL release fixes one):
``mentions.jsonl`` or ``{train,dev,test}.jsonl`` with one {id, sentence, mention, answer
(QID or "nil"), image (file in ``images/``, optional), split (optional), span (optional
[start, end])} per line, and ``entities.jsonl`` with {qid, label, description, aliases}.
Text is read as UTF-8; every mention is tagged language ``zh``, so text encoders that know
Chinese (multilingual-e5, Chinese-CLIP) are picked for it.
"""

from __future__ import annotations

from pathlib import Path

from kb.dataset import Dataset, DatasetSpec, read_json_lines, register
from kb.errors import DatasetFileMissing, ItemError
from kb.loaders.common import image_in_folder, make_mention, optional_text, record_id
from kb.records import Entity

NAME = "zh"
PUBLISHED_AT = "a folder in the JSONL layout of kb/loaders/chinese.py (e.g. EMMEL converted)"


def load(root: Path) -> Dataset:
    mention_files = (
        [root / "mentions.jsonl"]
        if (root / "mentions.jsonl").is_file()
        else [root / f"{s}.jsonl" for s in ("train", "dev", "test") if (root / f"{s}.jsonl").is_file()]
    )
    if not mention_files:
        raise DatasetFileMissing(root / "mentions.jsonl", NAME, PUBLISHED_AT)
    entity_records, errors = read_json_lines(root / "entities.jsonl", NAME, PUBLISHED_AT)
    entities: dict[str, Entity] = {}
    for position, record in enumerate(entity_records):
        if not isinstance(record, dict) or not isinstance(record.get("qid"), str):
            errors.append(ItemError(f"entities#{position}", "qid", "missing or not text", "entities.jsonl"))
            continue
        qid = record["qid"]
        label = optional_text(record, "label", qid, "entities.jsonl", errors)
        description = optional_text(record, "description", qid, "entities.jsonl", errors)
        aliases = record.get("aliases") or []
        if label is None or description is None:
            continue
        if not isinstance(aliases, list):
            errors.append(ItemError(qid, "aliases", "expected a list of strings", "entities.jsonl"))
            aliases = []
        entities[qid] = Entity(
            qid=qid,
            label=label or qid,
            description=description,
            aliases=tuple(a for a in aliases if isinstance(a, str)),
        )
    mentions = []
    images = root / "images"
    for path in mention_files:
        records, line_errors = read_json_lines(path, NAME, PUBLISHED_AT)
        errors += line_errors
        for position, record in enumerate(records):
            item = f"{path.stem}-{position}"
            if isinstance(record, dict) and "id" in record:
                if record_id(record["id"]) is None:
                    errors.append(ItemError(item, "id", "expected a string or integer id", str(path)))
                    continue
                item = record_id(record["id"])
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("sentence"), str)
                or not isinstance(record.get("mention"), str)
            ):
                errors.append(ItemError(item, "sentence/mention", "missing or not text", str(path)))
                continue
            span = record.get("span")
            split = optional_text(record, "split", item, str(path), errors)
            if split is None:
                continue
            built = make_mention(
                mention_id=item,
                sentence=record["sentence"],
                surface=record["mention"],
                gold_raw=record.get("answer"),
                split=split or (path.stem if path.stem != "mentions" else "all"),
                source=str(path),
                errors=errors,
                image_path=image_in_folder(images, record.get("image"), item, str(path), errors),
                caption_id=item,
                language="zh",
                span=tuple(span) if isinstance(span, list) and len(span) == 2 else None,
            )
            if built is not None:
                mentions.append(built)
    return Dataset(NAME, root, mentions, entities, captions=len(mentions), errors=errors)


register(DatasetSpec(NAME, load, "zh", PUBLISHED_AT), aliases=["chinese", "emmel"])
