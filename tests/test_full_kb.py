"""Full-KB ranking (eval.full_kb): cut lines keep the metrics, the matrix equals per-mention forward.

Real models and real data: the tagger on the built-in demo photographs (19 entities) and on
WikiMEL's 18,880-entity KB; MCR's real backbones with an untrained head (a real MCRScorer, not a
checkpoint: equality of two paths does not need trained weights).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from support import private_cache

from eval.config import RunConfig
from eval.full_kb import FullKBPipeline, embeds, rank_rows
from eval.full_kb_table import counts_line
from eval.metrics import FULL_KB_KS, metrics_from_ranks
from eval.run import build_parser, main, run
from eval.scoring import score_missing
from kb.dataset import load_dataset
from kb.ranking import gold_rank, ranking
from kb.runcore.selection import select_mentions

TOLERANCE = 1e-4
"""|matrix logit − forward logit| at the tagger's logit scale 100 (1e-6 in cosine)."""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private score cache; KB stores and text embeddings (a pure function of model and text) shared."""
    root = private_cache(tmp_path / "cache", ("kb", "text_embeddings"))
    monkeypatch.setenv("MEL_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def small_wikimel(tmp_path_factory: pytest.TempPathFactory, shared_mel: Path) -> Path:
    """Real WikiMEL files cut to 40 test captions and a KB of their golds, the 30 entities sharing
    the most name tokens with each mention (``kb.candidates``' name neighbours: the hard ones) and
    every 40th other entity: full-KB ranks spread beyond a cut of 3, and a cold KB embeds quickly."""
    from kb.candidates import CandidateBuilder

    source = shared_mel / "wikimel"
    full = load_dataset("wikimel", source)
    annotations = json.loads((source / "Wikidata-MEL.json").read_text(encoding="utf-8"))
    test = [c for c in json.loads((source / "splits.json").read_text())["test"] if c in annotations][:40]
    builder = CandidateBuilder(full.entities)
    kept = set(sorted(full.entities)[::40])
    for mention in full.mentions:
        if mention.caption_id in test:
            label = full.entities[mention.gold].label if mention.gold in full.entities else ""
            kept |= {mention.gold, *builder.name_neighbours([mention.mention, label], mention.gold, 30)}
    labels = json.loads((source / "qid2ne.json").read_text(encoding="utf-8"))
    abstracts = json.loads((source / "qid2abs.json").read_text(encoding="utf-8"))
    folder = tmp_path_factory.mktemp("small-wikimel")
    files = {
        "Wikidata-MEL.json": {c: annotations[c] for c in test},
        "splits.json": {"train": [], "dev": [], "test": test},
        "qid2ne.json": {q: labels[q] for q in sorted(kept) if q in labels},
        "qid2abs.json": {q: abstracts[q] for q in sorted(kept) if q in abstracts},
    }
    for name, value in files.items():
        (folder / name).write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return folder


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]


def full_ranking_rank(record: dict) -> int:
    """The gold's pessimistic rank read off a full-storage line's whole ranking and scores."""
    if record["gold"] not in record["ranking"]:
        return record["n_candidates"] + 1
    scores = np.asarray(record["ranking_scores"])
    return int((scores >= scores[record["ranking"].index(record["gold"])]).sum())


