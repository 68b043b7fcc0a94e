"""Issue 7's bad-input corpus through the loaders, the image reader and every command.

Hundreds of spoilt dataset folders (``bad_inputs.dataset_cases``) go through the loaders; every
awkward image kind goes through ``kb.images.load_rgb``; then one M3EL-format dataset holding
every image kind and the record-level spoilers a loader lets through (NIL and unknown golds,
empty and one-element candidate lists, a huge caption) runs through ``kb.build``,
``eval.run`` (pre-ranker and agent), ``attacks.generate`` and ``agent.link``, with the real
models and stores. Each input must give a clear error naming the item (or file) and what was
wrong, or a correct result; nothing may raise. ``pytest -s`` prints how many inputs of each
kind were tried.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bad_inputs import (
    BAD_VALUES,
    GOLD,
    LONG_CAPTION,
    NAMES,
    OTHER,
    SENTENCE,
    TEXTS,
    THIRD,
    Case,
    dataset_cases,
    image_files,
)
from PIL import Image
from support import closed_port

from kb.dataset import Dataset, load_dataset
from kb.errors import DatasetError, ImageError
from kb.images import load_rgb
from kb.records import NIL, QID_PATTERN

STRINGIFIED = {str(v) for v in BAD_VALUES.values() if not isinstance(v, str)}
"""What a loader that calls ``str()`` on a wrong-typed field would produce ("7", "None", ...)."""


def _problems_of_loaded(case: Case, dataset: Dataset, root: Path) -> list[str]:
    """What is wrong with a dataset a loader returned for ``case`` (empty: a correct result)."""
    problems = []
    for error in dataset.errors:
        if not (error.item and error.field and error.reason):
            problems.append(f"an item error without item, field or reason: {error}")
    for mention in dataset.mentions:
        texts = (mention.id, mention.sentence, mention.mention, mention.split)
        integer_id = mention.id.rsplit("-", 1)[-1] == "7"  # an integer id is a valid id
        stringified = [t for t in texts if t in STRINGIFIED and not (t is mention.id and integer_id)]
        if not all(isinstance(t, str) for t in texts) or stringified:
            problems.append(f"mention {mention.id!r}: a wrong-typed field became text: {texts}")
        if not (mention.gold == NIL or QID_PATTERN.match(mention.gold)):
            problems.append(f"mention {mention.id!r}: gold {mention.gold!r}")
        if mention.image_path is not None and not mention.image_path.absolute().is_relative_to(root):
            problems.append(f"mention {mention.id!r}: image {mention.image_path} outside {root}")
        if mention.span is not None:
            start, end = mention.span
            if not (
                isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(mention.sentence)
            ):
                problems.append(f"mention {mention.id!r}: span {mention.span}")
        if not all(QID_PATTERN.match(q) for q in mention.candidates):
            problems.append(f"mention {mention.id!r}: candidates {mention.candidates}")
    for qid, entity in dataset.entities.items():
        if not QID_PATTERN.match(qid) or entity.label in STRINGIFIED or entity.description in STRINGIFIED:
            problems.append(f"entity {qid!r}: {entity}")
    ids = [m.id for m in dataset.mentions]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate mention ids {ids}")
    if not dataset.mentions and not dataset.errors and case.expect.get("mentions") != 0:
        problems.append("the input vanished: no mention and no recorded error")
    if "gold" in case.expect and not any(m.gold == case.expect["gold"] for m in dataset.mentions):
        problems.append(f"expected gold {case.expect['gold']}, got {[m.gold for m in dataset.mentions]}")
    if "sentence" in case.expect and not any(m.sentence == case.expect["sentence"] for m in dataset.mentions):
        problems.append("the long caption was not kept whole")
    if case.kind == "duplicate_id":
        duplicates = [e for e in dataset.errors if "duplicate" in e.reason]
        if not duplicates or len(dataset.mentions) != 1 or dataset.mentions[0].gold != GOLD:
            problems.append(f"duplicate ids: first record not kept alone, or not recorded: {dataset.errors}")
    if case.kind == "path_outside" and not any(e.field == "image" for e in dataset.errors):
        problems.append(f"path leaving the folder not recorded: {[m.image_path for m in dataset.mentions]}")
    return problems


def test_every_bad_dataset_folder_gives_a_clear_error_or_a_correct_result(tmp_path: Path) -> None:
    cases = dataset_cases()
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    _print_counts("loader corpus, folders per kind", Counter(case.kind for case in cases))
    for number, case in enumerate(cases):
        assert case.item is not None or case.aliases or case.file, (
            f"{case.label}: spoils neither a record nor a file"
        )
        root = case.write(tmp_path / f"{number:04d}").absolute()
        try:
            dataset = load_dataset(case.dataset, root)
        except DatasetError as exc:
            message = str(exc)
            outcomes["dataset error"] += 1
            if case.item is not None or case.aliases:  # one bad record never fails its dataset
                failures.append(f"{case.label}: a bad record failed the whole load: {message}")
            elif case.file is not None and case.file not in message:
                failures.append(f"{case.label}: the error does not name {case.file}: {message}")
            continue
        except Exception:  # noqa: BLE001 - any other exception is the bug this test looks for
            failures.append(f"{case.label}: unhandled\n{traceback.format_exc(limit=3)}")
            continue
        outcomes["item errors" if dataset.errors else "clean result"] += 1
        failures += [f"{case.label}: {p}" for p in _problems_of_loaded(case, dataset, root)]
        if case.item is not None or case.aliases:  # each item error names the spoilt record
            strangers = [e for e in dataset.errors if not case.names_the_record(e.item)]
        else:  # or the spoilt file
            strangers = [e for e in dataset.errors if case.file not in e.item and case.file not in e.source]
        if strangers:
            failures.append(f"{case.label}: item errors naming neither the record nor the file: {strangers}")
    print(f"\nloader corpus: {len(cases)} folders -> {dict(outcomes)}")
    assert not failures, "\n".join(failures[:20])
    assert len(cases) >= 200


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph (scikit-image's coffee cup), small so attacks and OCR stay quick."""
    from kb.loaders.demo import package_file

    return Image.open(package_file("skimage", "data/coffee.png")).convert("RGB").resize((64, 48))


