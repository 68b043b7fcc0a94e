"""``python -m eval.bench prerank|agent|ray|fullkb``: pre-ranker throughput, agent latency, Ray
scale-out, full-KB ranking (``fullkb``: cold and warm seconds, ``items.jsonl`` size and a check
against the per-mention path; ``eval.bench_fullkb``).

``ray``: mentions/s of the same cold ``eval.run`` (WikiMEL test, t2t, tagger, empty score and
text caches) with the local executor and with ``--executor ray`` on a local cluster of
``--workers`` one-CPU actors started beforehand (cluster start is not timed; actor start and
model loading are), and the ratio Ray / local. Both runs must give the same metrics.

``agent``: LLM-RetLink's seconds per decision, cold and warm, p50/p95 per node, with the embedded
judge; with ``--concurrency 1,4,16`` its throughput at each number of decisions in flight
against an OpenAI-compatible endpoint on 127.0.0.1, by default one that replays the real model's
recorded answers after a fixed delay (``eval.agent_bench``).

``prerank``: pre-ranker throughput on WikiMEL, cold and warm.

Cold = empty text-embedding and score caches (the KB store, built once by ``kb.build``, is
shared); warm = the same command again, reusing those caches. Each run is a real
``python -m eval.run`` subprocess, so imports and model loading are counted. WikiMEL's test
split has no images in ../shared, so its mentions run ``t2t``; mentions with an image on
disk would run ``it2t`` (the command reports how many there were).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from eval import agent_bench, bench_fullkb
from eval.bench_fullkb import timed_run
from kb.cache import cache_dir
from kb.dataset import load_dataset

TARGET_SECONDS = 300.0


def prerank(args: argparse.Namespace) -> None:
    dataset = load_dataset("wikimel", args.data_dir)
    mentions = dataset.split("test")[: args.limit] if args.limit else dataset.split("test")
    pictured = sum(1 for m in mentions if m.has_image)
    print(
        f"WikiMEL test: {len(mentions)} mentions ({pictured} with an image on disk -> it2t, rest t2t), λ=10"
    )
    scorers = [("tagger", None)]
    if args.mcr_checkpoint and Path(args.mcr_checkpoint).is_file():
        scorers.append(("mcr", args.mcr_checkpoint))
    else:
        print(
            f"mcr: no checkpoint at {args.mcr_checkpoint} (train one with python -m tools.train_mcr); skipped"
        )
    print(
        f"{'scorer':<8} {'cold s':>8} {'cold m/s':>9} {'warm s':>8} {'warm m/s':>9} {'speed-up':>9} {'acc@1':>6}  projected full split (cold)"
    )
    for scorer, checkpoint in scorers:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            (root / "kb").symlink_to(cache_dir("kb"), target_is_directory=True)
            env = {**os.environ, "MEL_CACHE_DIR": str(root), "HF_HUB_OFFLINE": "1"}
            common = ["--dataset", "wikimel", "--task", "t2t", "--scorer", scorer]
            common += ["--limit", str(len(mentions))] + (["--checkpoint", checkpoint] if checkpoint else [])
            common += ["--data-dir", str(dataset.root)]
            cold, results = timed_run(common, env, root / "cold")
            warm, _ = timed_run(common, env, root / "warm")
        n = results["n"] + results["n_skipped"]
        projected = cold * len(dataset.split("test")) / n
        verdict = "meets" if projected <= TARGET_SECONDS else "misses"
        print(
            f"{scorer:<8} {cold:8.1f} {n / cold:9.1f} {warm:8.1f} {n / warm:9.1f} {cold / warm:8.1f}x "
            f"{results['metrics']['acc@1']['mean'] * 100:5.1f}%  {projected:.0f} s ({verdict} the {TARGET_SECONDS:.0f} s target)"
        )


def ray_scaling(args: argparse.Namespace) -> int:
    """Local vs Ray throughput of one cold run each, in this process, on a private cluster."""
    import logging

    import ray

    from eval.run import RunConfig, run
    from tools.executor import ExecutorConfig

    dataset = load_dataset("wikimel", args.data_dir)
    config = RunConfig(dataset="wikimel", task="t2t", limit=args.limit, data_dir=str(dataset.root))
    ray.init(
        num_cpus=args.workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False
    )
    previous, kb_stores = os.environ.get("MEL_CACHE_DIR"), cache_dir("kb")
    try:
        timings = {}
        for name, executor in (("local", None), ("ray", ExecutorConfig(kind="ray", workers=args.workers))):
            with tempfile.TemporaryDirectory() as scratch:
                root = Path(scratch)
                (root / "kb").symlink_to(kb_stores, target_is_directory=True)
                os.environ["MEL_CACHE_DIR"] = str(root)  # read by the driver and passed to the actors
                started = time.perf_counter()
                results = run(config, root / "out", progress=False, executor=executor)
                timings[name] = (time.perf_counter() - started, results)
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("MEL_CACHE_DIR", None)
        else:
            os.environ["MEL_CACHE_DIR"] = previous
    (local, local_results), (sharded, ray_results) = timings["local"], timings["ray"]
    n = local_results["n"] + local_results["n_skipped"]
    print(
        f"WikiMEL test t2t, tagger, {n} mentions, λ=10, cold caches, {os.cpu_count()} cores on this machine"
    )
    print(f"{'executor':<22} {'seconds':>8} {'mentions/s':>11} {'acc@1':>6}")
    for label, seconds, results in (
        ("local (in-process)", local, local_results),
        (f"ray ({args.workers} workers)", sharded, ray_results),
    ):
        print(
            f"{label:<22} {seconds:8.1f} {n / seconds:11.2f} {results['metrics']['acc@1']['mean'] * 100:5.1f}%"
        )
    same = ray_results["metrics"] == local_results["metrics"]
    print(f"ratio ray/local throughput: {local / sharded:.2f}x; metrics identical: {same}")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prerank", help="tagger and mcr mentions/s on WikiMEL, cold and warm")
    pre.add_argument("--data-dir", default=None)
    pre.add_argument("--limit", type=int, default=None, help="first N test mentions (default: all)")
    pre.add_argument("--mcr-checkpoint", default="checkpoints/mcr-wikimel.pt")
    ag = sub.add_parser(
        "agent", help="LLM-RetLink p50/p95 per node, cold and warm store; or throughput with --concurrency"
    )
    agent_bench.add_arguments(ag)
    scale = sub.add_parser("ray", help="mentions/s of the local executor vs Ray actors, and the ratio")
    scale.add_argument("--data-dir", default=None)
    scale.add_argument("--limit", type=int, default=200, help="first N WikiMEL test mentions")
    scale.add_argument("--workers", type=int, default=2, help="Ray actors (one CPU each)")
    full_kb = sub.add_parser("fullkb", help="full-KB WikiMEL test: cold/warm s, items.jsonl MB, check")
    bench_fullkb.add_arguments(full_kb)
    args = parser.parse_args(argv)
    if args.command == "fullkb":
        return bench_fullkb.fullkb(args)
    if args.command == "prerank":
        prerank(args)
    elif args.command == "ray":
        return ray_scaling(args)
    else:
        from tools.llm import LLMError

        try:
            return agent_bench.main(args)
        except LLMError as exc:
            print(f"error: the judge's LLM does not answer: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
