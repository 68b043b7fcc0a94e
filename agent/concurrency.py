"""Decisions at once: the default for a backend, the ``--concurrency`` flag, and ``in_order``.

Concurrent decisions share one ``Resources`` (each model loaded once under its lock) and one
SQLite checkpointer: LangGraph's ``SqliteSaver`` opens its connection with
``check_same_thread=False`` and runs every statement under its own ``threading.Lock``
(``SqliteSaver.cursor``), so threads may share it. Each decision is its own LangGraph thread, so
no two workers ever write the same checkpoint.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from agent.settings import AgentSettings

T = TypeVar("T")
R = TypeVar("R")
SERVED_CONCURRENCY = 8
"""Decisions in flight by default when the LLM is a server (vLLM and llama.cpp's server batch or
queue concurrent requests; the project's client holds one connection per request)."""


def default_concurrency(settings: AgentSettings) -> int:
    """1 for the in-process embedded LLM (one llama.cpp context, one answer at a time: more
    decisions in flight would only queue behind it and compete with it for the cores), else
    ``SERVED_CONCURRENCY``."""
    return 1 if settings.llm.base_url is None else SERVED_CONCURRENCY


def in_order(work: Callable[[T], R], items: Sequence[T], concurrency: int) -> Iterator[R]:
    """``work(item)`` for every item, at most ``concurrency`` at once on a thread pool, yielded in
    the items' order as soon as each is done and all before it are: the caller (the only writer
    of what it yields) sees exactly a sequential run's sequence. An exception ``work`` raises
    reaches the caller at that item. Closing the iterator early cancels what has not started
    and waits for what has."""
    if concurrency <= 1 or len(items) <= 1:
        for item in items:
            yield work(item)
        return
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix="decision") as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_concurrency_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--concurrency N``: agent decisions at once (``agent.link`` and ``eval.run --pipeline agent``)."""
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help=f"agent decisions at once (default: 1 with the embedded LLM, {SERVED_CONCURRENCY} with --llm-base-url)",
    )
