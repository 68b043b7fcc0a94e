"""``python -m eval.bench prerank|fullkb|ray|agent`` run as users run them, on small slices: each
prints its table, and the checks each bench makes (metrics identical between paths) hold.

The numbers themselves are not asserted (they are the machine's); the fields, the verdict lines
and the equality checks are. WikiMEL's KB store is the session's (``wikimel_store``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import support
from openai_faults_server import MODEL, fault_server

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: int = 900) -> str:
    env = {**os.environ, "MEL_CACHE_DIR": str(support.SESSION_CACHE), "PYTHONPATH": str(PROJECT)}
    done = subprocess.run(
        [sys.executable, "-m", "eval.bench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_prerank_and_fullkb_benches_print_their_tables(shared_mel: Path, wikimel_store: dict) -> None:
    data = ["--data-dir", str(shared_mel / "wikimel")]
    out = bench("prerank", "--limit", "10", *data, "--mcr-checkpoint", "no/such.pt")
    assert "WikiMEL test: 10 mentions" in out and "mcr: no checkpoint at no/such.pt" in out
    assert re.search(
        r"^tagger +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x +[\d.]+%  \d+ s \((meets|misses)", out, re.M
    ), out
    out = bench("fullkb", "--limit", "20", "--check", "10", *data)
    assert re.search(r"^cold +[\d.]+ +[\d.]+ .*\((meets|misses) ≤ 60 s", out, re.M), out
    assert re.search(r"^warm +[\d.]+ +[\d.]+ .*\((meets|misses) ≤ 10 s", out, re.M), out
    assert "check: first 10 mentions" in out and "metrics identical (10/10 ranks equal)" in out


def test_ray_bench_compares_executors_with_identical_metrics(shared_mel: Path, wikimel_store: dict) -> None:
    out = bench("ray", "--limit", "10", "--workers", "1", "--data-dir", str(shared_mel / "wikimel"))
    assert re.search(r"^local \(in-process\) +[\d.]+ +[\d.]+", out, re.M), out
    assert re.search(r"^ray \(1 workers\) +[\d.]+ +[\d.]+", out, re.M), out
    assert "metrics identical: True" in out


def test_agent_bench_at_two_concurrencies_against_a_server() -> None:
    """``--concurrency 1,2`` against an OpenAI-compatible server on 127.0.0.1: a row per N, the
    decisions the same at every N."""
    with fault_server(answer="1", top_logprobs={"1": 0.7, "2": 0.3}) as server:
        out = bench(
            "agent",
            "--limit",
            "2",
            "--candidates",
            "2",
            "--task",
            "i2t",
            "--concurrency",
            "1,2",
            "--llm-base-url",
            server.url,
        )
        assert server.bodies and {b.get("model") for b in server.bodies} == {MODEL}
    assert f"LLM: the OpenAI-compatible server at {server.url}" in out
    rows = re.findall(r"^ +([12]) +[\d.]+ +[\d.]+ +[\d.]+x .* (True|False) +[\d.]+$", out, re.M)
    assert [n for n, _ in rows] == ["1", "2"] and all(same == "True" for _, same in rows), out
    assert re.search(r"^at 2 in flight wall time is [\d.]+x the CPU work: (meets|misses)", out, re.M), out


def test_agent_bench_by_default_replays_the_real_models_recorded_answers(tmp_path: Path) -> None:
    """Without ``--llm-base-url`` the concurrency bench records the embedded model's answers once
    (llama.cpp's server), then replays them after ``--replay-delay``, and says so."""
    recording = tmp_path / "recording.jsonl"
    args = ["agent", "--limit", "1", "--candidates", "2", "--task", "i2t", "--concurrency", "1,2"]
    out = bench(*args, "--replay-delay", "0.1", "--recording", str(recording))
    assert recording.is_file() and recording.read_text().strip(), "the real model's answers were recorded"
    assert "recorded answer to the same request" in out and "replayed after a fixed 0.10 s delay" in out
    rows = re.findall(r"^ +([12]) +[\d.]+ +[\d.]+ +[\d.]+x .* (True|False) +[\d.]+$", out, re.M)
    assert [n for n, _ in rows] == ["1", "2"] and all(same == "True" for _, same in rows), out
