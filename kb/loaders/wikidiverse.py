"""WikiDiverse in either of its two public layouts.

* KGMEL/MIMIC repack (what ``../shared`` holds): ``kgmel_WikiDiverse.json`` (list of
  {id, sentence, imgPath, mention: [..], entity: [Wikipedia titles], answer: [QIDs], img-url}),
  ``kgmel_ids_split_mappings.json`` (["WikiDiverse"]: {train, val, test: [ids]}) and
  ``kgmel_ids_blank_image.json`` (["WikiDiverse"]: ids whose image is blank, so treated as
  having no image). Images, when downloaded, sit in ``mention_image/`` (or ``images/``).
* The official release (wangxw5/wikiDiverse): ``train.json``, ``valid.json``, ``test.json``,
  each a list of ``[caption, img_url, topic, [[mention, type, start, end, wiki_url], ...]]``,
  or the 10-candidate variant ``[sentence, img_url, mention, mention_type, left_ctx,
  right_ctx, entity_url, cands, topic, start, end]``. Gold labels there are Wikipedia URLs;
  they are mapped to QIDs with ``title2qid.json`` ({title: QID}) when present, else the
  mention is recorded as an item error. Images are ``wikinewsImgs/<md5(file name)><ext>``,
  the naming of the official image dump.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from kb.dataset import Dataset, DatasetSpec, read_json, register
from kb.errors import DatasetError, ItemError
from kb.loaders.common import caption_mentions, entities_from_maps, image_in_folder, make_mention, record_id
from kb.records import NIL

NAME = "wikidiverse"
PUBLISHED_AT = (
    "https://github.com/wangxw5/wikiDiverse (official release) or "
    "https://github.com/juyeonnn/KGMEL (data/dataset, MIMIC-derived repack)"
)
OFFICIAL_SPLITS = {"train": "train", "valid": "dev", "dev": "dev", "test": "test"}
IMAGE_FOLDERS = ("mention_image", "mention_images", "images", "wikinewsImgs")


def load(root: Path) -> Dataset:
    if (root / "kgmel_WikiDiverse.json").is_file():
        return _load_repack(root)
    official = [root / f"{stem}.json" for stem in OFFICIAL_SPLITS if (root / f"{stem}.json").is_file()]
    if official:
        return _load_official(root, official)
    raise DatasetError(
        f"{NAME}: {root} holds neither kgmel_WikiDiverse.json (KGMEL repack) nor "
        f"train.json/valid.json/test.json (official release). Published at {PUBLISHED_AT}."
    )


def _images_dir(root: Path) -> Path:
    for folder in IMAGE_FOLDERS:
        if (root / folder).is_dir():
            return root / folder
    return root / IMAGE_FOLDERS[0]


def _load_repack(root: Path) -> Dataset:
    source = root / "kgmel_WikiDiverse.json"
    captions = read_json(source, NAME, PUBLISHED_AT, expect=list)
    mapping = read_json(root / "kgmel_ids_split_mappings.json", NAME, PUBLISHED_AT, expect=dict)
    splits = _id_lists(mapping.get("WikiDiverse", {}), root / "kgmel_ids_split_mappings.json")
    split_of = {str(i): ("dev" if s == "val" else s) for s, ids in splits.items() for i in ids}
    blank_path = root / "kgmel_ids_blank_image.json"
    blank = read_json(blank_path, NAME, PUBLISHED_AT, expect=dict) if blank_path.is_file() else {}
    blank_ids = {str(i) for i in blank.get("WikiDiverse") or [] if isinstance(blank.get("WikiDiverse"), list)}
    images = _images_dir(root)
    errors: list[ItemError] = []
    aliases: dict[str, set[str]] = {}
    labels: dict[str, str] = {}
    mentions = []
    for position, record in enumerate(captions):
        caption_id = record_id(record.get("id")) if isinstance(record, dict) else None
        if caption_id is None:
            errors.append(
                ItemError(f"#{position}", "id", "caption record without a string or integer id", str(source))
            )
            continue
        sentence = record.get("sentence")
        if not isinstance(sentence, str):
            errors.append(ItemError(caption_id, "sentence", "missing or not text", str(source)))
            continue
        image = None
        if caption_id not in blank_ids:
            image = image_in_folder(images, record.get("imgPath"), caption_id, str(source), errors)
        found = caption_mentions(
            caption_id=caption_id,
            sentence=sentence,
            surfaces=record.get("mention"),
            answers=record.get("answer"),
            titles=record.get("entity"),
            split=split_of.get(caption_id, "unassigned"),
            source=str(source),
            errors=errors,
            image_path=image,
            aliases=aliases,
        )
        mentions += found
    for qid, titles in aliases.items():
        labels[qid] = sorted(titles)[0]
    return Dataset(
        name=NAME,
        root=root,
        mentions=mentions,
        entities=entities_from_maps(labels, {}, aliases),
        captions=len(captions),
        errors=errors,
        splits_declared={("dev" if s == "val" else s): len(ids) for s, ids in splits.items()},
    )


def _id_lists(splits: Any, path: Path) -> dict[str, list[Any]]:
    """{split: [ids]} of the repack's mapping file; any other shape names the file."""
    if not isinstance(splits, dict) or not all(isinstance(ids, list) for ids in splits.values()):
        raise DatasetError(f'{NAME}: {path} should map "WikiDiverse" to {{split: [ids]}}')
    return splits


