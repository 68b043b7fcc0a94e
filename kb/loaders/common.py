"""Pieces the format loaders share: field checks that record per-item errors, QID checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kb.errors import ItemError
from kb.records import NIL, QID_PATTERN, Entity, Mention, find_span


def normalise_gold(value: Any) -> str | None:
    """A gold label as 'Q…' or NIL; None when it is neither (the caller records the error)."""
    if value is None:
        return NIL
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.lower() in ("nil", "none", ""):
        return NIL
    return text if QID_PATTERN.match(text) else None


def text_field(record: Any, key: str, item: str, source: str, errors: list[ItemError]) -> str | None:
    """``record[key]`` as a string, or None after recording what was wrong with it."""
    if not isinstance(record, dict):
        errors.append(
            ItemError(item, "record", f"expected a JSON object, found {type(record).__name__}", source)
        )
        return None
    if key not in record:
        errors.append(ItemError(item, key, "field is missing", source))
        return None
    value = record[key]
    if not isinstance(value, str):
        errors.append(ItemError(item, key, f"expected a string, found {type(value).__name__}", source))
        return None
    return value


def optional_text(
    record: dict[str, Any], key: str, item: str, source: str, errors: list[ItemError]
) -> str | None:
    """``record[key]`` when it is text, "" when absent or null; None after recording a wrong type
    (a number or a list where text belongs is a broken record, not a caption to score)."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(ItemError(item, key, f"expected a string, found {type(value).__name__}", source))
        return None
    return value


def record_id(value: Any) -> str | None:
    """A record's own id as text: a non-empty string or an integer (not a bool), else None."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def make_mention(
    *,
    mention_id: str,
    sentence: str,
    surface: str,
    gold_raw: Any,
    split: str,
    source: str,
    errors: list[ItemError],
    image_path: Path | None = None,
    caption_id: str | None = None,
    language: str = "en",
    span: tuple[int, int] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    candidates: tuple[str, ...] = (),
) -> Mention | None:
    """Build a Mention after checking its gold label; a bad label becomes an ItemError."""
    gold = normalise_gold(gold_raw)
    if gold is None:
        errors.append(ItemError(mention_id, "answer", f"not a Wikidata QID or NIL: {gold_raw!r}", source))
        return None
    return Mention(
        id=mention_id,
        sentence=sentence,
        mention=surface,
        gold=gold,
        split=split,
        language=language,
        image_path=image_path,
        span=span if span is not None else find_span(sentence, surface),
        bbox=bbox,
        caption_id=caption_id,
        candidates=candidates,
    )


def caption_mentions(
    *,
    caption_id: str,
    sentence: str,
    surfaces: Any,
    answers: Any,
    split: str,
    source: str,
    errors: list[ItemError],
    image_path: Path | None,
    aliases: dict[str, set[str]] | None = None,
    titles: Any = None,
) -> list[Mention]:
    """Mentions of a caption whose record holds parallel lists (WikiMEL, WikiDiverse).

    ``titles`` (the entity names the annotators chose) are added as aliases of the gold QID.
    """
    if not isinstance(surfaces, list) or not isinstance(answers, list) or len(surfaces) != len(answers):
        errors.append(ItemError(caption_id, "mentions/answer", "expected two lists of equal length", source))
        return []
    mentions = []
    for index, (surface, answer) in enumerate(zip(surfaces, answers, strict=True)):
        mention_id = f"{caption_id}-{index}"
        if not isinstance(surface, str) or not surface.strip():
            errors.append(ItemError(mention_id, "mentions", "mention string is empty or not text", source))
            continue
        built = make_mention(
            mention_id=mention_id,
            sentence=sentence,
            surface=surface,
            gold_raw=answer,
            split=split,
            source=source,
            errors=errors,
            image_path=image_path,
            caption_id=caption_id,
        )
        if built is None:
            continue
        mentions.append(built)
        if aliases is not None and isinstance(titles, list) and index < len(titles):
            title = titles[index]
            if isinstance(title, str) and title and not built.is_nil:
                aliases.setdefault(built.gold, set()).add(title)
    return mentions


def entities_from_maps(
    labels: dict[str, Any],
    descriptions: dict[str, Any],
    aliases: dict[str, set[str]] | None = None,
) -> dict[str, Entity]:
    """Entities from QID->name and QID->text maps; names that equal the label are not aliases."""
    entities: dict[str, Entity] = {}
    aliases = aliases or {}
    for qid in sorted(set(labels) | set(descriptions), key=_qid_order):
        label = labels.get(qid)
        label = label if isinstance(label, str) and label else qid
        description = descriptions.get(qid)
        entities[qid] = Entity(
            qid=qid,
            label=label,
            description=description if isinstance(description, str) else "",
            aliases=tuple(sorted(a for a in aliases.get(qid, ()) if a != label)),
        )
    return entities


def _qid_order(qid: str) -> tuple[int, str]:
    return (int(qid[1:]), qid) if QID_PATTERN.match(qid) else (1 << 62, qid)


def image_in_folder(
    images_dir: Path, name: Any, item: str, source: str, errors: list[ItemError]
) -> Path | None:
    """``images_dir/name`` for a relative file name; a name that leaves the folder is an error."""
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        errors.append(ItemError(item, "image", f"expected a file name, found {type(name).__name__}", source))
        return None
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        errors.append(ItemError(item, "image", f"path {name!r} points outside {images_dir}", source))
        return None
    return images_dir / candidate


def read_records(path: Path, dataset: str, published_at: str, errors: list[ItemError]) -> list[Any]:
    """Records of a ``.json`` file (a list, or an object whose values are records) or ``.jsonl``."""
    from kb.dataset import read_json, read_json_lines

    if path.suffix == ".jsonl":
        records, line_errors = read_json_lines(path, dataset, published_at)
        errors += line_errors
        return records
    data = read_json(path, dataset, published_at)
    return list(data.values()) if isinstance(data, dict) else data if isinstance(data, list) else []
