"""The scorer-family table (tools/scorers/families.py): one frozen row per prefix, read by every
caller (load_scorer, Scorer.supported_tasks, template_for) and changed by nothing at import."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tools.scorers import families  # noqa: E402
from tools.scorers.base import PROMPT_TEMPLATE, TASKS, Scorer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Constant(Scorer):
    def forward(self, images, texts, candidate_texts):
        return torch.zeros(len(candidate_texts), len(candidate_texts[0]))


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> dict[str, families.ScorerFamily]:
    """A private copy of the table, so rows registered by a test stay in that test."""
    rows = dict(families.FAMILIES)
    monkeypatch.setattr(families, "FAMILIES", rows)
    return rows


def test_every_builtin_row_is_complete_and_frozen() -> None:
    assert families.available_scorers() == sorted(
        ["clip", "siglip", "align", "blip", "flava", "owlvit", "chineseclip", "openclip", "tagger", "mcr"]
    )
    for prefix, row in families.FAMILIES.items():
        assert row.prefix == prefix and row.tasks == TASKS
        assert callable(row.resolve()), prefix  # each lazy "module:function" names a real factory
        assert "{}" in row.template
        with pytest.raises(dataclasses.FrozenInstanceError):
            row.tasks = ("i2t",)  # type: ignore[misc]
    assert {p for p, row in families.FAMILIES.items() if row.bare} == {"tagger", "mcr"}


def test_templates_come_from_the_rows() -> None:
    from tools.scorers.base import candidate_prompt, template_for  # where eval.run imports them

    assert template_for is families.template_for and PROMPT_TEMPLATE == "a photo of {}"
    assert template_for("mcr") == "{}" and template_for("mcr:anything") == "{}"
    for name in (
        "tagger",
        "tagger+ocr",
        "tagger:e5+ocr",
        "clip:openai/x",
        "openclip:ViT-B-32/openai",
        "nosuch",
    ):
        assert template_for(name) == PROMPT_TEMPLATE, name
    assert candidate_prompt("Barack Obama", template_for("mcr")) == "Barack Obama"
    assert candidate_prompt("Barack Obama", template_for("clip:x")) == "a photo of Barack Obama"


def test_nothing_changes_the_table_at_import() -> None:
    code = (
        "import tools.scorers.families as f; before = dict(f.FAMILIES); "
        "import tools.scorers, tools.scorers.base, tools.scorers.tagger, tools.scorers.mcr, "
        "tools.scorers.clip_family; assert f.FAMILIES == before, set(f.FAMILIES) ^ set(before); print('same')"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]


def test_supported_tasks_are_the_rows(table: dict[str, families.ScorerFamily]) -> None:
    row = families.register_scorer(
        "textonly", lambda name, **kw: Constant(name, "textonly", "t2t"), tasks=("t2t",)
    )
    assert table["textonly"] is row and row.template == PROMPT_TEMPLATE and not row.bare
    scorer = families.load_scorer("textonly:x")
    assert scorer.supported_tasks == ("t2t",) and scorer.task == "t2t"
    with pytest.raises(ValueError, match="supports tasks"):
        scorer.task = "i2t"
    with pytest.raises(NotImplementedError, match="family table"):
        Constant("stray:x", "stray")  # a family without a row cannot even take a task


def test_register_scorer_rules(table: dict[str, families.ScorerFamily]) -> None:
    def factory(name, **kwargs):
        return Constant(name, "plain", kwargs.get("task", "i2t"))

    families.register_scorer("plain", factory, bare=True, template="{} (entity)")
    assert families.load_scorer("plain").name == "plain"  # bare: no model needed after the prefix
    assert families.load_scorer("plain+opt", task="it2t").task == "it2t"
    assert families.template_for("plain:x") == "{} (entity)"
    with pytest.raises(ValueError, match="already registered"):
        families.register_scorer("plain", factory)
    families.register_scorer("plain", "tools.scorers.tagger:load_tagger", replace=True)
    assert table["plain"].factory == "tools.scorers.tagger:load_tagger" and not table["plain"].bare
    with pytest.raises(ValueError, match="expected <prefix>"):
        families.load_scorer("clip")  # not bare: clip needs a model
    for bad in ("", "a:b", "a+b"):
        with pytest.raises(ValueError, match="prefix"):
            families.register_scorer(bad, factory)
    with pytest.raises(ValueError, match="module:function"):
        families.register_scorer("lazy", "tools.scorers.tagger")
    with pytest.raises(ValueError, match="subset"):
        families.register_scorer("odd", factory, tasks=("v2v",))  # type: ignore[arg-type]
    assert "odd" not in table and "lazy" not in table