@pytest.mark.parametrize(
    ("dataset", "task", "limit", "keep"), [("wikimel", "t2t", 25, 3), ("demo", "it2t", None, 1)]
)
def test_cut_lines_give_the_metrics_of_full_lines(
    tmp_path: Path, cache: Path, small_wikimel: Path, dataset: str, task: str, limit: int | None, keep: int
) -> None:
    """The same run stored with the top k and with everything: same ranks, same metrics, and the
    cut run's metrics are those of the full ranking (ranks counted before the cut)."""
    data_dir = str(small_wikimel) if dataset == "wikimel" else None
    config = RunConfig(
        dataset=dataset, task=task, candidates=None, limit=limit, data_dir=data_dir, keep_top=keep
    )
    cut = run(config, tmp_path / "cut", progress=False)
    full = run(replace(config, keep_top=0), tmp_path / "full", progress=False)
    entities = len(load_dataset(dataset, data_dir).entities)
    assert cut["full_kb"]["mode"] == "matrix" and cut["n"] == full["n"] == (limit or 8)
    cut_lines, full_lines = lines(tmp_path / "cut"), lines(tmp_path / "full")
    assert all(len(r["ranking"]) == keep for r in cut_lines)
    assert all(len(r["ranking"]) == r["n_candidates"] == entities for r in full_lines)
    assert any(r["rank"] > keep for r in full_lines)  # some gold is outside the cut
    from_full = [full_ranking_rank(r) for r in full_lines]
    assert [r["rank"] for r in cut_lines] == [r["rank"] for r in full_lines] == from_full
    assert cut["metrics"] == full["metrics"]
    expected = metrics_from_ranks(from_full, FULL_KB_KS).to_json()
    assert {k: v["mean"] for k, v in cut["metrics"].items()} == expected
    assert set(cut["metrics"]) == {"acc@1", "acc@3", "acc@5", "acc@10", "acc@20", "mrr", "mr"}
    for c, f in zip(cut_lines, full_lines, strict=True):  # the kept top is the full ranking's head
        assert c["ranking"] == f["ranking"][:keep] and c["gold_score"] == f["gold_score"]


def _two_paths(config: RunConfig, mentions: list, pipeline: FullKBPipeline) -> tuple[dict, dict]:
    """Full (N,) logits per mention id from the KB matrix and from per-mention ``forward``."""
    meta = pipeline.embedding_meta()
    assert meta["embeds"] and embeds(pipeline.scorer())
    matrix = {}
    items = pipeline.prepare(mentions, 0, {})
    for batch, queries in pipeline.query_batches([i for i in items if i.skip is None]):
        scores = pipeline.kb().scores(queries, meta["scale"])
        matrix.update((item.mention.id, row.numpy()) for item, row in zip(batch, scores, strict=True))
    reference = [i for i in pipeline.prepare(mentions, 0, {}) if i.skip is None]
    score_missing(reference, pipeline.scorer, replace(config, batch_size=4))
    return matrix, {i.mention.id: (i.logits, i.candidates.gold_index) for i in reference}


@pytest.mark.parametrize(
    ("dataset", "task", "limit"),
    [
        ("demo", "it2t", None),
        ("demo", "i2t", None),
        ("small-wikimel", "t2t", 12),
        pytest.param("wikimel", "t2t", 12, marks=pytest.mark.slow),  # the 18,880-entity KB, cold
    ],
)
def test_matrix_scores_equal_the_per_mention_scorer_path(
    cache: Path, shared_mel: Path, small_wikimel: Path, dataset: str, task: str, limit: int | None
) -> None:
    data_dir = {"wikimel": str(shared_mel / "wikimel"), "small-wikimel": str(small_wikimel)}.get(dataset)
    dataset = "wikimel" if data_dir else dataset
    config = RunConfig(dataset=dataset, task=task, candidates=None, limit=limit, data_dir=data_dir)
    data = load_dataset(dataset, data_dir)
    mentions = select_mentions(data, "test", limit)
    pipeline = FullKBPipeline(config, data, progress=False)
    matrix, reference = _two_paths(config, mentions, pipeline)
    assert set(matrix) == set(reference) and len(matrix) == len(mentions)
    keep = 10
    for mention_id, (logits, gold) in reference.items():
        assert matrix[mention_id].shape == logits.shape == (len(data.entities),)
        assert np.abs(matrix[mention_id] - logits).max() <= TOLERANCE
        ranked = rank_rows(torch.from_numpy(matrix[mention_id])[None], [gold], keep)[0]
        assert ranked.rank == gold_rank(logits, gold)  # same gold rank
        assert list(ranked.order) == ranking(logits)[:keep]  # same kept head, in the same order