def official_image_name(img_url: str) -> str:
    """File name the official WikiDiverse image dump uses for ``img_url``."""
    file_name = unquote(img_url.rsplit("/", 1)[-1])
    match = re.search(r"\.(jpe?g|png|svg|gif)$", file_name, flags=re.IGNORECASE)
    suffix = match.group(0) if match else ""
    return hashlib.md5(file_name.encode()).hexdigest() + suffix


def title_from_url(url: str) -> str:
    return unquote(url.rsplit("/wiki/", 1)[-1]).replace("_", " ")


def _load_official(root: Path, files: list[Path]) -> Dataset:
    title_map_path = root / "title2qid.json"
    title2qid = read_json(title_map_path, NAME, PUBLISHED_AT, expect=dict) if title_map_path.is_file() else {}
    images = _images_dir(root)
    errors: list[ItemError] = []
    aliases: dict[str, set[str]] = {}
    mentions = []
    captions = 0
    for path in files:
        split = OFFICIAL_SPLITS[path.stem]
        for position, row in enumerate(read_json(path, NAME, PUBLISHED_AT, expect=list)):
            caption_id = f"{path.stem}-{position}"
            rows = _official_rows(row, caption_id, str(path), errors)
            if rows is None:
                continue
            captions += 1
            sentence, img_url, items = rows
            image = images / official_image_name(img_url) if img_url else None
            for index, (surface, start, end, url, candidates) in enumerate(items):
                mention_id = f"{caption_id}-{index}"
                title = title_from_url(url) if url else ""
                qid = title2qid.get(title) if title else NIL
                if qid is None:
                    errors.append(
                        ItemError(
                            mention_id,
                            "wiki_url",
                            f"no QID for {title!r}: add it to {title_map_path.name}",
                            str(path),
                        )
                    )
                    continue
                built = make_mention(
                    mention_id=mention_id,
                    sentence=sentence,
                    surface=surface,
                    gold_raw=qid,
                    split=split,
                    source=str(path),
                    errors=errors,
                    image_path=image,
                    caption_id=caption_id,
                    span=(start, end) if isinstance(start, int) and isinstance(end, int) else None,
                    candidates=tuple(title2qid[t] for t in candidates if t in title2qid),
                )
                if built is not None:
                    mentions.append(built)
                    if title and not built.is_nil:
                        aliases.setdefault(built.gold, set()).add(title)
    labels = {qid: sorted(titles)[0] for qid, titles in aliases.items()}
    return Dataset(NAME, root, mentions, entities_from_maps(labels, {}, aliases), captions, errors)


def _official_rows(
    row: Any, item: str, source: str, errors: list[ItemError]
) -> tuple[str, str, list[tuple[str, Any, Any, str, list[str]]]] | None:
    """Normalise a passage-level or a 10-candidate row to (sentence, img_url, mentions)."""
    if isinstance(row, list) and len(row) in (4, 11) and not _caption_and_url(row):
        errors.append(
            ItemError(item, "row", "caption must be a string and image URL a string or null", source)
        )
        return None
    if isinstance(row, list) and len(row) == 4 and isinstance(row[3], list):
        caption, img_url, _topic, spans = row
        items = []
        for span in spans:
            if not (isinstance(span, list) and len(span) >= 5 and isinstance(span[0], str)):
                errors.append(
                    ItemError(
                        item,
                        "mentions",
                        f"expected [mention, type, start, end, url], got {span!r}",
                        source,
                    )
                )
                continue
            if span[4] is not None and not isinstance(span[4], str):
                errors.append(ItemError(item, "wiki_url", f"expected a URL string, got {span[4]!r}", source))
                continue
            items.append((span[0], span[2], span[3], span[4] or "", []))
        return str(caption), str(img_url or ""), items
    if isinstance(row, list) and len(row) == 11:
        sentence, img_url, surface, _type, _left, _right, url, cands, _topic, start, end = row
        if not isinstance(surface, str) or not (url is None or isinstance(url, str)):
            errors.append(ItemError(item, "mention", "mention and entity URL must be strings", source))
            return None
        if cands is not None and not isinstance(cands, list):
            errors.append(ItemError(item, "cands", f"expected a list of candidates, got {cands!r}", source))
            return None
        titles = [title_from_url(c) if "/wiki/" in str(c) else str(c) for c in (cands or [])]
        return (
            str(sentence),
            str(img_url or ""),
            [(str(surface), start, end, str(url or ""), titles)],
        )
    errors.append(
        ItemError(item, "row", "neither a passage row (4 fields) nor a candidate row (11 fields)", source)
    )
    return None


def _caption_and_url(row: list[Any]) -> bool:
    return isinstance(row[0], str) and (row[1] is None or isinstance(row[1], str))


register(DatasetSpec(NAME, load, "wikidiverse", PUBLISHED_AT), aliases=["wiki-diverse"])