def test_every_image_kind_loads_faithfully_or_fails_with_a_reason(tmp_path: Path, photo: Image.Image) -> None:
    kinds = image_files(photo)
    assert len(kinds) == 20, sorted(kinds)
    for kind, (name, data, decodable) in kinds.items():
        path = tmp_path / name
        path.write_bytes(data)
        try:
            image = load_rgb(path)
        except ImageError as exc:
            assert decodable is not True, f"{kind}: {exc}"
            assert exc.reason in ("empty", "truncated", "corrupt", "not_an_image", "too_large")
            assert str(path) in str(exc)
            continue
        assert decodable is not False, f"{kind} decoded but should not"
        assert image.mode == "RGB"
        expected = (48, 64) if kind == "exif_rotated" else (64, 48)
        assert image.size == expected, kind


# ------------------------------------------------------------------ the commands, end to end


FAST = {"presets": {"pgd-tiny": {"method": "pgd", "steps": 1, "eps": 8 / 255, "alpha": 8 / 255}}}


def _candidate(qid: str) -> dict[str, Any]:
    return {"Qid": qid, "name": NAMES[qid], "description": TEXTS[qid], "image": []}


def _m3el_records(photo: Image.Image, images: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One record per image kind, then the record-level spoilers; -> (records, id -> kind)."""
    images.mkdir(parents=True)
    base = {
        **_candidate(GOLD),
        "sentence": SENTENCE,
        "mention": "Grace Hopper",
        "candidates": [_candidate(q) for q in (GOLD, OTHER, THIRD)],
    }
    records, kinds = [], {}
    for kind, (name, data, _) in image_files(photo).items():  # the huge ones are header-only PNGs
        (images / name).write_bytes(data)
        kinds[f"M3EL_test-{len(records)}"] = f"image:{kind}"
        records.append({**base, "image": [name, "", ""]})
    spoilers = {
        "missing_image": {"image": ["absent.jpg", "", ""]},
        "no_image": {"image": []},
        "path_outside": {"image": ["../../etc/passwd", "", ""]},
        "nil_gold": {"Qid": "nil"},
        "unknown_qid": {"Qid": "Q999999999"},
        "empty_candidates": {"candidates": []},
        "one_candidate": {"candidates": [_candidate(GOLD)]},
        "one_wrong_candidate": {"candidates": [_candidate(OTHER)]},
        "long_caption": {"sentence": LONG_CAPTION},
        "empty_caption": {"sentence": "", "mention": ""},
        "non_ascii_caption": {"sentence": "Grace Hopper à son bureau, 咖啡 ☕ et \u200b espaces"},
        "mistyped_sentence": {"sentence": ["not", "text"]},
        "bad_candidate": {"candidates": [_candidate(GOLD), {"Qid": 42}, "Q5"]},
    }
    for kind, change in spoilers.items():
        kinds[f"M3EL_test-{len(records)}"] = kind
        records.append({**base, "image": ["ok.jpg", "", ""], **change})
    return records, kinds


@pytest.fixture(scope="module")
def corpus_env(tmp_path_factory: pytest.TempPathFactory, photo: Image.Image) -> dict[str, Any]:
    """The M3EL-format corpus dataset, a private cache and an LLM address that refuses."""
    root = tmp_path_factory.mktemp("bad-corpus")
    data = root / "m3el"
    records, kinds = _m3el_records(photo, data / "images")
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + ["{cut mid-record", '"a string"']
    (data / "M3EL_test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "fast.json").write_text(json.dumps(FAST))
    (root / "cache").mkdir()
    port = closed_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEL_CACHE_DIR", str(root / "cache"))
        patch.setenv("MEL_LLM_BASE_URL", f"http://127.0.0.1:{port}/v1")
        patch.setenv("MEL_LLM_MODEL", "none")
        patch.setenv("MEL_LLM_RETRIES", "0")
        patch.setenv("MEL_WIKI_MODE", "offline")
        yield {"root": root, "data": data, "kinds": kinds, "records": len(records)}


def test_loading_the_corpus_dataset(corpus_env: dict) -> None:
    dataset = load_dataset("m3el", corpus_env["data"])
    kinds = corpus_env["kinds"]
    ids = {m.id for m in dataset.mentions}
    errors = {e.item: e for e in dataset.errors}
    for item, kind in kinds.items():
        assert item in ids or item in errors, f"{kind} ({item}) vanished"
    assert errors["M3EL_test-" + _id_of(kinds, "path_outside")].field == "image"
    assert errors["M3EL_test-" + _id_of(kinds, "mistyped_sentence")].field == "sentence"
    bad_line = [e for e in dataset.errors if e.field == "line"]
    assert len(bad_line) == 1 and "bad JSON" in bad_line[0].reason
    assert any(e.field == "record" for e in dataset.errors)  # the line holding a bare string
    assert any(e.field == "candidates" for e in dataset.errors)  # Qid 42 and the bare "Q5"


def _id_of(kinds: dict[str, str], kind: str) -> str:
    return next(item for item, k in kinds.items() if k == kind).rsplit("-", 1)[1]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _check_items(records: list[dict[str, Any]], kinds: dict[str, str], stage: str) -> int:
    """Every item line is a result or an error naming why; bad images are errors, odd ones
    results. Returns how many corpus items it checked."""
    by_id = {r["id"]: r for r in records}
    checked = 0
    for item, kind in kinds.items():
        record = by_id.get(item)
        if record is None:
            continue  # dropped while loading, with an item error (checked above)
        checked += 1
        if record["error"]:
            assert isinstance(record["error"], str) and record["error"], (stage, kind, record)
        else:
            assert record["prediction"] in record["candidates"] or record["candidates"] == [], (stage, kind)
        decodable = image_files_decodable(kind) if kind.startswith("image:") else None
        if decodable is False:
            assert record["error"] and record["error"].startswith("image_"), (stage, kind, record)
        elif decodable is True or kind in ("non_ascii_caption", "long_caption", "one_candidate"):
            assert not record["error"], (stage, kind, record["error"])
    return checked


def image_files_decodable(kind: str) -> bool | None:
    sample = Image.new("RGB", (4, 4))
    return image_files(sample)[kind.split(":", 1)[1]][2]


@pytest.mark.slow
def test_corpus_through_kb_build_eval_run_attacks_and_the_agent(corpus_env: dict, capsys) -> None:
    from agent.link import main as link_main
    from attacks.generate import GenerateConfig
    from attacks.generate import run as generate
    from eval.run import RunConfig, run
    from kb.build import main as build_main

    data, kinds, root = corpus_env["data"], corpus_env["kinds"], corpus_env["root"]
    loaded = {m.id for m in load_dataset("m3el", data).mentions} & set(kinds)
    tried: Counter[str] = Counter()
    assert build_main(["--dataset", "m3el", "--data-dir", str(data)]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["entities"] == 4 and not built["reused"]  # the three candidates and the unknown QID
    tried["kb.build"] = corpus_env["records"]

    common = dict(dataset="m3el", data_dir=str(data), split="all", task="it2t")
    prerank = run(RunConfig(**common), root / "prerank", progress=False)
    tried["eval.run prerank"] = _check_items(_lines(Path(prerank["items"])), kinds, "eval.run prerank")
    assert prerank["n"] + prerank["n_skipped"] == prerank["n_mentions"]
    assert prerank["skipped"].get("no_image") and prerank["skipped"].get("image_missing")

    agent = run(RunConfig(**common, pipeline="agent"), root / "agent", progress=False)
    agent_lines = _lines(Path(agent["items"]))
    tried["eval.run agent"] = _check_items(agent_lines, kinds, "eval.run agent")
    assert agent["skipped"] == prerank["skipped"]  # the same items are scored by both pipelines
    assert agent["fallbacks"]["judge"] == agent["n"] and agent["fallbacks"]["writer"] > 0

    summaries = generate(
        GenerateConfig(
            dataset="m3el", data_dir=str(data), attack="pgd-tiny", preset_file=str(root / "fast.json")
        ),
        root / "adv",
        progress=False,
    )
    manifest = _lines(Path(summaries["pgd-tiny"]["folder"]) / "manifest.jsonl")
    for record in manifest:
        kind = kinds[record["id"]]
        tried["attacks.generate"] += 1
        if kind.startswith("image:") and image_files_decodable(kind) is False:
            assert record["error"].startswith("image_"), (kind, record)
        if kind in ("nil_gold", "unknown_qid", "one_wrong_candidate"):
            assert record["error"] == "no_gold_in_candidates", (kind, record)
    assert {r["id"] for r in manifest} <= set(kinds)

    capsys.readouterr()
    argv = ["--dataset", "m3el", "--data-dir", str(data), "--split", "all"]
    assert link_main([*argv, "--checkpoint-db", str(root / "link.sqlite")]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    for record in printed:
        tried["agent.link"] += 1
        assert record.get("error") or record["decision"], record
        if "decision" in record:
            assert record["fallbacks"], "the LLM refuses connections: every decision falls back"
    assert len(printed) == len([m for m in load_dataset("m3el", data).mentions if m.image_path is not None])
    _print_counts("corpus items through each command", tried)
    assert tried["eval.run prerank"] == tried["eval.run agent"] == len(loaded), "every loaded item has a line"


def _print_counts(title: str, counts: Counter[str]) -> None:
    """``pytest -s`` shows how many inputs of each kind a test tried."""
    width = max(map(len, counts), default=5)
    print(f"\n{title}:")
    for kind, count in sorted(counts.items()):
        print(f"  {kind:<{width}}  {count}")
    print(f"  {'total':<{width}}  {sum(counts.values())}")


def test_the_corpus_is_several_hundred_inputs(photo: Image.Image, tmp_path: Path) -> None:
    """The README's "several hundred such inputs", counted from the corpus itself (no test's state):
    the spoilt folders, the image kinds, and the corpus dataset's records and lines (each through
    every command in the slow test)."""
    records, _ = _m3el_records(photo, tmp_path / "images")
    counts = Counter({"dataset folders": len(dataset_cases()), "image kinds": len(image_files(photo))})
    counts["corpus records x 5 commands"] = (len(records) + 2) * 5
    _print_counts("bad inputs, per kind", counts)
    assert counts["dataset folders"] >= 600 and counts["image kinds"] == 20 and sum(counts.values()) >= 700
