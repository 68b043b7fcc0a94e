"""Counters a wiki client keeps so the agent and a run report can say what the network did."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WikiStats:
    """Shared by the clients of one ``make_wiki_client`` call; safe to update from threads.

    ``requests``: HTTP attempts sent; ``retries``: attempts after a failed one; ``cache_hits``:
    answers read from the disk cache; ``failures``: requests given up on (``WikiError``);
    ``fallbacks``: failed online calls then answered from the offline replica; ``offline``:
    calls answered by the offline replica (fallbacks included); ``last_error``: the last
    ``WikiError`` message.
    """

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: int = 0
    fallbacks: int = 0
    offline: int = 0
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def failed(self, error: Exception) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = str(error)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "cache_hits": self.cache_hits,
                "failures": self.failures,
                "fallbacks": self.fallbacks,
                "offline": self.offline,
                "last_error": self.last_error,
            }
