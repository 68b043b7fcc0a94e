"""A corpus of bad inputs for every dataset format the loaders read, and bad image files.

Each ``Case`` is a small dataset folder written from a well-formed base (one record per
format, real entity names from the demo KB) with one thing spoilt: a file that is empty,
malformed, cut short, not UTF-8 or of the wrong JSON type; a record with a field missing or
of the wrong type; an unknown, malformed or NIL gold; a duplicate id; an empty or
one-element candidate list; a caption that is huge or not valid Unicode; an image path
leaving the data folder. ``image_files`` writes every kind of awkward image. The tests in
``test_bad_inputs.py`` feed them through the loaders and the commands and check that each
gives a clear error naming the item (or file) or a correct result.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

GOLD, OTHER, THIRD = "Q11641", "Q8486", "Q146"
"""Grace Hopper, coffee, house cat: entities of the built-in demo KB."""
NAMES = {GOLD: "Grace Hopper", OTHER: "coffee", THIRD: "house cat"}
TEXTS = {
    GOLD: "American computer scientist and United States Navy rear admiral.",
    OTHER: "Brewed drink prepared from roasted coffee beans.",
    THIRD: "Small domesticated carnivorous mammal.",
}
SENTENCE = "Grace Hopper at her desk with a cup of coffee."
BAD_VALUES: dict[str, Any] = {
    "null": None,
    "int": 7,
    "float": 2.5,
    "bool": True,
    "empty-list": [],
    "object": {"a": 1},
    "mixed-list": ["x", 1],
    "empty-string": "",
}
LONG_CAPTION = "Grace Hopper " + "and a very long caption " * 4000
LONE_SURROGATE = "Grace Hopper \ud800 at her desk"


@dataclass
class Case:
    """One bad dataset folder: ``files`` maps a file name to JSON-able data or raw bytes."""

    kind: str
    dataset: str
    files: dict[str, Any]
    item: str | None = None  # the record id the spoilt part belongs to, when it is one record
    expect: dict[str, Any] = field(default_factory=dict)  # facts a correct result must show
    label: str = ""
    file: str | None = None  # the spoilt (or missing) file, when the spoilt part is a whole file
    aliases: tuple[str, ...] = ()  # other names that identify the record (its position, no usable id)

    def names_the_record(self, item: str) -> bool:
        """Whether an item error's ``item`` is this case's record, or a mention or candidate of it."""
        names = (self.item, *self.aliases) if self.item is not None else self.aliases
        return any(item == n or item.startswith((f"{n}-", f"{n}/")) for n in names)

    def write(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif name.endswith(".jsonl"):
                path.write_text("\n".join(json.dumps(r) for r in content) + "\n", encoding="utf-8")
            else:
                path.write_text(json.dumps(content), encoding="utf-8")
        return root


# ------------------------------------------------------------------------- the formats


def _entity(qid: str) -> dict[str, Any]:
    return {"Qid": qid, "name": NAMES[qid], "description": TEXTS[qid], "image": []}


@dataclass(frozen=True)
class Format:
    """A loader's layout: the record-holding file, the base record and the other files."""

    dataset: str
    records_file: str
    record: dict[str, Any]
    id_key: str | None
    item_of: Callable[[str], str]  # record id -> the item id errors and mentions use
    wrap: Callable[[list[dict[str, Any]]], Any]  # records -> the file's JSON
    other_files: Callable[[], dict[str, Any]]
    unnamed: tuple[str, ...] = ()  # what errors call the first record when it has no usable id


