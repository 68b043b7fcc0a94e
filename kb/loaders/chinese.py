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
from kb.loaders.common import image_in_folder, make_mention
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
        aliases = record.get("aliases") or []
        entities[record["qid"]] = Entity(
            qid=record["qid"],
            label=str(record.get("label") or record["qid"]),
            description=str(record.get("description") or ""),
            aliases=tuple(str(a) for a in aliases if isinstance(a, str)),
        )
    mentions = []
    images = root / "images"
    for path in mention_files:
        records, line_errors = read_json_lines(path, NAME, PUBLISHED_AT)
        errors += line_errors
        for position, record in enumerate(records):
            item = (
                str(record.get("id", f"{path.stem}-{position}"))
                if isinstance(record, dict)
                else f"{path.stem}-{position}"
            )
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("sentence"), str)
                or not isinstance(record.get("mention"), str)
            ):
                errors.append(ItemError(item, "sentence/mention", "missing or not text", str(path)))
                continue
            span = record.get("span")
            built = make_mention(
                mention_id=item,
                sentence=record["sentence"],
                surface=record["mention"],
                gold_raw=record.get("answer"),
                split=str(record.get("split") or (path.stem if path.stem != "mentions" else "all")),
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
