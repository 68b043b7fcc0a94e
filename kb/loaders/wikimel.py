"""WikiMEL (Wikidata-MEL): MELBench annotations + GHMFC splits and KB text.

Files: ``Wikidata-MEL.json`` (caption id -> {id, sentence, mentions, entities, answer}),
``splits.json`` ({train, dev, test: [caption ids]}), ``qid2ne.json`` (QID -> name),
``qid2abs.json`` (QID -> Wikidata-fact abstract), ``images/<caption id>.jpg``.
Captions that no split lists are kept under split ``unassigned``; split ids with no
annotation (2,281 in the GHMFC file) are counted in ``splits_declared`` only.
"""

from __future__ import annotations

from pathlib import Path

from kb.dataset import Dataset, DatasetSpec, read_json, register
from kb.errors import ItemError
from kb.loaders.common import caption_mentions, entities_from_maps, text_field

NAME = "wikimel"
PUBLISHED_AT = (
    "https://github.com/seukgcode/MELBench (Wikidata-MEL) and "
    "https://github.com/seukgcode/MEL-GHMFC (datasets/WikiMEL)"
)


def caption_splits(path: Path, dataset: str, published_at: str) -> tuple[dict[str, str], dict[str, int]]:
    """Caption id -> split name from a {split: [ids]} file, plus the declared split sizes."""
    splits = read_json(path, dataset, published_at, expect=dict)
    by_id: dict[str, str] = {}
    for split, ids in splits.items():
        if not isinstance(ids, list):
            continue
        for caption_id in ids:
            by_id[str(caption_id)] = str(split)
    return by_id, {str(k): len(v) for k, v in splits.items() if isinstance(v, list)}


def load(root: Path) -> Dataset:
    source = root / "Wikidata-MEL.json"
    repeated: list[str] = []
    annotations = read_json(source, NAME, PUBLISHED_AT, expect=dict, duplicates=repeated)
    split_of, declared = caption_splits(root / "splits.json", NAME, PUBLISHED_AT)
    labels = read_json(root / "qid2ne.json", NAME, PUBLISHED_AT, expect=dict)
    abstracts = read_json(root / "qid2abs.json", NAME, PUBLISHED_AT, expect=dict)
    errors = [
        ItemError(key, "id", "duplicate key in the file: the first value is kept", str(source))
        for key in repeated
    ]
    aliases: dict[str, set[str]] = {}
    mentions = []
    for caption_id, record in annotations.items():
        sentence = text_field(record, "sentence", caption_id, str(source), errors)
        if sentence is None:
            continue
        mentions += caption_mentions(
            caption_id=str(caption_id),
            sentence=sentence,
            surfaces=record.get("mentions"),
            answers=record.get("answer"),
            titles=record.get("entities"),
            split=split_of.get(str(caption_id), "unassigned"),
            source=str(source),
            errors=errors,
            image_path=root / "images" / f"{caption_id}.jpg",
            aliases=aliases,
        )
    return Dataset(
        name=NAME,
        root=root,
        mentions=mentions,
        entities=entities_from_maps(labels, abstracts, aliases),
        captions=len(annotations),
        errors=errors,
        splits_declared=declared,
    )


register(DatasetSpec(NAME, load, "wikimel", PUBLISHED_AT), aliases=["wikidata-mel", "wiki-mel"])
