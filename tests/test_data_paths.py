"""Where a dataset is read from, and which pixels of a boxed WikiPerson photo are scored.

Folders are small copies of the real WIKIPerson release in ``../shared`` (its first records),
so the mention count tells which copy was read. The crop test runs ``eval.run`` as users do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from support import private_cache

from kb.dataset import load_dataset, resolve_data_dir
from kb.errors import DatasetError

RELEASE = "WIKIPerson_Test.json"


def _copy(shared_mel: Path, folder: Path, records: int) -> Path:
    """A WikiPerson folder holding the first ``records`` records of the real release."""
    folder.mkdir(parents=True)
    release = json.loads((shared_mel / "wikiperson" / RELEASE).read_text())
    (folder / RELEASE).write_text(json.dumps(release[:records]))
    return folder


def test_flag_beats_dataset_variable_beats_data_root(
    shared_mel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--data-dir`` > ``MEL_WIKIPERSON_DIR`` > ``MEL_DATA_ROOT/wikiperson`` > ``../shared``."""
    root_copy = _copy(shared_mel, tmp_path / "root" / "wikiperson", 2)
    own_copy = _copy(shared_mel, tmp_path / "own", 3)
    flag_copy = _copy(shared_mel, tmp_path / "flag", 4)
    monkeypatch.delenv("MEL_WIKIPERSON_DIR", raising=False)
    monkeypatch.delenv("MEL_DATA_ROOT", raising=False)
    assert len(load_dataset("wikiperson").mentions) == 6_142, "../shared by default"
    monkeypatch.setenv("MEL_DATA_ROOT", str(tmp_path / "root"))
    assert resolve_data_dir("wikiperson") == root_copy.resolve()
    assert len(load_dataset("wikiperson").mentions) == 2
    monkeypatch.setenv("MEL_WIKIPERSON_DIR", str(own_copy))
    assert len(load_dataset("wikiperson").mentions) == 3, "the dataset's own variable wins"
    assert len(load_dataset("wikiperson", flag_copy).mentions) == 4, "--data-dir wins"
    monkeypatch.setenv("MEL_WIKIPERSON_DIR", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="MEL_WIKIPERSON_DIR"):
        load_dataset("wikiperson")


def _boxed_folder(folder: Path, photos: list[Path], boxes: list[list[int]]) -> Path:
    """A WikiPerson folder: one record per photo (saved as PNG), each with its box and gold."""
    (folder / "images").mkdir(parents=True)
    records = []
    for i, (photo, box) in enumerate(zip(photos, boxes, strict=True)):
        photo.save(folder / "images" / f"{i}.png")
        records.append({"id": i, "image": f"{i}.png", "boundingbox": json.dumps(box), "wikiid": f"Q{i + 1}"})
    (folder / RELEASE).write_text(json.dumps(records))
    labels = {"Q1": "Grace Hopper", "Q2": "rocket", "Q3": "cup of coffee"}
    (folder / "qid2ne.json").write_text(json.dumps(labels))
    return folder


def test_a_wikiperson_mention_is_scored_on_its_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``eval.run`` on boxed photos gives the scores of the same run on the crops saved as their own
    files (box = the whole crop), and not those of the uncropped photos."""
    from eval.run import RunConfig, run

    monkeypatch.setenv("MEL_CACHE_DIR", str(private_cache(tmp_path / "cache", ("kb",))))
    demo = load_dataset("demo")
    photos = [
        Image.open(demo.mention(m).image_path).convert("RGB") for m in ("hopper-0", "rocket-0", "coffee-0")
    ]
    boxes = [[p.width // 5, p.height // 6, p.width * 3 // 4, p.height * 5 // 6] for p in photos]
    crops = [p.crop(tuple(b)) for p, b in zip(photos, boxes, strict=True)]
    whole = [[0, 0, p.width, p.height] for p in crops]
    folders = {
        "boxed": _boxed_folder(tmp_path / "boxed", photos, boxes),
        "crops": _boxed_folder(tmp_path / "crops", crops, whole),
        "uncropped": _boxed_folder(
            tmp_path / "uncropped", photos, [[0, 0, p.width, p.height] for p in photos]
        ),
    }
    scores = {}
    for name, folder in folders.items():
        config = RunConfig(dataset="wikiperson", data_dir=str(folder), task="i2t", candidates=3)
        results = run(config, tmp_path / f"run-{name}", progress=False)
        assert results["n"] == 3, results["skipped"]
        lines = [json.loads(x) for x in (tmp_path / f"run-{name}" / "items.jsonl").read_text().splitlines()]
        scores[name] = {
            line["id"]: dict(zip(line["candidates"], line["scores"], strict=True)) for line in lines
        }
    assert scores["boxed"] == scores["crops"]
    assert scores["boxed"] != scores["uncropped"]
