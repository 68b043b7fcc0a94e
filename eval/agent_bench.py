"""``python -m eval.bench agent``: LLM-RetLink latency per node, and throughput under concurrency.

Latency (no ``--concurrency``): seconds per decision with the embedded judge (Qwen2.5-Coder 1.5B
GGUF through llama.cpp, in-process) on pictured mentions, p50 and p95, and each node's p50 and
p95. Cold = empty candidate store (every candidate's evidence fetched and its description written
by the LLM); warm = the same mentions again under a new run id (evidence and descriptions come
from the store, so describe, prerank and the judge are what is left). Model loading is apart.

Concurrency (``--concurrency 1,4,16``): the pictured mentions × ``--seeds`` (each seed its own
candidate sets) as one batch of decisions, linked N at a time (``agent.concurrency.in_order``,
as ``eval.run --pipeline agent --concurrency N`` does), each setting from a cold store, against
an OpenAI-compatible endpoint on 127.0.0.1. By default that is the record-and-replay endpoint
(``tools.llm.record_replay``): every answer is the real embedded model's answer to that very
request, recorded in an earlier run (recorded now, through ``python -m tools.llm.server``, when
the recording lacks any), replayed after ``--replay-delay`` seconds as a remote server would
answer. ``--llm-base-url`` benches a real server instead, ``--embedded`` the in-process model
(warm store: the judge is the only LLM call). Printed per setting: wall seconds, decisions/s, the
speed-up over 1, LLM requests and the most in flight, and wall time against the run's CPU work:
the process's CPU seconds (every thread, torch's included) over the cores, and the issue's
measure, describe + retrieve + store + prerank seconds summed over decisions over the cores
(under contention a node's seconds include waiting for a core, so this one overstates the work).
Every setting must reach the same decisions as the first (``same``); ``load`` is the machine's
1-minute load average after the setting (other processes share the cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from kb.cache import cache_dir
from kb.dataset import load_dataset

AGENT_TARGET_P50 = 1.5
WALL_OVER_CPU_TARGET = 1.2
NODES = ("describe", "retrieve", "store", "enrich", "prerank", "judge")
CPU_NODES = ("describe", "retrieve", "store", "prerank")


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def _resources(settings: Any, dataset: Any, scratch: Path, share_from: Any = None) -> Any:
    """Resources on a private store; the loaded models of ``share_from`` are reused."""
    from agent.candidate_store import CandidateStore
    from agent.resources import Resources
    from tools import registry

    resources = Resources(settings, dataset.entities)
    resources.store = CandidateStore(registry.get("minilm"), scratch / "chroma")
    if share_from is not None:
        resources.scorer, resources.describer = share_from.scorer, share_from.describer
        resources.replica = share_from.replica
    return resources


def latency(args: argparse.Namespace) -> int:
    """Cold and warm passes over the same mentions, each decision in its own thread."""
    from agent.link import Linker, build_candidates, link_mentions
    from agent.settings import AgentSettings

    dataset = load_dataset(args.dataset, args.data_dir)
    mentions = [m for m in dataset.split(args.split) if m.has_image][: args.limit]
    sets = build_candidates(dataset, mentions, args.candidates, seed=args.seeds[0])
    with tempfile.TemporaryDirectory() as scratch:
        settings = AgentSettings.from_env(task=args.task, checkpoint_db=Path(scratch) / "bench.sqlite")
        resources = _resources(settings, dataset, Path(scratch))
        started = time.perf_counter()
        _ = resources.scorer, resources.describer, resources.wiki
        resources.llm.chat([{"role": "user", "content": "Say OK."}], max_tokens=2)  # LLMError: no bench
        load = time.perf_counter() - started
        linker = Linker(resources, settings.checkpoint_db)
        print(
            f"{dataset.name}/{args.split}: {len(mentions)} pictured mentions, "
            f"λ={'all' if args.candidates is None else args.candidates}, task {args.task}, "
            f"judge {resources.llm.name}; models loaded in {load:.1f} s; {os.cpu_count()} cores"
        )
        print(f"{'pass':<5} {'p50 s':>7} {'p95 s':>7} {'mean s':>7}  per node: p50/p95 s")
        p50_warm = float("nan")
        for name in ("cold", "warm"):
            records = list(link_mentions(linker, dataset, mentions, sets, run_id=f"bench-{name}"))
            done = [r for r in records if r["error"] is None]
            seconds = [r["seconds"] for r in done]
            per_node = []
            for node in NODES:
                values = [r["node_seconds"][node] for r in done if node in r["node_seconds"]]
                if values:
                    per_node.append(f"{node} {percentile(values, 50):.2f}/{percentile(values, 95):.2f}")
            print(
                f"{name:<5} {percentile(seconds, 50):7.2f} {percentile(seconds, 95):7.2f} "
                f"{sum(seconds) / max(len(seconds), 1):7.2f}  {'  '.join(per_node)}"
                + (f"  ({len(records) - len(done)} failed)" if len(done) < len(records) else "")
            )
            p50_warm = percentile(seconds, 50)
        linker.close()
    verdict = "meets" if p50_warm <= AGENT_TARGET_P50 else "misses"
    print(f"warm p50 {p50_warm:.2f} s {verdict} the {AGENT_TARGET_P50} s target on {os.cpu_count()} cores")
    return 0


# ------------------------------------------------------------------------------ concurrency


def _pass(
    dataset: Any, jobs: list, settings: Any, concurrency: int, scratch: Path, share: Any, db: str = ""
) -> dict:
    """One timed batch of decisions N at a time: wall and CPU seconds, records in job order. Each
    pass checkpoints into its own file (``db``, default ``c<N>.sqlite``), so none reads another's
    decisions back."""
    from agent.concurrency import in_order
    from agent.link import Linker, decision_record, initial_state

    resources = _resources(settings, dataset, scratch, share)
    linker = Linker(resources, scratch / (db or f"c{concurrency}.sqlite"))

    def decide(job: tuple) -> dict[str, Any]:
        seed, mention, candidates, image = job
        state = initial_state(f"bench-c{concurrency}-s{seed}", mention, candidates, dataset.entities, image)
        final, thread, _ = linker.link(state, "clean")
        return decision_record(final, thread, sum(s["seconds"] for s in final.get("steps", [])))

    wall, cpu = time.perf_counter(), time.process_time()
    records = list(in_order(decide, jobs, concurrency))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    linker.close()
    node_work = sum(r["node_seconds"].get(n, 0.0) for r in records for n in CPU_NODES)
    return {"wall": wall, "cpu": cpu, "node_work": node_work, "records": records, "resources": resources}


def _jobs(args: argparse.Namespace, dataset: Any) -> list:
    from agent.link import build_candidates, clean_image

    mentions = [m for m in dataset.split(args.split) if m.has_image][: args.limit]
    jobs = []
    for seed in args.seeds:
        sets = build_candidates(dataset, mentions, args.candidates, seed=seed)
        jobs += [(seed, m, c, clean_image(m)) for m, c in zip(mentions, sets, strict=True)]
    return jobs


def _settings(args: argparse.Namespace, base_url: str | None, db: Path) -> Any:
    from agent.settings import AgentSettings
    from tools.llm import LLMSettings

    patience = {"timeout_s": 600.0, "budget_s": 1200.0} if base_url else {}
    llm = LLMSettings.from_env(base_url=base_url, **patience)  # None: the embedded model
    return AgentSettings.from_env(task=args.task, checkpoint_db=db, llm=llm)


def _replay(recording: Path, delay: float, upstream: str | None = None) -> Any:
    from tools.llm.server import launched

    argv = [sys.executable, "-m", "tools.llm.record_replay", "--recording", str(recording)]
    argv += ["--delay", str(delay)] + (["--upstream", upstream] if upstream else [])
    return launched(argv, timeout_s=60)


def _ensure_recorded(args: argparse.Namespace, dataset: Any, jobs: list, recording: Path) -> Any:
    """A sequential pass on the replay endpoint (no delay) finds what the recording lacks; any miss
    is recorded from the real model (``python -m tools.llm.server``) and checked again. Returns
    the loaded resources (the pass also loads the models)."""
    from tools.llm.record_replay import stats
    from tools.llm.server import serve_embedded

    for attempt in ("check", "record", "check"):
        with tempfile.TemporaryDirectory() as scratch:
            if attempt == "record":
                with serve_embedded() as upstream, _replay(recording, 0.0, upstream) as url:
                    _pass(
                        dataset,
                        jobs,
                        _settings(args, url, Path(scratch) / "r.sqlite"),
                        1,
                        Path(scratch),
                        None,
                    )
                    print(f"recorded {stats(url)['recorded']} answers of the real model into {recording}")
                continue
            with _replay(recording, 0.0) as url:
                done = _pass(
                    dataset, jobs, _settings(args, url, Path(scratch) / "k.sqlite"), 1, Path(scratch), None
                )
                misses = stats(url)["misses"]
            if misses == 0:
                return done["resources"]
            print(f"the recording lacks {misses} answers: recording them from the real model")
    raise RuntimeError(
        f"{recording} still lacks answers after recording; the agent's requests are not repeatable"
    )


def concurrency(args: argparse.Namespace) -> int:
    from tools.llm.record_replay import Recording, stats

    dataset = load_dataset(args.dataset, args.data_dir)
    jobs = _jobs(args, dataset)
    cores = os.cpu_count() or 1
    size = "all" if args.candidates is None else args.candidates
    recording = args.recording or cache_dir("bench") / f"replay-{dataset.name}-{args.task}-l{size}.jsonl"
    share = None
    if args.llm_base_url:
        endpoint = f"the OpenAI-compatible server at {args.llm_base_url}"
    elif args.embedded:
        endpoint = "the embedded model in-process (warm store: the judge is the only LLM call)"
    else:
        share = _ensure_recorded(args, dataset, jobs, recording)
        models = ", ".join(Recording(recording).models()) or "?"
        endpoint = (
            f"the record-and-replay endpoint on 127.0.0.1: each answer is the real model's ({models}) "
            f"recorded answer to the same request ({len(Recording(recording).answers)} in {recording}), "
            f"replayed after a fixed {args.replay_delay:.2f} s delay, as a remote server would answer"
        )
    print(f"LLM: {endpoint}")
    print(
        f"{dataset.name}/{args.split}: {len(jobs) // len(args.seeds)} pictured mentions × seeds "
        f"{','.join(map(str, args.seeds))} = {len(jobs)} decisions, λ={size}, task {args.task}, "
        f"{'warm' if args.embedded else 'cold'} store each setting, {cores} cores"
    )
    header = f"{'N':>3} {'wall s':>7} {'dec/s':>6} {'speed-up':>8} {'LLM req':>7} {'peak':>4} {'CPU s':>6}"
    print(header + f" {'wall/CPU work':>13} {'wall/node work':>14} {'acc@1':>6}  same  load")
    first: list | None = None
    rows = {}
    with tempfile.TemporaryDirectory() as warm:
        for n in args.concurrency:
            with tempfile.TemporaryDirectory() as scratch:
                scratch_path = Path(warm if args.embedded else scratch)
                if args.embedded:
                    context, url = nullcontext(None), None
                elif args.llm_base_url:
                    context = nullcontext(args.llm_base_url)
                else:
                    context = _replay(recording, args.replay_delay)
                with context as url:
                    settings = _settings(args, url, scratch_path / f"{n}.sqlite")
                    if args.embedded and share is None:  # fill the store once, untimed
                        share = _pass(dataset, jobs, settings, 1, scratch_path, None, "fill.sqlite")[
                            "resources"
                        ]
                    result = _pass(dataset, jobs, settings, n, scratch_path, share)
                    counts = stats(url) if url and not args.llm_base_url else {}
                share = share or result["resources"]
            decisions = [(r.get("prediction"), r.get("ranking")) for r in result["records"]]
            first = first or decisions
            wall, cpu = result["wall"], result["cpu"]
            speedup = rows[args.concurrency[0]] / wall if rows else 1.0
            rows.setdefault(n, wall)
            accuracy = sum(bool(r.get("correct")) for r in result["records"]) / max(len(jobs), 1)
            requests = counts.get("hits", 0) + counts.get("misses", 0)
            print(
                f"{n:>3} {wall:7.1f} {len(jobs) / wall:6.2f} {speedup:7.2f}x {requests or '-':>7} "
                f"{counts.get('peak_in_flight', '-'):>4} {cpu:6.1f} {wall / (cpu / cores):12.2f}x "
                f"{wall / (result['node_work'] / cores):13.2f}x {accuracy:6.1%}  {decisions == first!s:<5} "
                f"{os.getloadavg()[0]:.1f}"
                + (f"  ({counts['misses']} not recorded)" if counts.get("misses") else "")
            )
            last = (n, wall / (cpu / cores))
    verdict = "meets" if last[1] <= WALL_OVER_CPU_TARGET else "misses"
    print(
        f"at {last[0]} in flight wall time is {last[1]:.2f}x the CPU work: {verdict} the {WALL_OVER_CPU_TARGET}x target"
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kb.cli_args import add_candidate_arguments, add_dataset_arguments

    add_dataset_arguments(
        parser,
        dataset_default="demo",
        with_images=False,
        limit_default=8,
        limit_help="first N pictured mentions",
    )
    add_candidate_arguments(parser)
    parser.add_argument("--task", choices=("i2t", "it2t"), default="it2t")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(v) for v in text.split(",")],
        default=None,
        metavar="N1,N2,...",
        help="bench throughput at these numbers of decisions in flight (e.g. 1,4,16) instead of latency",
    )
    parser.add_argument("--replay-delay", type=float, default=0.5, help="seconds per replayed answer (0.5)")
    parser.add_argument("--recording", type=Path, default=None, help="the replay endpoint's recording")
    parser.add_argument("--llm-base-url", default=None, help="bench this real server instead of the replay")
    parser.add_argument("--embedded", action="store_true", help="bench the in-process embedded model")


def main(args: argparse.Namespace) -> int:
    return concurrency(args) if args.concurrency else latency(args)
