"""A loaded dataset (mentions + knowledge base) and the registry that finds a loader by name.

Each loader module in ``kb/loaders`` reads one public format into a ``Dataset``; this module
knows where a dataset's folder is (``--data-dir`` > ``MEL_<NAME>_DIR`` > ``MEL_DATA_ROOT/<folder>``
> ``../shared/data/mel/<folder>`` next to the checkout) and how to read JSON with errors
that name the file.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kb.errors import DatasetError, DatasetFileMissing, ItemError, env_key
from kb.records import NIL, QID_PATTERN, Entity, Mention, find_span

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA_ROOT = PROJECT_ROOT.parent / "shared" / "data" / "mel"


@dataclass
class Dataset:
    """Mentions, the entities they may link to, and the per-item problems met while loading."""

    name: str
    root: Path | None
    mentions: list[Mention]
    entities: dict[str, Entity]
    captions: int
    errors: list[ItemError] = field(default_factory=list)
    splits_declared: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Last line of defence shared by every loader: whatever a format let through, the
        records downstream code sees have unique ids, QIDs and text that can be written out."""
        self.entities, entity_errors = _checked_entities(self.entities, self.name)
        self.mentions, mention_errors = _checked_mentions(self.mentions, self.name, self.root)
        self.errors = [*self.errors, *entity_errors, *mention_errors]

    def split(self, name: str | None) -> list[Mention]:
        """Mentions of one split; ``None`` or ``"all"`` gives every mention."""
        if name in (None, "all"):
            return list(self.mentions)
        chosen = [m for m in self.mentions if m.split == name]
        if not chosen:
            known = sorted({m.split for m in self.mentions})
            raise DatasetError(f"{self.name}: no mentions in split {name!r}; splits are {known}")
        return chosen

    def mention(self, mention_id: str) -> Mention:
        for candidate in self.mentions:
            if candidate.id == mention_id:
                return candidate
        raise DatasetError(f"{self.name}: no mention with id {mention_id!r}")

    def statistics(self) -> dict[str, Any]:
        """The numbers ``kb.inspect`` prints: sizes, images on disk, NIL mentions, splits."""
        with_image = [m for m in self.mentions if m.image_path is not None]
        images = {m.image_path for m in with_image}
        return {
            "dataset": self.name,
            "root": str(self.root) if self.root else None,
            "captions": self.captions,
            "mentions": len(self.mentions),
            "entities": len(self.entities),
            "gold_entities": len({m.gold for m in self.mentions if not m.is_nil}),
            "gold_in_kb": sum(1 for m in self.mentions if m.gold in self.entities),
            "images_referenced": len(images),
            "images_present": sum(1 for p in images if p.is_file()),
            "mentions_with_image_present": sum(1 for m in with_image if m.has_image),
            "nil": sum(1 for m in self.mentions if m.is_nil),
            "splits": dict(sorted(Counter(m.split for m in self.mentions).items())),
            "splits_declared": self.splits_declared,
            "languages": dict(Counter(m.language for m in self.mentions)),
            "load_errors": len(self.errors),
            "load_error_reasons": dict(Counter(e.reason for e in self.errors)),
        }


Loader = Callable[[Path], Dataset]


