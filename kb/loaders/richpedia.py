"""Richpedia-MEL: MELBench annotations + GHMFC train/test split and KB text.

Files: ``Richpedia-MEL.json`` (sample id -> {id, sentence, mentions: str, entities: str,
answer: QID}), ``ghmfc_train.json`` / ``ghmfc_test.json`` (same schema; define the split),
``ghmfc_qid2ne.json``, ``ghmfc_qid2abs_long.json`` (falls back to ``ghmfc_qid2abs.json``),
optional ``images/<id>.{jpg,png}`` from the MELBench visual release.
"""

from __future__ import annotations

from pathlib import Path

from kb.dataset import Dataset, DatasetSpec, read_json, register
from kb.errors import ItemError
from kb.loaders.common import entities_from_maps, make_mention, text_field

NAME = "richpedia-mel"
PUBLISHED_AT = (
    "https://github.com/seukgcode/MELBench (Richpedia-MEL) and "
    "https://github.com/seukgcode/MEL-GHMFC (datasets/Richpedia-MEL)"
)


def _image_for(images: Path, sample_id: str) -> Path:
    for suffix in (".jpg", ".png", ".jpeg", ".gif"):
        candidate = images / f"{sample_id}{suffix}"
        if candidate.is_file():
            return candidate
    return images / f"{sample_id}.jpg"


def load(root: Path) -> Dataset:
    source = root / "Richpedia-MEL.json"
    repeated: list[str] = []
    annotations = read_json(source, NAME, PUBLISHED_AT, expect=dict, duplicates=repeated)
    split_of: dict[str, str] = {}
    declared: dict[str, int] = {}
    for split in ("train", "dev", "test"):
        path = root / f"ghmfc_{split}.json"
        if split == "dev" and not path.is_file():
            continue
        ids = read_json(path, NAME, PUBLISHED_AT, expect=dict)
        declared[split] = len(ids)
        split_of.update({str(sample_id): split for sample_id in ids})
    labels = read_json(root / "ghmfc_qid2ne.json", NAME, PUBLISHED_AT, expect=dict)
    long_abstracts = root / "ghmfc_qid2abs_long.json"
    abstracts = read_json(
        long_abstracts if long_abstracts.is_file() else root / "ghmfc_qid2abs.json",
        NAME,
        PUBLISHED_AT,
        expect=dict,
    )
    errors = [
        ItemError(key, "id", "duplicate key in the file: the first value is kept", str(source))
        for key in repeated
    ]
    aliases: dict[str, set[str]] = {}
    mentions = []
    images = root / "images"
    with_images = images.is_dir()
    for sample_id, record in annotations.items():
        sentence = text_field(record, "sentence", sample_id, str(source), errors)
        surface = (
            text_field(record, "mentions", sample_id, str(source), errors) if sentence is not None else None
        )
        if sentence is None or surface is None:
            continue
        built = make_mention(
            mention_id=str(sample_id),
            sentence=sentence,
            surface=surface,
            gold_raw=record.get("answer"),
            split=split_of.get(str(sample_id), "unassigned"),
            source=str(source),
            errors=errors,
            image_path=_image_for(images, str(sample_id)) if with_images else None,
            caption_id=str(sample_id),
        )
        if built is None:
            continue
        mentions.append(built)
        title = record.get("entities")
        if isinstance(title, str) and title and not built.is_nil:
            aliases.setdefault(built.gold, set()).add(title)
    return Dataset(
        name=NAME,
        root=root,
        mentions=mentions,
        entities=entities_from_maps(labels, abstracts, aliases),
        captions=len(annotations),
        errors=errors,
        splits_declared=declared,
    )


register(DatasetSpec(NAME, load, "richpedia-mel", PUBLISHED_AT), aliases=["richpedia", "richpediamel"])