def _keyed(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {str(r.get("id", f"k{i}")) if isinstance(r, dict) else f"k{i}": r for i, r in enumerate(records)}


FORMATS = [
    Format(
        "wikimel",
        "Wikidata-MEL.json",
        {
            "id": "c1",
            "sentence": SENTENCE,
            "mentions": ["Grace Hopper"],
            "entities": ["Grace Hopper"],
            "answer": [GOLD],
        },
        "id",
        lambda rid: rid,
        _keyed,
        lambda: {
            "splits.json": {"test": ["c1", "c2"]},
            "qid2ne.json": NAMES,
            "qid2abs.json": TEXTS,
        },
        ("k0",),  # its key in the file (``_keyed``)
    ),
    Format(
        "richpedia-mel",
        "Richpedia-MEL.json",
        {
            "id": "c1",
            "sentence": SENTENCE,
            "mentions": "Grace Hopper",
            "entities": "Grace Hopper",
            "answer": GOLD,
        },
        "id",
        lambda rid: rid,
        _keyed,
        lambda: {
            "ghmfc_train.json": {},
            "ghmfc_test.json": {"c1": {}},
            "ghmfc_qid2ne.json": NAMES,
            "ghmfc_qid2abs.json": TEXTS,
        },
        ("k0",),
    ),
    Format(
        "wikidiverse",
        "kgmel_WikiDiverse.json",
        {
            "id": 1,
            "sentence": SENTENCE,
            "imgPath": "mention_1.jpg",
            "mention": ["Grace Hopper"],
            "entity": ["Grace Hopper"],
            "answer": [GOLD],
            "img-url": "http://x/y.jpg",
        },
        "id",
        lambda rid: rid,
        lambda records: records,
        lambda: {"kgmel_ids_split_mappings.json": {"WikiDiverse": {"test": [1, 2]}}},
        ("#0",),
    ),
    Format(
        "wikiperson",
        "WIKIPerson_Test.json",
        {"id": 1, "image": "1.jpg", "boundingbox": "[1, 2, 30, 40]", "wikiid": GOLD},
        "id",
        lambda rid: f"test-{rid}",
        lambda records: records,
        lambda: {"qid2ne.json": NAMES},
        ("test#0",),
    ),
    Format(
        "mimic",
        "WIKIMEL_test.json",
        {"id": "m1", "mentions": "Grace Hopper", "sentence": SENTENCE, "imgPath": "m1.png", "answer": GOLD},
        "id",
        lambda rid: f"test-{rid}",
        lambda records: records,
        lambda: {
            "kb_entity.json": [
                {
                    "id": q,
                    "type": "PER",
                    "entity_name": n.replace(" ", "%20"),
                    "attr": TEXTS[q],
                    "image_list": [],
                }
                for q, n in NAMES.items()
            ]
        },
        ("test#0", "test-0"),
    ),
    Format(
        "m3el",
        "M3EL_test.jsonl",
        {
            **_entity(GOLD),
            "sentence": SENTENCE,
            "mention": "Grace Hopper",
            "image": ["g.jpg", "", ""],
            "candidates": [_entity(GOLD), _entity(OTHER), _entity(THIRD)],
        },
        None,
        lambda rid: rid,
        lambda records: records,
        dict,
        ("M3EL_test-0",),
    ),
    Format(
        "zh",
        "test.jsonl",
        {
            "id": "z1",
            "sentence": "格蕾丝·霍普在办公桌前。",
            "mention": "格蕾丝·霍普",
            "answer": GOLD,
            "image": "z1.jpg",
            "span": [0, 6],
        },
        "id",
        lambda rid: rid,
        lambda records: records,
        lambda: {
            "entities.jsonl": [
                {"qid": q, "label": n, "description": TEXTS[q], "aliases": [n.lower()]}
                for q, n in NAMES.items()
            ]
        },
        ("test-0",),
    ),
]


def _files(fmt: Format, records: list[Any]) -> dict[str, Any]:
    return {fmt.records_file: fmt.wrap(records), **fmt.other_files()}


def _record_id(fmt: Format, record: dict[str, Any], position: int) -> str:
    if fmt.dataset == "m3el":
        return f"{Path(fmt.records_file).stem}-{position}"
    return str(record.get(fmt.id_key, "")) if fmt.id_key else str(position)


def _record_cases(fmt: Format) -> Iterator[Case]:
    """Every field of the base record missing, then set to every bad value; plus the
    format-independent spoilers of the gold, caption, image path, ids and candidates."""
    base = fmt.record
    rid = _record_id(fmt, base, 0)
    item = fmt.item_of(rid)
    gold_key = next(k for k in ("answer", "wikiid", "Qid") if k in base)

    def case(kind: str, record: Any, label: str, aliases: tuple[str, ...] = (), **expect: Any) -> Case:
        files = _files(fmt, [record])
        return Case(kind, fmt.dataset, files, item, expect, f"{fmt.dataset}:{label}", aliases=aliases)

    for key in base:
        if key == fmt.id_key and fmt.dataset in ("wikimel", "richpedia-mel"):
            continue  # these key records by the object key, not the id field
        # without a usable id the record is named by its position; a wrong-typed one that is
        # still an id (7) names it by that
        unnamed = (
            (*fmt.unnamed, *(fmt.item_of(str(v)) for v in BAD_VALUES.values())) if key == fmt.id_key else ()
        )
        spoilt = copy.deepcopy(base)
        del spoilt[key]
        yield case("missing_field", spoilt, f"missing {key}", unnamed)
        for name, value in BAD_VALUES.items():
            spoilt = copy.deepcopy(base)
            spoilt[key] = value
            yield case("mistyped_field", spoilt, f"{key}={name}", unnamed)
    for name, value in BAD_VALUES.items():
        if name not in ("object",):
            yield case("mistyped_field", value, f"record={name}", fmt.unnamed)
    as_list = isinstance(base[gold_key], list)

    def gold(value: str) -> dict[str, Any]:
        spoilt = copy.deepcopy(base)
        spoilt[gold_key] = [value] if as_list else value
        return spoilt

    yield case("unknown_qid", gold("Q999999999"), "unknown QID", gold="Q999999999")
    for value in ("Q0", "Q01", "q42", "banana", "Q12a", "P31"):
        yield case("bad_qid", gold(value), f"gold {value}")
    for value in ("nil", "NIL", "None"):
        yield case("nil_gold", gold(value), f"gold {value}", gold="NIL")
    sentence_key = "sentence" if "sentence" in base else None
    if sentence_key:
        long = copy.deepcopy(base)
        long[sentence_key] = LONG_CAPTION
        yield case("long_caption", long, "long caption", sentence=LONG_CAPTION)
        lone = copy.deepcopy(base)
        lone[sentence_key] = LONE_SURROGATE
        yield case("non_utf8_caption", lone, "lone surrogate in caption")
        raw = json.dumps(fmt.wrap([base]), ensure_ascii=False).replace("desk", "d\u00e9sk")
        yield Case(
            "non_utf8_caption",
            fmt.dataset,
            {**_files(fmt, [base]), fmt.records_file: raw.encode("latin-1", errors="replace")},
            None,
            {},
            f"{fmt.dataset}:latin-1 caption",
            fmt.records_file,
        )
    image_key = next((k for k in ("image", "imgPath") if k in base), None)
    if image_key:
        for path in ("../outside.jpg", "/etc/passwd", "sub/../../../x.jpg", "images/../../y.png"):
            spoilt = copy.deepcopy(base)
            spoilt[image_key] = [path, "", ""] if isinstance(base[image_key], list) else path
            yield case("path_outside", spoilt, f"image {path}")
    if fmt.id_key:
        twin = copy.deepcopy(base)
        twin[gold_key] = [OTHER] if as_list else OTHER
        records = [base, twin]
        files = _files(fmt, records)
        if fmt.wrap is _keyed:  # an object cannot hold one key twice in Python: write the text
            text = json.dumps({rid: base})[:-1] + ", " + json.dumps({rid: twin})[1:]
            files[fmt.records_file] = text.encode()
        yield Case("duplicate_id", fmt.dataset, files, item, {"unique": True}, f"{fmt.dataset}:duplicate id")
    if "candidates" in base:
        for name, candidates in (("empty", []), ("one", [_entity(GOLD)]), ("one-other", [_entity(OTHER)])):
            spoilt = copy.deepcopy(base)
            spoilt["candidates"] = candidates
            yield case(f"{'empty' if name == 'empty' else 'one'}_candidates", spoilt, f"{name} candidates")
    if fmt.dataset in ("wikimel", "wikidiverse"):
        mention_key = "mentions" if fmt.dataset == "wikimel" else "mention"
        spoilt = copy.deepcopy(base)
        spoilt[mention_key] = ["Grace Hopper", "coffee"]
        yield case("mismatched_lists", spoilt, "two mentions, one answer")


def _file_cases(fmt: Format) -> Iterator[Case]:
    """Every file of the format empty, malformed, cut short, not UTF-8 and of the wrong JSON type."""
    good = _files(fmt, [fmt.record])
    for name, content in good.items():
        text = (
            "\n".join(json.dumps(r) for r in content) + "\n"
            if name.endswith(".jsonl")
            else json.dumps(content)
        )
        spoilers = {
            "zero_byte_file": b"",
            "malformed_json": b'{"id": "c1", "sentence": [1, 2,,}',
            "truncated_json": text[: max(1, len(text) // 2)].encode(),
            "non_utf8_file": text.replace("Grace", "Gr\u00e2ce").encode("utf-16"),
            "wrong_top_level": b'"just a string"' if not name.endswith(".jsonl") else b"[1, 2]\n42\n",
        }
        for kind, data in spoilers.items():
            # An empty JSON Lines file is a valid file with no records.
            expect = {"mentions": 0} if kind == "zero_byte_file" and name == fmt.records_file else {}
            expect = expect if name.endswith(".jsonl") else {}
            label = f"{fmt.dataset}:{name} {kind}"
            yield Case(kind, fmt.dataset, {**good, name: data}, None, expect, label, name)
        if name != fmt.records_file:
            missing = dict(good)
            del missing[name]
            yield Case("missing_file", fmt.dataset, missing, None, {}, f"{fmt.dataset}:no {name}", name)


def _official_wikidiverse_cases() -> Iterator[Case]:
    """The official WikiDiverse release: rows are lists, so every position gets every bad value."""
    url = "https://en.wikipedia.org/wiki/Grace_Hopper"
    row = [
        SENTENCE,
        "https://upload.wikimedia.org/a/Grace.jpg",
        "news",
        [["Grace Hopper", "PER", 0, 12, url]],
    ]
    title2qid = {"Grace Hopper": GOLD}
    for position in range(4):
        for name, value in BAD_VALUES.items():
            spoilt = copy.deepcopy(row)
            spoilt[position] = value
            yield Case(
                "mistyped_field",
                "wikidiverse",
                {"test.json": [spoilt], "title2qid.json": title2qid},
                "test-0",
                {"mentions": 0} if (position, name) == (3, "empty-list") else {},  # a caption naming nobody
                f"official:row[{position}]={name}",
            )
    for name, value in BAD_VALUES.items():
        for index in range(5):
            spoilt = copy.deepcopy(row)
            spoilt[3][0][index] = value
            yield Case(
                "mistyped_field",
                "wikidiverse",
                {"test.json": [spoilt], "title2qid.json": title2qid},
                "test-0",
                {},
                f"official:span[{index}]={name}",
            )
    candidate_row = [SENTENCE, "", "Grace Hopper", "PER", "", "", url, None, "news", 0, 12]
    for name, value in {**BAD_VALUES, "titles": ["Grace Hopper", "Nobody"]}.items():
        spoilt = list(candidate_row)
        spoilt[7] = value
        yield Case(
            "one_candidates" if name == "mixed-list" else "mistyped_field",
            "wikidiverse",
            {"test.json": [spoilt], "title2qid.json": {"Grace Hopper": GOLD, "Nobody": "not-a-qid"}},
            "test-0",
            {},
            f"official:cands={name}",
        )
    for name, value in BAD_VALUES.items():
        yield Case(
            "mistyped_field",
            "wikidiverse",
            {"test.json": [row], "title2qid.json": {"Grace Hopper": value}},
            "test-0-0",
            {},
            f"official:title2qid={name}",
        )


def dataset_cases() -> list[Case]:
    """Every bad dataset folder of the corpus."""
    cases: list[Case] = []
    for fmt in FORMATS:
        cases += list(_record_cases(fmt)) + list(_file_cases(fmt))
    cases += list(_official_wikidiverse_cases())
    cases += [
        Case(
            "mistyped_field",
            "wikiperson",
            {"WIKIPerson_Test.json": [{**FORMATS[3].record, "boundingbox": b}]},
            "test-1",
            {},
            f"wikiperson:bbox {b}",
        )
        for b in (
            "[1, 2, Infinity, 4]",
            "[NaN, 1, 2, 3]",
            "[5, 5, 1, 1]",
            "[1, 2, 3]",
            "1,2,3,4",
            "[1e400, 0, 1, 1]",
        )
    ]
    return cases


# ------------------------------------------------------------------------------ images


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but which holds one tiny data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def image_files(photo: Image.Image) -> dict[str, tuple[str, bytes, bool]]:
    """Kind -> (file name, bytes, decodable): every awkward image a scraped dataset holds.

    ``photo`` is a real photograph, kept small so attacks on it stay quick.
    """
    import io

    def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kwargs)
        return buffer.getvalue()

    jpeg = encode(photo, "JPEG", quality=90)
    png = encode(photo, "PNG")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6
    deep = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    corrupt = bytearray(jpeg)
    corrupt[len(corrupt) // 3 : len(corrupt) // 3 + 400] = b"\x00" * 400
    return {
        "ok_jpeg": ("ok.jpg", jpeg, True),
        "grayscale": ("gray.jpg", encode(photo.convert("L"), "JPEG"), True),
        "cmyk": ("cmyk.jpg", encode(photo.convert("CMYK"), "JPEG"), True),
        "palette": ("palette.png", encode(palette, "PNG"), True),
        "palette_transparent": ("palette-t.png", encode(palette, "PNG", transparency=0), True),
        "alpha": ("alpha.png", encode(photo.convert("RGBA"), "PNG"), True),
        "gray_alpha": ("la.png", encode(photo.convert("LA"), "PNG"), True),
        "sixteen_bit": ("deep.png", encode(Image.fromarray(deep), "PNG"), True),
        "exif_rotated": ("rotated.jpg", encode(photo, "JPEG", exif=exif.tobytes()), True),
        "wrong_extension": ("really-png.jpg", png, True),
        "gif": ("anim.gif", encode(photo.convert("P"), "GIF"), True),
        "zero_byte": ("empty.jpg", b"", False),
        "truncated_jpeg": ("cut.jpg", jpeg[: len(jpeg) // 2], False),
        "truncated_png": ("cut.png", png[: len(png) // 2], False),
        "corrupt_jpeg_header": ("bad-header.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 300, False),
        "corrupt_png_crc": ("bad-crc.png", png[:30] + b"\x00\x00" + png[32:], False),
        "not_an_image": ("text.jpg", b"<html>404 Not Found</html>", False),
        "huge_dimensions": ("huge.png", _png_header_only(60_000, 60_000), False),
        "huge_one_side": ("tall.png", _png_header_only(1, 100_000_000), False),
        "corrupt_jpeg_body": ("garbled.jpg", bytes(corrupt), None),  # decoders may conceal the damage
    }