def test_rank_rows_is_ranking_then_cut_with_ties() -> None:
    """Equal scores keep candidate order (kb.ranking) at the cut, and the gold's tie is pessimistic."""
    row = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1, 0.9]])
    ranked = rank_rows(row, [3], 3)[0]
    assert list(ranked.order) == ranking(row[0].tolist())[:3] == [1, 5, 0]
    assert ranked.rank == gold_rank(row[0].tolist(), 3) == 5
    assert rank_rows(row, [None], 0)[0].rank == 7 and len(rank_rows(row, [None], 0)[0].order) == 6


def test_keep_top_and_kb_index_pin_full_kb_folders_only() -> None:
    args = build_parser().parse_args(["--dataset", "demo", "--candidates", "all", "--keep-top", "5"])
    assert (args.keep_top, args.kb_index, args.candidates) == (5, "auto", None)
    full = RunConfig(dataset="demo", candidates=None, keep_top=5).identity()
    assert full["keep_top"] == 5 and full["kb_index"] == "auto"
    lam = RunConfig(dataset="demo", candidates=10, keep_top=5).identity()
    assert "keep_top" not in lam and "kb_index" not in lam  # λ folders written before still resume
    with pytest.raises(ValueError, match="keep-top"):
        FullKBPipeline(RunConfig(dataset="demo", candidates=None, keep_top=-1), load_dataset("demo"), False)


def test_hnsw_index_finds_the_exact_top_k_on_a_small_kb(tmp_path: Path, cache: Path) -> None:
    from eval.full_kb_index import HnswRanker, recall

    data = load_dataset("demo")
    config = RunConfig(dataset="demo", task="t2t", candidates=None, keep_top=5)
    pipeline = FullKBPipeline(config, data, progress=False)
    index = HnswRanker.open("tagger", pipeline.texts, pipeline.embed_candidates, False, tmp_path / "index")
    items = pipeline.prepare(data.split("test"), 0, {})
    for batch, queries in pipeline.query_batches(items):
        exact = rank_rows(pipeline.kb().scores(queries, 100.0), [None] * len(batch), 5)
        approximate = index.rank(queries, [i.candidates.gold_index for i in batch], 5, 100.0)
        assert recall([e.order for e in exact], [a.order for a in approximate]) == 1.0
        for e, a in zip(exact, approximate, strict=True):
            assert np.abs(e.scores - a.scores).max() < 1e-3  # HNSW's own float cosine
    reopened = HnswRanker.open("tagger", pipeline.texts, pipeline.embed_candidates, False, tmp_path / "index")
    assert reopened.size == 19
    # and through the flag, as users reach it: --kb-index hnsw ranks with the index, same metrics
    runs = {}
    for kind in ("exact", "hnsw"):
        argv = ["--dataset", "demo", "--task", "t2t", "--candidates", "all", "--kb-index", kind, "--quiet"]
        assert main([*argv, "--keep-top", "5", "--out", str(tmp_path / kind)]) == 0
        runs[kind] = json.loads((tmp_path / kind / "results.json").read_text())
    assert runs["hnsw"]["full_kb"]["index"] == "hnsw" and runs["exact"]["full_kb"]["index"] == "exact"
    assert runs["hnsw"]["metrics"] == runs["exact"]["metrics"]


