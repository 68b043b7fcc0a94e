"""eval.run end to end on real data: schema, skips with reasons, resume after a cut, caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import private_cache, refuse_model_loading, score_rows

from eval.metrics import drift, gold_rank, metrics_from_ranks
from eval.run import NothingScored, RunConfig, main, run, summary_line
from kb.errors import DatasetError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache root for score and text-embedding caches; KB stores stay the session's."""
    root = private_cache(tmp_path / "cache", ("kb",))
    monkeypatch.setenv("MEL_CACHE_DIR", str(root))
    return root


def test_gold_rank_is_pessimistic_on_ties() -> None:
    assert gold_rank([0.5, 0.5, 0.1], 1) == 2
    assert gold_rank([0.1, 0.9], 1) == 1
    assert gold_rank([0.3, 0.3, 0.3], None) == 4
    metrics = metrics_from_ranks([1, 2, 11]).to_json()
    assert metrics["acc@1"] == pytest.approx(1 / 3) and metrics["acc@10"] == pytest.approx(2 / 3)
    assert metrics["mrr"] == pytest.approx((1 + 0.5 + 1 / 11) / 3)


def test_drift_counts_flips_and_successes() -> None:
    clean = {
        "a": {"prediction": "Q1", "correct": True, "rank": 1},
        "b": {"prediction": "Q2", "correct": False, "rank": 3},
    }
    attacked = {
        "a": {"prediction": "Q9", "correct": False, "rank": 4},
        "b": {"prediction": "Q2", "correct": False, "rank": 3},
    }
    result = drift(clean, attacked)
    assert result == {
        "n": 2,
        "acc_drop": 0.5,
        "flip_rate": 0.5,
        "attack_success": 1.0,
        "gold_rank_shift": 1.5,
    }


def test_demo_it2t_results_schema(tmp_path: Path, cache: Path) -> None:
    results = run(RunConfig(dataset="demo", task="it2t", seeds=(0, 1)), tmp_path / "out", progress=False)
    assert {
        "dataset",
        "split",
        "task",
        "pipeline",
        "scorer",
        "attack",
        "seeds",
        "n",
        "n_skipped",
        "metrics",
        "items",
    } <= set(results)
    assert set(results["metrics"]) == {"acc@1", "acc@5", "acc@10", "mrr", "mr"}
    assert results["n"] == 8 and results["n_skipped"] == 0
    lines = (tmp_path / "out" / "items.jsonl").read_text().splitlines()
    assert len(lines) == 16
    record = json.loads(lines[0])
    assert record["ranking"][0] == record["prediction"] and set(record["ranking"]) == set(
        record["candidates"]
    )
    assert results["metrics"]["acc@1"]["mean"] >= 0.5  # real models on real photos, 10 candidates
    assert "acc@1" in summary_line(results)


def test_wikimel_t2t_is_well_above_chance(
    tmp_path: Path, cache: Path, shared_mel: Path, wikimel_store: dict
) -> None:
    config = RunConfig(dataset="wikimel", task="t2t", limit=200, data_dir=str(shared_mel / "wikimel"))
    results = run(config, tmp_path / "out", progress=False)
    assert results["n"] == 200 and results["metrics"]["acc@1"]["mean"] > 0.5  # chance is 0.1


def test_i2t_without_images_skips_with_reason(
    tmp_path: Path, cache: Path, shared_mel: Path, wikimel_store: dict
) -> None:
    config = RunConfig(dataset="wikimel", task="i2t", limit=20, data_dir=str(shared_mel / "wikimel"))
    with pytest.raises(NothingScored, match="image_missing x20"):  # nothing scored is an error ...
        run(config, tmp_path / "out", progress=False)
    results = json.loads((tmp_path / "out" / "results.json").read_text())  # ... with the results kept
    assert results["n"] == 0 and results["skipped"] == {"image_missing": 20}


