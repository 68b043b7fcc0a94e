"""``eval.run --pipeline mllm``: the judge alone (seed paper Table 4's MLLM rows), with the real
embedded model, and Table 4 beside the agent's MLLM* row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import private_cache

from agent.prompts import JUDGE_QUESTION
from eval.run import RunConfig, run
from eval.tables import collect, markdown
from kb.dataset import load_dataset

pytestmark = pytest.mark.slow


def test_mllm_baseline_answers_every_item_from_the_judge_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEL_CACHE_DIR", str(private_cache(tmp_path / "cache", ("kb",))))
    config = RunConfig(dataset="demo", task="i2t", pipeline="mllm", limit=3)
    results = run(config, tmp_path / "mllm", progress=False)
    records = [json.loads(line) for line in (tmp_path / "mllm" / "items.jsonl").read_text().splitlines()]
    assert results["pipeline"] == "mllm" and results["n"] + results["n_skipped"] == 3 and results["n"] > 0
    assert results["llm"] == "qwen2.5-coder-1.5b-instruct-q4_k_m"
    assert "invalid_answers" in results and "stages" not in results
    dataset = load_dataset("demo")
    for record in records:
        prompt = record["prompt"]
        assert JUDGE_QUESTION["i2t"] in prompt  # the seed question, word for word
        labels = [dataset.entities[q].label for q in record["candidates"]]
        shown = [prompt.index(f"{i}. {label}") for i, label in enumerate(labels, start=1)]
        assert shown == sorted(shown)  # numbered in the dataset's candidate order, not pre-ranked
        if record["invalid"]:
            assert record["rank"] == len(record["candidates"]) + 1 and not record["correct"]
        else:  # the judge's answer decides: the prediction is its choice, first in the ranking
            assert (
                record["prediction"] == record["ranking"][0] and record["prediction"] in record["candidates"]
            )
        if record["distribution"] is not None:
            assert sum(record["distribution"].values()) == pytest.approx(1.0, abs=1e-3)
        assert record["gold"] in dataset.entities
    # Table 4: the MLLM row is the LLM's name
    cells, _ = collect([results], "table4")
    assert list(cells["demo"]) == ["qwen2.5-coder-1.5b-instruct-q4_k_m"]
    assert "Table 4" in markdown([results])