@pytest.mark.slow
def test_mcr_full_kb_is_exact_for_i2t_and_reranks_the_top_k_for_t2t(cache: Path) -> None:
    """MCR with its real backbones (head untrained: the two paths must agree whatever its weights)."""
    from tools.scorers.mcr import MCRScorer

    data = load_dataset("demo")
    mentions = data.split("test")
    model = MCRScorer(task="i2t").eval()
    config = RunConfig(dataset="demo", task="i2t", scorer="mcr", candidates=None, keep_top=4)
    pipeline = FullKBPipeline(config, data, progress=False)
    pipeline.scorer._scorer = model
    matrix, reference = _two_paths(config, mentions, pipeline)
    for mention_id, (logits, _) in reference.items():
        assert np.abs(matrix[mention_id] - logits).max() <= 1e-3 * max(1.0, float(np.abs(logits).max()))
    model.task = "t2t"
    t2t = replace(config, task="t2t")
    pipeline = FullKBPipeline(t2t, data, progress=False)
    pipeline.scorer._scorer = model
    items = pipeline.prepare(mentions, 0, {})
    ranked = pipeline.rank(items)
    assert pipeline.mode == "retrieve+rerank"
    for item in items:
        got = ranked[item.mention.id]
        labels = [[item.candidate_texts[j] for j in got.order]]
        with torch.no_grad():
            forward = model(None, [item.context], labels)[0].numpy()
        assert got.extra["reranked"] == 4
        assert np.abs(np.sort(forward)[::-1] - got.scores).max() < 1e-4  # the cross-encoder's scores


def test_rank_rows_equals_ranking_then_cut_on_random_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, batch, keep = int(rng.integers(1, 60)), int(rng.integers(1, 6)), int(rng.integers(0, 70))
        scores = torch.from_numpy(rng.integers(0, 6, size=(batch, n)).astype(np.float32))
        golds = [None if rng.random() < 0.2 else int(rng.integers(0, n)) for _ in range(batch)]
        for row, gold, got in zip(scores, golds, rank_rows(scores, golds, keep), strict=True):
            assert list(got.order) == ranking(row.tolist())[: n if keep <= 0 else keep]
            assert got.rank == gold_rank(row.tolist(), gold)


def test_any_lambda_above_100_takes_the_full_kb_path(tmp_path: Path, cache: Path) -> None:
    """λ = 101 on the 19-entity demo KB is a full-KB run (cut lines ranking all 19, a ``full_kb``
    block, the metrics of ``--candidates all``); λ = 100 is a candidate-set run."""
    common = dict(dataset="demo", task="t2t")
    above = run(RunConfig(**common, candidates=101), tmp_path / "above", progress=False)
    whole = run(RunConfig(**common, candidates=None), tmp_path / "all", progress=False)
    at = run(RunConfig(**common, candidates=100), tmp_path / "at", progress=False)
    assert above["full_kb"]["mode"] == "matrix" and above["full_kb"]["entities"] == 19
    lines = [json.loads(line) for line in (tmp_path / "above" / "items.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    assert all(line["candidate_source"] == "full-kb" and len(line["ranking"]) == 19 for line in lines)
    assert above["metrics"] == whole["metrics"]
    assert "full_kb" not in at
    first = json.loads((tmp_path / "at" / "items.jsonl").read_text().splitlines()[0])
    assert "candidate_source" not in first and len(first["candidates"]) == 19


def test_the_table_note_says_how_many_candidates_mcr_reranked() -> None:
    """A reader of the MIMIC table must see that an MCR t2t row reranks only the kept top k
    (so its H@20 is the retrieval's), and which index found them."""

    def run(scorer: str, mode: str, keep: int, index: str) -> dict:
        full_kb = {"entities": 18880, "keep_top": keep, "mode": mode, "index": index}
        return {
            "scorer": scorer,
            "task": "t2t",
            "dataset": "wikimel",
            "split": "test",
            "n": 5131,
            "candidates": "all",
            "full_kb": full_kb,
        }

    line = counts_line([run("mcr", "retrieve+rerank", 20, "exact"), run("tagger", "matrix", 100, "hnsw")])
    assert (
        "mcr T2T full KB: wikimel/test n=5131, 18880 entities, top 20 kept, retrieve+rerank of the top 20, exact index"
        in line
    )
    assert "tagger T2T full KB: wikimel/test n=5131, 18880 entities, top 100 kept, matrix, hnsw index" in line
