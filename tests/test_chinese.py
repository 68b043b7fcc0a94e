"""The Chinese path end to end: the ``zh`` JSONL loader, a KB store built with multilingual-e5
(``kb.build``'s default for Chinese) and the ``tagger:e5`` scorer, on real photographs.

The dataset is written here (no public Chinese MEL set with entity labels and images is in
``../shared``; COCO-CN has captions only): six of the demo's real photos with Chinese captions
and a ten-entity Chinese KB. e5 reads Chinese; MiniLM, the English default, does not, which is
what this test shows: ``tagger:e5`` links every mention, the English tagger only some.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval.run import main
from kb.dataset import load_dataset

ENTITIES = {
    "Q146": ("猫", "一种小型的家养食肉哺乳动物"),
    "Q144": ("狗", "由狼驯化而来的家养动物"),
    "Q140": ("狮子", "生活在非洲的大型猫科动物"),
    "Q8486": ("咖啡", "用烘焙过的咖啡豆冲泡的饮料"),
    "Q6097": ("茶", "用热水冲泡茶叶制成的芳香饮料"),
    "Q41291": ("火箭", "由火箭发动机推进的航天运载工具"),
    "Q405": ("月球", "地球唯一的天然卫星"),
    "Q525": ("太阳", "太阳系中心的恒星"),
    "Q11631": ("宇航员", "受过训练、驾驶或乘坐航天器的人"),
    "Q41207": ("硬币", "用作货币的小块扁平金属"),
}
MENTIONS = [  # (demo mention whose photo it is, gold, caption, mention)
    ("chelsea-0", "Q146", "这只猫抬头看着地板上方。", "猫"),
    ("coffee-0", "Q8486", "碟子上放着一杯咖啡。", "咖啡"),
    ("rocket-0", "Q41291", "一枚火箭从发射台升空。", "火箭"),
    ("moon-0", "Q405", "通过望远镜看到的月球表面。", "月球"),
    ("coins-0", "Q41207", "桌上放着一批古老的硬币。", "硬币"),
    ("astronaut-0", "Q11631", "一名宇航员拍摄美国宇航局的官方肖像。", "宇航员"),
]


@pytest.fixture(scope="module")
def zh_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zh")
    (root / "images").mkdir()
    demo = load_dataset("demo")
    with (root / "entities.jsonl").open("w", encoding="utf-8") as f:
        for qid, (label, description) in ENTITIES.items():
            record = {"qid": qid, "label": label, "description": description, "aliases": []}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with (root / "test.jsonl").open("w", encoding="utf-8") as f:
        for source, gold, sentence, mention in MENTIONS:
            photo = demo.mention(source).image_path
            shutil.copy(photo, root / "images" / f"{source}{photo.suffix}")
            start = sentence.index(mention)
            record = {
                "id": source,
                "sentence": sentence,
                "mention": mention,
                "answer": gold,
                "image": f"{source}{photo.suffix}",
                "span": [start, start + len(mention)],
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return root


def _run(data: Path, out: Path, scorer: str, task: str) -> dict:
    argv = ["--dataset", "zh", "--data-dir", str(data), "--split", "all", "--scorer", scorer, "--task", task]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_tagger_e5_links_chinese_mentions(zh_data: Path, tmp_path: Path) -> None:
    from kb.build import default_encoder_name, store_for
    from tools.scorers import load_scorer
    from tools.text_encoders import E5Encoder

    dataset = load_dataset("zh", zh_data)
    assert len(dataset.mentions) == 6 and all(m.language == "zh" for m in dataset.mentions)
    assert default_encoder_name(dataset) == "e5-small"
    assert store_for(dataset, progress=False).manifest["encoder"].startswith("e5:multilingual-e5-small")
    scorer = load_scorer("tagger:e5", task="t2t")
    assert isinstance(scorer.encoder, E5Encoder) and scorer.name == "tagger:efficientnet-lite0+e5"

    for task in ("t2t", "it2t"):
        results = _run(zh_data, tmp_path / f"e5-{task}", "tagger:e5", task)
        assert results["n"] == 6 and results["n_skipped"] == 0, results["skipped"]
        assert results["metrics"]["acc@1"]["mean"] == 1.0, (task, results["metrics"])
    english = _run(zh_data, tmp_path / "minilm-t2t", "tagger", "t2t")
    assert english["metrics"]["acc@1"]["mean"] <= 0.5, "MiniLM reads no Chinese: the e5 path is what links"
