"""The Chroma KB store (build once, reuse, rebuild on change, never a half store) and
candidate sets (gold + hard negatives, deterministic per seed, NIL kept)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kb.candidates import CandidateBuilder
from kb.dataset import load_dataset
from kb.records import NIL, Mention
from kb.store import open_store
from tools.text_encoders import MiniLMEncoder, encoder_fingerprint


class CountingEncoder(MiniLMEncoder):
    """The real MiniLM encoder, counting how many texts it was asked to embed."""

    calls = 0

    def encode(self, texts, kind="passage"):
        CountingEncoder.calls += len(texts)
        return super().encode(texts, kind)


@pytest.fixture(scope="module")
def encoder() -> CountingEncoder:
    return CountingEncoder()


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo")


def test_build_then_reuse(tmp_path: Path, encoder: CountingEncoder, demo) -> None:
    fingerprint = encoder_fingerprint(encoder)
    before = encoder.calls
    store = open_store("demo", demo.entities, encoder, fingerprint, root=tmp_path, progress=False)
    assert not store.reused and store.count == len(demo.entities) == encoder.calls - before
    again = open_store("demo", demo.entities, encoder, fingerprint, root=tmp_path, progress=False)
    assert again.reused and again.path == store.path and encoder.calls - before == len(demo.entities)
    assert again.search("the house cat", k=3)[0][0] == "Q146"
    vectors = again.vectors(["Q146", "Q405"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_changed_data_or_model_builds_a_new_store(tmp_path: Path, encoder: CountingEncoder, demo) -> None:
    fingerprint = encoder_fingerprint(encoder)
    first = open_store("demo", demo.entities, encoder, fingerprint, root=tmp_path, progress=False)
    edited = dict(demo.entities)
    edited["Q146"] = dataclasses.replace(edited["Q146"], description="a different description")
    second = open_store("demo", edited, encoder, fingerprint, root=tmp_path, progress=False)
    third = open_store("demo", demo.entities, encoder, fingerprint + "-v2", root=tmp_path, progress=False)
    assert len({first.path, second.path, third.path}) == 3 and not second.reused and not third.reused


def test_interrupted_build_is_never_used(tmp_path: Path, encoder: CountingEncoder, demo) -> None:
    fingerprint = encoder_fingerprint(encoder)

    def die(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        open_store("demo", demo.entities, encoder, fingerprint, root=tmp_path, progress=False, on_batch=die)
    assert not any((p / "manifest.json").exists() for p in tmp_path.iterdir())
    store = open_store("demo", demo.entities, encoder, fingerprint, root=tmp_path, progress=False)
    assert not store.reused and store.count == len(demo.entities)


@pytest.fixture(scope="module")
def wikimel(shared_mel: Path):
    return load_dataset("wikimel", shared_mel / "wikimel")


@pytest.fixture(scope="module")
def builder(wikimel, wikimel_store: dict, encoder: CountingEncoder) -> CandidateBuilder:
    """The builder every run uses: WikiMEL's entities with the real MiniLM description vectors of
    its KB store (built once per session), checked against MiniLM on a sample of descriptions."""
    from kb.runcore.items import candidate_builder

    built = candidate_builder(wikimel, progress=False)
    qids = sorted(wikimel.entities)
    sample = [qids[i] for i in range(0, len(qids), 1999)]
    direct = encoder.encode([wikimel.entities[q].text() for q in sample])
    stored = built.vectors[[built.row[q] for q in sample]]
    assert built.vectors.shape == (18_880, 384) and np.allclose(stored, direct, atol=1e-5)
    return built


def test_candidate_sets_hold_gold_and_are_deterministic(builder: CandidateBuilder, wikimel) -> None:
    mentions = wikimel.split("test")[:200]
    sets = builder.build_all(mentions, size=10, seed=0)
    assert all(len(s.qids) == 10 == len(set(s.qids)) for s in sets)
    assert all(s.qids[s.gold_index] == m.gold for s, m in zip(sets, mentions, strict=True))
    assert sets == builder.build_all(mentions, size=10, seed=0)
    other = builder.build_all(mentions, size=10, seed=1)
    assert sum(a.qids != b.qids for a, b in zip(sets, other, strict=True)) > 150
    positions = np.bincount([s.gold_index for s in sets], minlength=10)
    assert positions.max() < 50  # the gold is not parked in one slot


def test_hard_negatives_share_names(builder: CandidateBuilder, wikimel) -> None:
    mention = wikimel.mention("46351-1")  # "Powers" -> Stefanie Powers
    gold_label = wikimel.entities[mention.gold].label
    by_name = builder.name_neighbours([mention.mention, gold_label], mention.gold, 18)
    assert {wikimel.entities[q].label for q in by_name} == {
        "Stefanie Scott",
        "Francis Powers",
        "Powers Hapgood",
    }
    for seed in range(3):  # the name pool is smaller than its half quota, so all of it is used
        assert set(by_name) <= set(builder.build(mention, size=10, seed=seed).qids)


def test_hard_negatives_are_the_golds_description_neighbours(builder: CandidateBuilder, wikimel) -> None:
    """With the real MiniLM vectors: the description pool is the gold's nearest entities by cosine
    (brute force here), and half the negatives of a set come from it."""
    mention = wikimel.mention("46351-1")
    gold = builder.row[mention.gold]
    cosine = builder.vectors @ builder.vectors[gold]
    cosine[gold] = -np.inf
    nearest = [builder.qids[i] for i in np.argsort(-cosine, kind="stable")[:18]]
    assert builder.description_neighbours(mention.gold, 18) == nearest
    assert cosine[builder.row[nearest[-1]]] > np.median(cosine[np.isfinite(cosine)]) + 0.2  # really near
    by_name = set(
        builder.name_neighbours([mention.mention, wikimel.entities[mention.gold].label], mention.gold, 18)
    )
    for seed in range(3):
        negatives = set(builder.build(mention, size=10, seed=seed).qids) - {mention.gold}
        assert len(negatives & (set(nearest) - by_name)) >= 4, seed  # 9 negatives: 5 by name, 4 by text


def test_description_neighbours_use_vectors(wikimel) -> None:
    qids = sorted(wikimel.entities)
    vectors = np.zeros((len(qids), 2), dtype=np.float32)
    vectors[:, 0] = 1.0
    gold = wikimel.mention("46351-1").gold
    near = qids[:3]
    for q in [gold, *near]:
        vectors[qids.index(q)] = [0.0, 1.0]
    builder = CandidateBuilder(wikimel.entities, vectors)
    assert builder.description_neighbours(gold, 3) == near


def test_sizes_full_kb_dataset_lists_and_nil(builder: CandidateBuilder, wikimel) -> None:
    mention = wikimel.split("test")[0]
    assert len(builder.build(mention, size=100, seed=0).qids) == 100
    full = builder.build(mention, size=None)
    assert full.source == "full-kb" and len(full.qids) == len(wikimel.entities)
    own = dataclasses.replace(mention, candidates=("Q1", mention.gold, "Q2"))
    listed = builder.build(own, seed=3)
    assert listed.source == "dataset" and set(listed.qids) == {"Q1", "Q2", mention.gold}
    nil = Mention(id="n", sentence="Powers spoke.", mention="Powers", gold=NIL, split="test")
    built = builder.build(nil, size=10)
    assert built.gold_index is None and len(built.qids) == 10


def test_kb_build_cli_builds_then_reuses(tmp_path: Path) -> None:
    """The CLI builds a store into an empty cache, then reuses it (the demo KB: a build is quick)."""
    env = {**os.environ, "MEL_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "kb.build", "--dataset", "demo"]
    first = json.loads(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)
    second = json.loads(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)
    assert first["entities"] == second["entities"] == 19 and first["path"] == second["path"]
    assert not first["reused"] and second["reused"] and Path(first["path"]).is_relative_to(tmp_path)


@pytest.mark.slow
def test_kb_build_cli_reuses_the_wikimel_store(shared_mel: Path, wikimel_store: dict) -> None:
    """WikiMEL's 18,880-entity store, built by ``kb.build`` once this session (``wikimel_store``),
    is reused by the next ``kb.build`` in a fraction of the build time."""
    command = [
        sys.executable,
        "-m",
        "kb.build",
        "--dataset",
        "wikimel",
        "--data-dir",
        str(shared_mel / "wikimel"),
    ]
    again = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert again["entities"] == wikimel_store["entities"] == 18_880 and again["path"] == wikimel_store["path"]
    assert again["reused"] and again["seconds"] < wikimel_store["build_seconds"] / 5


PLUGIN = '''
from tools.text_encoders import MiniLMEncoder


class ReversedMiniLM(MiniLMEncoder):
    """MiniLM on each text reversed word by word: another encoder, its own vectors."""

    name = "plugin:reversed-minilm"

    def encode(self, texts, kind="passage"):
        return super().encode([" ".join(reversed(t.split())) for t in texts], kind)
'''


def test_kb_build_finds_a_third_party_encoder_through_its_entry_point(tmp_path: Path) -> None:
    """A package installed beside the project (a module and its ``.dist-info`` with an
    ``entry_points.txt`` on ``sys.path``, as pip leaves them) registers ``reversed-minilm`` in
    ``melrobust.text_encoders``: ``kb.build --encoder reversed-minilm`` lists it, builds a store
    with it (a store of its own, pinned to that encoder, beside MiniLM's), and an unknown name
    is refused with the installed names."""
    site = tmp_path / "site"
    info = site / "melrobust_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "melrobust_plugin.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: melrobust-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[melrobust.text_encoders]\nreversed-minilm = melrobust_plugin:ReversedMiniLM\n"
    )
    env = {**os.environ, "MEL_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(site)}
    command = [sys.executable, "-m", "kb.build", "--dataset", "demo"]
    listed = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True, env=env).stdout
    assert "reversed-minilm" in listed
    built = {}
    for encoder in ("reversed-minilm", "minilm"):
        done = subprocess.run([*command, "--encoder", encoder], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        built[encoder] = json.loads(done.stdout)
    assert built["reversed-minilm"]["encoder"].startswith("plugin:reversed-minilm")
    assert (
        built["reversed-minilm"]["entities"] == 19
        and built["reversed-minilm"]["path"] != built["minilm"]["path"]
    )
    unknown = subprocess.run([*command, "--encoder", "nope"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "reversed-minilm" in unknown.stderr