def _is_text(value: Any) -> bool:
    """A string that can be written as UTF-8 (JSON allows lone surrogates such as "\\ud800")."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked_entities(entities: dict[str, Entity], source: str) -> tuple[dict[str, Entity], list[ItemError]]:
    """Entities keyed by a valid QID with writable text; the others are dropped and recorded."""
    kept: dict[str, Entity] = {}
    errors: list[ItemError] = []
    for key, entity in entities.items():
        if not (isinstance(key, str) and QID_PATTERN.match(key) and entity.qid == key):
            errors.append(ItemError(str(key), "qid", "knowledge-base key is not a Wikidata QID", source))
        elif not (_is_text(entity.label) and _is_text(entity.description)):
            errors.append(ItemError(key, "label/description", "not valid Unicode text", source))
        else:
            aliases = tuple(a for a in entity.aliases if _is_text(a))
            kept[key] = entity if aliases == entity.aliases else replace(entity, aliases=aliases)
    return kept, errors


def _checked_mentions(
    mentions: list[Mention], source: str, root: Path | None
) -> tuple[list[Mention], list[ItemError]]:
    """Mentions with a unique id, a QID or NIL gold, writable text, a span inside the sentence,
    a finite box, QID candidates and an image inside the data folder; the first of duplicate
    ids is kept. A bad span or candidate is repaired and recorded, anything else drops the item."""
    kept: list[Mention] = []
    errors: list[ItemError] = []
    seen: set[str] = set()
    folder = Path(os.path.normpath(root.absolute())) if root is not None else None
    for mention in mentions:
        item = str(mention.id)
        problem = _mention_problem(mention, seen, folder)
        if problem is not None:
            errors.append(ItemError(item, problem[0], problem[1], source))
            continue
        seen.add(mention.id)
        changes: dict[str, Any] = {}
        if mention.span is not None and not _span_ok(mention.span, mention.sentence):
            errors.append(ItemError(item, "span", f"{mention.span!r} is not a span of the sentence", source))
            changes["span"] = find_span(mention.sentence, mention.mention)
        candidates = tuple(q for q in mention.candidates if isinstance(q, str) and QID_PATTERN.match(q))
        if candidates != tuple(mention.candidates):
            errors.append(ItemError(item, "candidates", "entries that are not QIDs were dropped", source))
            changes["candidates"] = tuple(dict.fromkeys(candidates))
        kept.append(replace(mention, **changes) if changes else mention)
    return kept, errors


def _mention_problem(mention: Mention, seen: set[str], folder: Path | None) -> tuple[str, str] | None:
    """(field, reason) of the first thing that makes ``mention`` unusable, else None."""
    if not isinstance(mention.id, str) or not mention.id or not _is_text(mention.id):
        return ("id", "empty or not text")
    if mention.id in seen:
        return ("id", "duplicate id: the first record with this id is kept")
    if not (mention.gold == NIL or (isinstance(mention.gold, str) and QID_PATTERN.match(mention.gold))):
        return ("answer", f"not a Wikidata QID or NIL: {mention.gold!r}")
    for name in ("sentence", "mention", "split"):
        if not _is_text(getattr(mention, name)):
            return (name, "not valid Unicode text")
    if mention.bbox is not None and not (
        len(mention.bbox) == 4 and all(isinstance(v, int | float) and math.isfinite(v) for v in mention.bbox)
    ):
        return ("boundingbox", f"expected four finite numbers, got {mention.bbox!r}")
    if mention.image_path is not None and folder is not None:
        # Lexical, not resolved: an images/ folder may be a symlink to another disk.
        if not Path(os.path.normpath(Path(folder, mention.image_path))).is_relative_to(folder):
            return ("image", f"path {str(mention.image_path)!r} points outside {folder}")
    return None


def _span_ok(span: Any, sentence: str) -> bool:
    return (
        isinstance(span, tuple)
        and len(span) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        and 0 <= span[0] <= span[1] <= len(sentence)
    )


@dataclass(frozen=True)
class DatasetSpec:
    """How to find and read one dataset: its loader, default folder and where it is published."""

    name: str
    loader: Loader
    folder: str
    published_at: str
    needs_dir: bool = True


_REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: DatasetSpec, aliases: Iterable[str] = ()) -> None:
    _REGISTRY[spec.name] = spec
    for alias in aliases:
        _ALIASES[alias] = spec.name


def dataset_names() -> list[str]:
    _import_loaders()
    return sorted(_REGISTRY)


def spec_for(name: str) -> DatasetSpec:
    _import_loaders()
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def resolve_data_dir(name: str, data_dir: Path | str | None = None) -> Path:
    """The folder holding ``name``'s files, by the precedence in the module docstring."""
    spec = spec_for(name)
    if data_dir is not None:
        chosen = Path(data_dir).expanduser()
    elif os.environ.get(f"MEL_{env_key(spec.name)}_DIR"):
        chosen = Path(os.environ[f"MEL_{env_key(spec.name)}_DIR"]).expanduser()
    elif os.environ.get("MEL_DATA_ROOT"):
        chosen = Path(os.environ["MEL_DATA_ROOT"]).expanduser() / spec.folder
    else:
        chosen = SHARED_DATA_ROOT / spec.folder
    if spec.needs_dir and not chosen.is_dir():
        raise DatasetError(
            f"{spec.name}: data folder {chosen} does not exist. The dataset is published at "
            f"{spec.published_at}; pass --data-dir or set MEL_{env_key(spec.name)}_DIR."
        )
    return chosen.resolve()


def load_dataset(name: str, data_dir: Path | str | None = None) -> Dataset:
    """Load a dataset by name (see ``dataset_names()``) from its resolved folder."""
    spec = spec_for(name)
    return spec.loader(resolve_data_dir(name, data_dir))


def read_json(
    path: Path,
    dataset: str,
    published_at: str,
    expect: type | None = None,
    duplicates: list[str] | None = None,
) -> Any:
    """Parse a JSON file, raising errors that name the file and what shape was expected.

    With ``duplicates``, a key an object repeats is appended to it and the first value is kept
    (plain ``json`` silently keeps the last), so a loader keyed by id can record the repeat.
    """
    if not path.is_file():
        raise DatasetFileMissing(path, dataset, published_at)
    hook = None
    if duplicates is not None:

        def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            kept: dict[str, Any] = {}
            for key, value in pairs:
                if key in kept:
                    duplicates.append(key)
                else:
                    kept[key] = value
            return kept

    try:
        with path.open("r", encoding="utf-8") as handle:
            data = json.load(handle, object_pairs_hook=hook)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{dataset}: {path} is not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{dataset}: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if expect is not None and not isinstance(data, expect):
        raise DatasetError(
            f"{dataset}: {path} should hold a JSON {_json_kind(expect)}, found a {_json_kind(type(data))}"
        )
    return data


def read_json_lines(path: Path, dataset: str, published_at: str) -> tuple[list[Any], list[ItemError]]:
    """Parse JSON Lines; a bad line becomes an ``ItemError`` naming the line number."""
    if not path.is_file():
        raise DatasetFileMissing(path, dataset, published_at)
    records: list[Any] = []
    errors: list[ItemError] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                records.append(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                errors.append(ItemError(f"{path.name}:{number}", "line", f"bad JSON: {exc}", str(path)))
    return records, errors


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(
        kind, kind.__name__
    )


def _import_loaders() -> None:
    import kb.loaders  # noqa: F401  (registers every loader)
