"""Where batches of model work run: in this process (``local``) or on a Ray cluster (``ray``).

A full study (datasets x conditions x tasks x models, plus the agent) outgrows one machine, so
the heavy part of ``eval.run`` and ``attacks.generate`` can be sharded over Ray Data's actor
pools (``Dataset.map_batches`` with ``ActorPoolStrategy``): each actor loads its model once in
``__init__`` and is fed rows as it frees up. The CLI process stays the driver and the only
writer of ``items.jsonl`` / ``manifest.jsonl``: it decides what is left to do (resume), sends
only that, and writes each result once as it streams back, so a run that loses a worker, or
is killed and restarted, neither loses nor duplicates an item.

Rows are plain JSON payloads (ids, paths, candidate texts), never tensors: every worker reads
the same dataset files, so on a cluster the data, caches' parent and output folders must be at
the same path on every node (a shared filesystem). Fault tolerance is Ray Data's: pool actors
are restarted when their process dies (``max_restarts=-1``) and the lost batch is retried.

The driver's ``MEL_*``, ``HF_*``, ``TRANSFORMERS_*`` and ``TOKENIZERS_PARALLELISM`` variables
are passed to every actor, so workers read the same settings (cache folder, offline mode, LLM
endpoints) as a local run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

EXECUTORS = ("local", "ray")
FORWARDED_PREFIXES = ("MEL_", "HF_", "TRANSFORMERS_")
FORWARDED_NAMES = ("TOKENIZERS_PARALLELISM",)
PAYLOAD = "payload"


@dataclass(frozen=True)
class ExecutorConfig:
    """``kind`` local or ray; ``address`` of a running cluster (None: ``$RAY_ADDRESS`` or a new
    local one); ``workers`` actors in the pool (None: one per CPU, or per GPU for GPU work)."""

    kind: str = "local"
    address: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if self.kind == "local" and (self.address or self.workers):
            raise ValueError("--ray-address and --ray-workers need --executor ray")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--ray-workers must be at least 1, got {self.workers}")

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The same three flags on every command that can shard its work."""
    group = parser.add_argument_group("executor (tools.executor)")
    group.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="local: in this process; ray: Ray actors"
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="cluster to join (ray start --head prints it; 'auto' = the one on this node); "
        "default $RAY_ADDRESS, else a new local cluster",
    )
    group.add_argument(
        "--ray-workers", type=int, default=None, help="actors in the pool (default: one per CPU/GPU)"
    )


def executor_from_args(args: argparse.Namespace) -> ExecutorConfig:
    return ExecutorConfig(kind=args.executor, address=args.ray_address, workers=args.ray_workers)


def forwarded_env() -> dict[str, str]:
    """The driver's settings every worker must see (see the module docstring)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key.startswith(FORWARDED_PREFIXES) or key in FORWARDED_NAMES
    }


def connect(config: ExecutorConfig, progress: bool) -> Any:
    """Join (or start) the cluster once per process; returns the ``ray`` module."""
    import ray

    if not ray.is_initialized():
        ray.init(address=config.address, logging_level=logging.WARNING, log_to_driver=progress)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
    return ray


def pool_size(config: ExecutorConfig, ray: Any, gpus_per_worker: float) -> int:
    """``--ray-workers``, else one actor per GPU (GPU work) or per CPU of the cluster."""
    if config.workers is not None:
        return config.workers
    resources = ray.cluster_resources()
    if gpus_per_worker:
        gpus = int(resources.get("GPU", 0) // gpus_per_worker)
        if gpus < 1:
            raise ValueError("GPU workers were asked for (--device cuda) but the Ray cluster has no GPU")
        return gpus
    return max(1, int(resources.get("CPU", 1)))


def ray_map(
    rows: Sequence[dict[str, Any]],
    worker: type,
    constructor_args: tuple[Any, ...],
    config: ExecutorConfig,
    *,
    rows_per_call: int,
    gpus_per_worker: float = 0.0,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Stream ``worker(*constructor_args)(rows)`` back row by row as actors finish them.

    ``worker`` is a ``JsonWorker`` subclass; completion order, not input order. Row ``i`` carries
    ``"index": i`` and so does its result: each index is yielded exactly once (a retried batch
    is not written twice), and a run that got fewer back raises rather than end short. The pool
    holds ``pool_size`` actors of one CPU each (one GPU each with ``gpus_per_worker``).
    """
    if not rows:
        return
    ray = connect(config, progress)
    size = min(pool_size(config, ray, gpus_per_worker), len(rows))
    blocks = max(1, min(len(rows), -(-len(rows) // rows_per_call)))
    items = [{PAYLOAD: json.dumps(row, ensure_ascii=False)} for row in rows]
    resources: dict[str, Any] = {"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 1}
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        worker,
        fn_constructor_args=constructor_args,
        compute=ray.data.ActorPoolStrategy(size=size),
        batch_size=rows_per_call,
        batch_format="numpy",
        runtime_env={"env_vars": forwarded_env()},
        **resources,
    )
    returned: set[int] = set()
    for row in dataset.iter_rows():
        result = json.loads(row[PAYLOAD])
        if result["index"] not in returned:
            returned.add(result["index"])
            yield result
    if len(returned) != len(rows):
        raise RuntimeError(f"Ray returned {len(returned)} of {len(rows)} rows; rerun to resume")


class JsonWorker:
    """Base of pool actors: decodes a batch of JSON rows, ``process``es them, encodes the results.

    Subclasses load their model in ``__init__`` (once per actor) and keep torch to
    ``threads`` intra-op threads, so actors sharing a node do not oversubscribe its cores.
    """

    def __init__(self, threads: int = 1) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        results = self.process([json.loads(text) for text in batch[PAYLOAD]])
        return {PAYLOAD: np.array([json.dumps(r, ensure_ascii=False) for r in results], dtype=object)}