def test_resume_after_a_cut_gives_identical_metrics(
    tmp_path: Path, cache: Path, shared_mel: Path, wikimel_store: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed run scores what the cut lost afresh, with an empty score cache of its own (the
    full run's would hand it the very logits it wrote). With the full run's text embeddings its
    lines are the full run's to the bit; with no cache at all (the texts re-encoded in batches of
    other lengths, hence other padding) they differ in the last float bits of a score only."""
    config = RunConfig(
        dataset="wikimel", task="t2t", limit=30, seeds=(0, 1), data_dir=str(shared_mel / "wikimel")
    )
    full = run(config, tmp_path / "full", progress=False)
    items = (tmp_path / "full" / "items.jsonl").read_text().splitlines()
    originals = {(r["seed"], r["id"]): r for r in map(json.loads, items)}
    for shared in (("kb", "text_embeddings"), ("kb",)):
        cut = tmp_path / f"cut-{len(shared)}"
        cut.mkdir()
        (cut / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
        (cut / "items.jsonl").write_text("\n".join(items[:25]) + "\n" + items[25][:40])  # cut mid-write
        fresh = tmp_path / f"fresh-{len(shared)}"
        fresh.mkdir()
        if "text_embeddings" in shared:
            (fresh / "text_embeddings").symlink_to(cache / "text_embeddings", target_is_directory=True)
        (fresh / "kb").symlink_to(cache / "kb", target_is_directory=True)
        monkeypatch.setenv("MEL_CACHE_DIR", str(fresh))
        resumed = run(config, cut, progress=False)
        assert score_rows(fresh) == 35, "the 35 lines the cut lost were scored again"
        assert resumed["metrics"] == full["metrics"]
        lines = [json.loads(line) for line in (cut / "items.jsonl").read_text().splitlines()]
        assert len(lines) == 60 and len({(r["seed"], r["id"]) for r in lines}) == 60
        for line in lines[25:]:  # the re-scored ones, line for line
            twin = originals[(line["seed"], line["id"])]
            if "text_embeddings" in shared:
                assert line == twin, (line["id"], line["seed"])
            else:
                assert {**line, "scores": None} == {**twin, "scores": None}, (line["id"], line["seed"])
                # scores are stored to 5 decimals: a last-bit change can cross a rounding boundary,
                # one step of 1e-5 (1.00000000000655e-05 as a float difference, hence 1.5e-5)
                assert line["scores"] == pytest.approx(twin["scores"], rel=1e-6, abs=1.5e-5)
    monkeypatch.setenv("MEL_CACHE_DIR", str(cache))
    with pytest.raises(DatasetError, match="different configuration"):
        run(
            RunConfig(dataset="wikimel", task="t2t", limit=31, data_dir=str(shared_mel / "wikimel")),
            cut,
            progress=False,
        )


def test_warm_run_never_loads_the_model(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cold = run(RunConfig(dataset="demo", task="i2t"), tmp_path / "cold", progress=False)
    assert cold["model_load_seconds"] > 0
    refuse_model_loading(monkeypatch)  # from here on, loading any model fails the run
    warm = run(RunConfig(dataset="demo", task="i2t"), tmp_path / "warm", progress=False)
    assert warm["metrics"] == cold["metrics"] and warm["n"] == cold["n"] == 8
    with pytest.raises(AssertionError, match="a model was loaded: tagger"):  # the check bites
        run(RunConfig(dataset="demo", task="t2t"), tmp_path / "other-task", progress=False)


def test_a_run_that_scores_nothing_fails_with_the_reason_and_fix(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every mention skipped (its image is not on disk) is an error a user can act on, not a 0-exit
    NaN line, and results.json stays strict JSON (null, never NaN)."""
    from bad_inputs import FORMATS, Case, _files

    m3el = next(f for f in FORMATS if f.dataset == "m3el")
    data = Case("no_images", "m3el", _files(m3el, [m3el.record, m3el.record])).write(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["--dataset", "m3el", "--data-dir", str(data), "--task", "i2t", "--split", "all"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 of 2 mentions skipped, none scored" in err and "image_missing x2" in err
    assert f"no images under {data}" in err and "--task t2t, which needs none" in err
    text = (out / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    results = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))
    assert results["n"] == 0 and results["metrics"]["acc@1"]["mean"] is None
    assert results["schema_version"] >= 2
    # the text task of the same folder scores them: the advice holds
    t2t = [*argv[:4], "--task", "t2t", "--split", "all", "--out", str(tmp_path / "t2t"), "--quiet"]
    assert main(t2t) == 0


def test_an_agent_run_pins_its_llm_and_refuses_a_resume_with_another(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.json pins the judge: resuming after MEL_LLM_MODEL (or --llm-model) changed would mix
    two models' decisions in one items.jsonl, so it is refused, naming the ``agent`` key."""
    from bad_inputs import FORMATS, Case, _files

    m3el = next(f for f in FORMATS if f.dataset == "m3el")
    data = Case("no_images", "m3el", _files(m3el, [m3el.record])).write(tmp_path / "data")
    argv = ["--dataset", "m3el", "--data-dir", str(data), "--split", "all", "--task", "i2t"]
    argv += ["--pipeline", "agent", "--llm-base-url", "http://127.0.0.1:9/v1", "--quiet"]
    out = tmp_path / "agent-run"
    monkeypatch.setenv("MEL_LLM_MODEL", "model-a")
    assert main([*argv, "--out", str(out)]) == 1  # its one mention has no image: nothing scored
    pinned = json.loads((out / "config.json").read_text())["agent"]["llm"]
    assert pinned["model"] == "model-a" and pinned["base_url"] == "http://127.0.0.1:9/v1"
    assert "api_key" not in json.dumps(pinned)
    assert main([*argv, "--out", str(out)]) == 1  # the same model resumes
    monkeypatch.setenv("MEL_LLM_MODEL", "model-b")
    with pytest.raises(DatasetError, match="differs in agent"):
        run(RunConfig(dataset="m3el", data_dir=str(data), split="all", task="i2t", pipeline="agent"), out)
    assert main([*argv, "--llm-model", "model-a", "--out", str(out)]) == 1  # a flag beats the environment


def test_full_kb_run_resumes_writes_strict_results_and_fills_the_mimic_table(
    tmp_path: Path, cache: Path
) -> None:
    """--candidates all: cut lines, a resume after a cut line gives the same metrics, results.json
    stays strict JSON with its full_kb block, and eval.tables shows it beside the λ run."""
    from dataclasses import replace

    from eval import full_kb_table, tables

    config = RunConfig(dataset="demo", task="it2t", candidates=None, keep_top=3)
    full = run(config, tmp_path / "full", progress=False)
    items = (tmp_path / "full" / "items.jsonl").read_text().splitlines()
    assert len(items) == 8 and all(len(json.loads(line)["ranking"]) == 3 for line in items)
    assert full["full_kb"]["entities"] == 19 and full["candidates"] == "all"
    text = (tmp_path / "full" / "results.json").read_text()
    json.loads(text, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
    (cut / "items.jsonl").write_text("\n".join(items[:5]) + "\n" + items[5][:30])
    resumed = run(config, cut, progress=False)
    assert resumed["metrics"] == full["metrics"] and resumed["n"] == 8
    with pytest.raises(DatasetError, match="keep_top"):  # another cut is another folder
        run(replace(config, keep_top=5), cut, progress=False)
    candidates = run(RunConfig(dataset="demo", task="it2t"), tmp_path / "lambda", progress=False)
    markdown = tables.markdown([full, candidates])
    assert full_kb_table.MARKDOWN_TITLE in markdown and "87.98" in markdown  # MIMIC's WikiMEL H@1
    _, rows = full_kb_table.collect([full, candidates])
    assert rows["tagger IT2T full KB"]["demo"]["acc@3"] == full["metrics"]["acc@3"]["mean"] * 100
    assert rows["tagger IT2T λ=10"]["demo"]["acc@3"] is not None  # read from the λ run's items.jsonl
    tables.write_tables([full, candidates], tmp_path / "tables")
    assert (tmp_path / "tables" / full_kb_table.CSV).read_text().startswith("Model,WikiMEL H@1,")
