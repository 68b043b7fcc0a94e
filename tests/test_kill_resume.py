"""kill -9, then the same command again: ``eval.run``, ``attacks.generate`` and ``kb.build`` as
real subprocesses. A resumed run does no finished item twice and ends with the same metrics as
an uninterrupted run; a killed store build is never used and the next build completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import private_cache

PROJECT = Path(__file__).resolve().parent.parent
FAST = {"presets": {"pgd-kill": {"method": "pgd", "steps": 3, "eps": 8 / 255, "alpha": 2 / 255}}}


def _env(cache: Path) -> dict[str, str]:
    """A private cache (KB stores shared, read-only use) and one thread: the machine is shared."""
    if not (cache / "kb").exists():
        private_cache(cache, ("kb",))
    return {
        **os.environ,
        "MEL_CACHE_DIR": str(cache),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": str(PROJECT),
    }


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_when(args: list[str], env: dict[str, str], ready: Callable[[], bool], timeout: float = 240) -> None:
    """Start ``python -m args``, SIGKILL it as soon as ``ready()``; fail if it finished first."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(
                    f"{args[0]} ended (rc {process.returncode}) before it could be killed: "
                    f"{process.stderr.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{args[0]} made no progress in {timeout} s")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _complete_lines(path: Path) -> list[str]:
    """Lines a reader can trust: all but a last line the kill cut (no newline)."""
    if not path.is_file():
        return []
    text = path.read_bytes().decode("utf-8", errors="replace")
    return text.split("\n")[:-1]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _line_count(path: Path) -> int:
    return len(_complete_lines(path))


@pytest.mark.slow
def test_eval_run_killed_mid_run_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    args = ["eval.run", "--dataset", "wikimel", "--split", "all", "--with-images", "--task", "i2t"]
    args += ["--limit", "12", "--batch-size", "2", "--threads", "1", "--quiet"]
    items = tmp_path / "killed" / "items.jsonl"
    env = _env(tmp_path / "cache-killed")
    _kill_when([*args, "--out", str(tmp_path / "killed")], env, lambda: _line_count(items) >= 4)
    before = _complete_lines(items)
    assert 4 <= len(before) < 12, "killed after some but not all items"
    _run([*args, "--out", str(tmp_path / "killed")], env)
    _run([*args, "--out", str(tmp_path / "straight")], _env(tmp_path / "cache-straight"))

    resumed, straight = (
        json.loads((tmp_path / n / "results.json").read_text()) for n in ("killed", "straight")
    )
    final = items.read_text(encoding="utf-8").splitlines()
    assert final[: len(before)] == before, "finished lines are kept as they were, not redone"
    keys = [(r["condition"], r["seed"], r["id"]) for r in map(json.loads, final)]
    assert len(keys) == len(set(keys)) == resumed["n_mentions"] == 12
    for field in ("metrics", "metrics_per_seed", "n", "n_skipped", "skipped"):
        assert resumed[field] == straight[field], field
    by_id = {r["id"]: r for r in _records(tmp_path / "straight" / "items.jsonl")}
    for record in map(json.loads, final):
        assert record["scores"] == by_id[record["id"]]["scores"]


@pytest.mark.slow
def test_attacks_generate_killed_mid_run_resumes_to_the_same_manifest(tmp_path: Path) -> None:
    (tmp_path / "fast.json").write_text(json.dumps(FAST))
    args = [
        "attacks.generate",
        "--dataset",
        "demo",
        "--attack",
        "pgd-kill",
        "--presets-file",
        str(tmp_path / "fast.json"),
    ]
    args += ["--batch-size", "1", "--threads", "1", "--quiet"]
    manifest = tmp_path / "killed" / "PGD-pgd-kill" / "demo" / "manifest.jsonl"
    env = _env(tmp_path / "cache")
    _kill_when([*args, "--out", str(tmp_path / "killed")], env, lambda: _line_count(manifest) >= 2)
    before = _complete_lines(manifest)
    assert 2 <= len(before) < 8
    _run([*args, "--out", str(tmp_path / "killed")], env)
    _run([*args, "--out", str(tmp_path / "straight")], env)

    final = manifest.read_text(encoding="utf-8").splitlines()
    assert final[: len(before)] == before
    ids = [json.loads(line)["id"] for line in final]
    assert len(ids) == len(set(ids)) == 8
    summaries = [
        json.loads((tmp_path / name / "PGD-pgd-kill" / "demo" / "summary.json").read_text())
        for name in ("killed", "straight")
    ]
    for summary in summaries:
        for volatile in ("folder", "images_per_second"):
            summary.pop(volatile)
    assert summaries[0] == summaries[1]
    straight = {
        r["id"]: r for r in _records(tmp_path / "straight" / "PGD-pgd-kill" / "demo" / "manifest.jsonl")
    }
    for record in map(json.loads, final):
        twin = straight[record["id"]]
        for field in ("adv_prediction", "png_prediction", "success", "linf", "l2", "adv_loss"):
            assert record.get(field) == twin.get(field), (record["id"], field)


@pytest.mark.slow
def test_kb_build_killed_mid_build_is_never_used_and_the_next_build_completes(
    tmp_path: Path, shared_mel: Path
) -> None:
    names = json.loads((shared_mel / "wikimel" / "qid2ne.json").read_text())
    abstracts = json.loads((shared_mel / "wikimel" / "qid2abs.json").read_text())
    qids = sorted(names)[:1500]
    data = tmp_path / "data"
    data.mkdir()
    record = {
        "id": "c1",
        "sentence": f"{names[qids[0]]} today.",
        "mentions": [names[qids[0]]],
        "entities": [names[qids[0]]],
        "answer": [qids[0]],
    }
    files = {
        "Wikidata-MEL.json": {"c1": record},
        "splits.json": {"test": ["c1"]},
        "qid2ne.json": {q: names[q] for q in qids},
        "qid2abs.json": {q: abstracts.get(q, "") for q in qids},
    }
    for name, content in files.items():
        (data / name).write_text(json.dumps(content))
    cache = tmp_path / "cache"
    env = {**os.environ, "MEL_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    args = ["kb.build", "--dataset", "wikimel", "--data-dir", str(data)]
    kb = cache / "kb"

    def building() -> bool:  # any moment of the build will do: the kill is what is tested
        return kb.is_dir() and any(kb.glob("*.building-*/chroma"))

    _kill_when(args, env, building)
    assert [p.name for p in kb.iterdir() if ".building-" not in p.name] == [], (
        "no store before the build ends"
    )
    abandoned = list(kb.glob("*.building-*"))
    assert abandoned

    first = json.loads(_run(args, env).stdout)
    assert first["entities"] == len(qids) and first["reused"] is False
    assert not any(p.exists() for p in abandoned), "the killed build's folder is cleaned up"
    second = json.loads(_run(args, env).stdout)
    assert second["reused"] is True and second["path"] == first["path"] and second["entities"] == len(qids)
