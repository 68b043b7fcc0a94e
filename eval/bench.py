"""``python -m eval.bench prerank|agent|ray``: pre-ranker throughput, agent latency, Ray scale-out.

``ray``: mentions/s of the same cold ``eval.run`` (WikiMEL test, t2t, tagger, empty score and
text caches) with the local executor and with ``--executor ray`` on a local cluster of
``--workers`` one-CPU actors started beforehand (cluster start is not timed; actor start and
model loading are), and the ratio Ray / local. Both runs must give the same metrics.

``agent``: seconds per mention of the LLM-RetLink graph with the embedded judge (Qwen2.5-Coder
1.5B GGUF through llama.cpp) on pictured mentions, p50 and p95, per node too. Cold = empty
candidate store (every candidate's evidence fetched and its description written by the LLM);
warm = the same mentions again under a new run id (evidence and descriptions come from the
store, so describe, prerank and the judge are what is left). Model loading is reported apart.

``prerank``: pre-ranker throughput on WikiMEL, cold and warm.

Cold = empty text-embedding and score caches (the KB store, built once by ``kb.build``, is
shared); warm = the same command again, reusing those caches. Each run is a real
``python -m eval.run`` subprocess, so imports and model loading are counted. WikiMEL's test
split has no images in ../shared, so its mentions run ``t2t``; mentions with an image on
disk would run ``it2t`` (the command reports how many there were).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kb.cache import cache_dir
from kb.cli_args import add_candidate_arguments, add_dataset_arguments
from kb.dataset import load_dataset

TARGET_SECONDS = 300.0
AGENT_TARGET_P50 = 3.0


def timed_run(arguments: list[str], env: dict[str, str], out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "eval.run", *arguments, "--out", str(out), "--quiet"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started, json.loads((out / "results.json").read_text())


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


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def agent(args: argparse.Namespace) -> None:
    """Cold and warm passes over the same mentions, each decision in its own thread."""
    from agent.candidate_store import CandidateStore
    from agent.link import Linker, build_candidates, link_mentions
    from agent.resources import Resources
    from agent.settings import AgentSettings
    from tools import registry

    dataset = load_dataset(args.dataset, args.data_dir)
    mentions = [m for m in dataset.split(args.split) if m.has_image][: args.limit]
    sets = build_candidates(dataset, mentions, args.candidates, seed=args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        settings = AgentSettings.from_env(task=args.task, checkpoint_db=Path(scratch) / "bench.sqlite")
        resources = Resources(settings, dataset.entities)
        resources.store = CandidateStore(registry.get("minilm"), Path(scratch) / "chroma")
        started = time.perf_counter()
        _ = resources.scorer, resources.describer, resources.wiki
        resources.llm.chat(
            [{"role": "user", "content": "Say OK."}], max_tokens=2
        )  # LLMError: no judge, no bench
        load = time.perf_counter() - started
        linker = Linker(resources, settings.checkpoint_db)
        print(
            f"{dataset.name}/{args.split}: {len(mentions)} pictured mentions, "
            f"λ={'all' if args.candidates is None else args.candidates}, task {args.task}, "
            f"judge {resources.llm.name}; models loaded in {load:.1f} s"
        )
        print(f"{'pass':<5} {'p50 s':>7} {'p95 s':>7} {'mean s':>7}  per-node p50 s")
        p50_warm = float("nan")
        for name in ("cold", "warm"):
            records = list(link_mentions(linker, dataset, mentions, sets, run_id=f"bench-{name}"))
            done = [r for r in records if r["error"] is None]
            seconds = [r["seconds"] for r in done]
            nodes = {
                node: percentile([r["node_seconds"][node] for r in done if node in r["node_seconds"]], 50)
                for node in ("describe", "retrieve", "store", "enrich", "prerank", "judge")
            }
            per_node = " ".join(f"{node} {value:.2f}" for node, value in nodes.items())
            print(
                f"{name:<5} {percentile(seconds, 50):7.2f} {percentile(seconds, 95):7.2f} "
                f"{sum(seconds) / max(len(seconds), 1):7.2f}  {per_node}"
                + (f"  ({len(records) - len(done)} failed)" if len(done) < len(records) else "")
            )
            p50_warm = percentile(seconds, 50)
        linker.close()
    verdict = "meets" if p50_warm <= AGENT_TARGET_P50 else "misses"
    print(
        f"warm p50 {p50_warm:.2f} s {verdict} the {AGENT_TARGET_P50:.0f} s target on {os.cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prerank", help="tagger and mcr mentions/s on WikiMEL, cold and warm")
    pre.add_argument("--data-dir", default=None)
    pre.add_argument("--limit", type=int, default=None, help="first N test mentions (default: all)")
    pre.add_argument("--mcr-checkpoint", default="checkpoints/mcr-wikimel.pt")
    ag = sub.add_parser("agent", help="LLM-RetLink seconds per mention (p50/p95), cold and warm store")
    add_dataset_arguments(
        ag, dataset_default="demo", with_images=False, limit_default=8, limit_help="first N pictured mentions"
    )
    add_candidate_arguments(ag, seeds=False)
    ag.add_argument("--task", choices=("i2t", "it2t"), default="it2t")
    scale = sub.add_parser("ray", help="mentions/s of the local executor vs Ray actors, and the ratio")
    scale.add_argument("--data-dir", default=None)
    scale.add_argument("--limit", type=int, default=200, help="first N WikiMEL test mentions")
    scale.add_argument("--workers", type=int, default=2, help="Ray actors (one CPU each)")
    args = parser.parse_args(argv)
    if args.command == "prerank":
        prerank(args)
    elif args.command == "ray":
        return ray_scaling(args)
    else:
        from tools.llm import LLMError

        try:
            agent(args)
        except LLMError as exc:
            print(f"error: the judge's LLM does not answer: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
