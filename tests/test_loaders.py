"""Every dataset loader on real files: ../shared as published, and the formats that are not
in ../shared (MIMIC, M3EL, official WikiDiverse, Chinese JSONL) written from real records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kb.dataset import load_dataset
from kb.errors import DatasetError, DatasetFileMissing
from kb.images import load_rgb
from kb.loaders.wikidiverse import official_image_name


@pytest.fixture(scope="module")
def wikimel(shared_mel: Path):
    return load_dataset("wikimel", shared_mel / "wikimel")


def test_wikimel_counts(wikimel) -> None:
    stats = wikimel.statistics()
    assert (stats["captions"], stats["mentions"], stats["entities"]) == (22_136, 25_846, 18_880)
    assert stats["images_present"] == 26
    assert stats["splits_declared"] == {"train": 17_091, "dev": 2_443, "test": 4_883}
    assert stats["nil"] == 0 and stats["load_errors"] == 0


def test_wikimel_records_are_faithful(wikimel) -> None:
    mention = wikimel.mention("46351-1")
    assert (mention.mention, mention.gold, mention.split) == (
        "Powers",
        "Q256474",
        wikimel.mention("46351-0").split,
    )
    assert mention.sentence[mention.span[0] : mention.span[1]] == "Powers"
    assert wikimel.entities["Q256474"].label == "Stefanie Powers"
    assert wikimel.entities["Q1000070"].description.startswith("Sex: male. Birth: 1900, Erie.")


def test_wikimel_images_on_disk_decode(wikimel) -> None:
    present = [m for m in wikimel.mentions if m.image_path and m.image_path.is_file()]
    assert len({m.image_path for m in present}) == 26
    assert all(load_rgb(m.image_path).mode == "RGB" for m in present[:5])


def test_richpedia_counts(shared_mel: Path) -> None:
    stats = load_dataset("richpedia-mel", shared_mel / "richpedia-mel").statistics()
    assert stats["mentions"] == 17_805 and stats["entities"] == 17_805
    assert stats["splits"] == {"test": 3_561, "train": 14_244}


def test_wikidiverse_repack_counts(shared_mel: Path) -> None:
    dataset = load_dataset("wikidiverse", shared_mel / "wikidiverse")
    stats = dataset.statistics()
    assert (stats["captions"], stats["mentions"]) == (7_405, 14_851)
    assert stats["splits_declared"] == {"train": 5_570, "dev": 803, "test": 1_058}
    first = dataset.mention("0-1")
    assert (first.mention, first.gold) == ("parliament", "Q11010")
    assert dataset.entities["Q11010"].label == "Parliament of the United Kingdom"
    blank = json.loads((shared_mel / "wikidiverse" / "kgmel_ids_blank_image.json").read_text())["WikiDiverse"]
    assert dataset.mention(f"{blank[0]}-0").image_path is None


def test_wikiperson_counts_and_boxes(shared_mel: Path) -> None:
    dataset = load_dataset("wikiperson", shared_mel / "wikiperson")
    assert len(dataset.mentions) == 6_142
    first = dataset.mentions[0]
    assert first.bbox == pytest.approx((55.471256, 15.353726, 73.55515, 42.034576))
    assert first.gold == "Q259082" and first.image_path.name == "462710.jpg"


def test_demo_runs_from_installed_packages() -> None:
    dataset = load_dataset("demo")
    assert len(dataset.mentions) == 8 and all(m.gold in dataset.entities for m in dataset.mentions)
    sizes = {m.id: load_rgb(m.image_path).size for m in dataset.mentions}
    assert sizes["hopper-0"] == (512, 600)


def test_demo_qids_checked_against_shared_kb(shared_mel: Path) -> None:
    from kb.loaders.demo import DEMO_ENTITIES

    for qid, label, _description, source in DEMO_ENTITIES:
        if source != "Wikidata":
            assert json.loads((shared_mel / source).read_text())[qid] == label


def _wikimel_records(shared_mel: Path, n: int) -> list[dict]:
    annotations = json.loads((shared_mel / "wikimel" / "Wikidata-MEL.json").read_text())
    return [annotations[k] for k in list(annotations)[:n]]


def test_mimic_format(shared_mel: Path, tmp_path: Path) -> None:
    records = _wikimel_records(shared_mel, 30)
    names = json.loads((shared_mel / "wikimel" / "qid2ne.json").read_text())
    abstracts = json.loads((shared_mel / "wikimel" / "qid2abs.json").read_text())
    mentions = [
        {
            "id": f"{r['id']}-{i}",
            "mentions": m,
            "sentence": r["sentence"],
            "imgPath": f"{r['id']}.png",
            "answer": a,
        }
        for r in records
        for i, (m, a) in enumerate(zip(r["mentions"], r["answer"], strict=True))
    ]
    mentions.append(
        {"id": "nil-0", "mentions": "Nobody", "sentence": "Nobody here.", "imgPath": "", "answer": "nil"}
    )
    (tmp_path / "WIKIMEL_test.json").write_text(json.dumps(mentions))
    kb = [
        {
            "id": q,
            "type": "entity",
            "entity_name": names[q].replace(" ", "%20"),
            "attr": abstracts[q],
            "image_list": [],
        }
        for q in {m["answer"] for m in mentions if m["answer"] != "nil"}
    ]
    (tmp_path / "kb_entity.json").write_text(json.dumps(kb))
    dataset = load_dataset("mimic", tmp_path)
    assert len(dataset.mentions) == len(mentions)
    assert dataset.statistics()["nil"] == 1
    first = dataset.mentions[0]
    assert first.image_path == tmp_path / "mention_image" / f"{records[0]['id']}.jpg"  # MIMIC stores JPEGs
    assert dataset.entities[first.gold].label == names[first.gold]  # URL-quoting undone


def test_m3el_format_uses_its_own_candidates(shared_mel: Path, tmp_path: Path) -> None:
    richpedia = json.loads((shared_mel / "richpedia-mel" / "ghmfc_test.json").read_text())
    abstracts = json.loads((shared_mel / "richpedia-mel" / "ghmfc_qid2abs.json").read_text())
    rows = list(richpedia.values())[:12]

    def entity(row: dict) -> dict:
        return {
            "Qid": row["answer"],
            "name": row["entities"],
            "description": abstracts[row["answer"]],
            "image": [],
        }

    records = [
        {
            **entity(row),
            "sentence": row["sentence"],
            "image": [f"{row['id']}.jpg", "", ""],
            "candidates": [entity(r) for r in rows[:4]] + [entity(row)],
        }
        for row in rows
    ]
    (tmp_path / "M3EL_test.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    dataset = load_dataset("m3el", tmp_path)
    assert len(dataset.mentions) == 12 and dataset.mentions[0].split == "test"
    assert all(m.gold in m.candidates for m in dataset.mentions)
    assert dataset.mentions[0].mention == ""  # never the gold name
    assert [e.reason for e in dataset.errors] == [dataset.errors[0].reason] and "bad JSON" in dataset.errors[
        0
    ].reason


def test_official_wikidiverse_format(shared_mel: Path, tmp_path: Path) -> None:
    repack = json.loads((shared_mel / "wikidiverse" / "kgmel_WikiDiverse.json").read_text())[:20]
    rows, title2qid = [], {}
    for record in repack:
        spans = []
        for surface, title, qid in zip(record["mention"], record["entity"], record["answer"], strict=True):
            start = record["sentence"].find(surface)
            spans.append(
                [
                    surface,
                    "ORG",
                    start,
                    start + len(surface),
                    "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"),
                ]
            )
            title2qid[title] = qid
        rows.append([record["sentence"], record["img-url"], "news", spans])
    (tmp_path / "test.json").write_text(json.dumps(rows))
    (tmp_path / "title2qid.json").write_text(json.dumps(title2qid))
    dataset = load_dataset("wikidiverse", tmp_path)
    assert len(dataset.mentions) == sum(len(r["mention"]) for r in repack)
    assert dataset.mentions[0].gold == repack[0]["answer"][0]
    assert dataset.mentions[0].image_path.name == official_image_name(repack[0]["img-url"])
    (tmp_path / "title2qid.json").write_text("{}")
    unmapped = load_dataset("wikidiverse", tmp_path)
    assert not unmapped.mentions and unmapped.errors[0].field == "wiki_url"


def test_chinese_jsonl_format(shared_mel: Path, tmp_path: Path) -> None:
    lines = (shared_mel / "coco-cn" / "coco-cn_ext.icap2020.txt").read_text(encoding="utf-8").splitlines()
    captions = [line.split("\t", 1)[1] for line in lines if "狗" in line][:5]
    (tmp_path / "test.jsonl").write_text(
        "\n".join(
            json.dumps(
                {"id": f"zh-{i}", "sentence": c, "mention": "狗", "answer": "Q144"}, ensure_ascii=False
            )
            for i, c in enumerate(captions)
        ),
        encoding="utf-8",
    )
    (tmp_path / "entities.jsonl").write_text(
        json.dumps({"qid": "Q144", "label": "狗", "description": "家养的犬科动物"}, ensure_ascii=False),
        encoding="utf-8",
    )
    dataset = load_dataset("zh", tmp_path)
    assert len(dataset.mentions) == 5 and {m.language for m in dataset.mentions} == {"zh"}
    assert all(m.sentence[m.span[0] : m.span[1]] == "狗" for m in dataset.mentions)


def test_missing_file_names_file_and_origin(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileMissing) as error:
        load_dataset("wikimel", tmp_path)
    assert "Wikidata-MEL.json" in str(error.value) and "MELBench" in str(error.value)


def test_missing_folder_and_bad_json_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("wikimel", tmp_path / "absent")
    (tmp_path / "Wikidata-MEL.json").write_text("[1, 2")
    with pytest.raises(DatasetError, match=r"Wikidata-MEL.json is not valid JSON \(line 1"):
        load_dataset("wikimel", tmp_path)
    (tmp_path / "Wikidata-MEL.json").write_text("[]")
    with pytest.raises(DatasetError, match="should hold a JSON object, found a array"):
        load_dataset("wikimel", tmp_path)


def test_bad_records_become_item_errors(shared_mel: Path, tmp_path: Path) -> None:
    for name in ("splits.json", "qid2ne.json", "qid2abs.json"):
        (tmp_path / name).write_text((shared_mel / "wikimel" / name).read_text())
    annotations = {
        "1": {
            "id": "1",
            "sentence": "Ok caption with Powers.",
            "mentions": ["Powers"],
            "entities": ["x"],
            "answer": ["Q256474"],
        },
        "2": {"id": "2", "sentence": 5, "mentions": ["x"], "answer": ["Q1"]},
        "3": {"id": "3", "sentence": "Mismatched.", "mentions": ["a", "b"], "answer": ["Q1"]},
        "4": {"id": "4", "sentence": "Bad QID.", "mentions": ["Bad"], "answer": ["not-a-qid"]},
        "5": {"id": "5", "sentence": "Nil gold.", "mentions": ["Nil"], "answer": ["nil"]},
        "6": "not an object",
    }
    (tmp_path / "Wikidata-MEL.json").write_text(json.dumps(annotations))
    dataset = load_dataset("wikimel", tmp_path)
    assert [m.id for m in dataset.mentions] == ["1-0", "5-0"] and dataset.mentions[1].is_nil
    assert sorted(e.item for e in dataset.errors) == ["2", "3", "4-0", "6"]


def test_inspect_cli_prints_one_json_object(shared_mel: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kb.inspect",
            "--dataset",
            "wikidiverse",
            "--data-dir",
            str(shared_mel / "wikidiverse"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stats = json.loads(out)
    assert {"captions", "mentions", "entities", "images_present", "nil", "splits"} <= set(stats)
    assert (stats["captions"], stats["mentions"]) == (7_405, 14_851)
