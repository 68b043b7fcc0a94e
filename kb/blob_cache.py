"""One SQLite file of key -> blob: the storage under every on-disk cache of the toolkit.

``BlobCache`` holds the connection set-up the caches share and nothing about what they store:

* WAL journal with ``synchronous=NORMAL``: many processes read while one writes; a busy file
  is waited on for ``timeout`` seconds instead of failing at once;
* one connection per instance, usable from any thread (an internal lock serialises it), and
  reopened in a forked child, which must never use its parent's handle;
* ``get_many`` / ``put_many`` of bytes or numpy arrays, in chunks of at most 500 SQL
  variables (well under every SQLite build's limit), each write one ``BEGIN IMMEDIATE``
  transaction;
* ``on_conflict``: ``"ignore"`` keeps the first value stored under a key (for values that are
  a pure function of the key, two writers store the same bytes), ``"replace"`` the last.

The table and column names are the caller's, so a cache moved onto this helper keeps reading
the files it wrote before. Callers: ``eval.score_cache.ScoreCache`` (clean logits) and
``tools.scorers.text_cache.TextEmbeddingCache`` (text embeddings).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np

CHUNK = 500
"""SQL variables per query."""

Blob = bytes | bytearray | memoryview | np.ndarray
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BlobCache:
    """``key TEXT PRIMARY KEY -> value BLOB`` in one SQLite file (see the module docstring).

    ``meta`` rows, when given, go into a ``meta(key, value)`` table on open (first writer wins),
    so a file says what it holds even when its name had to be shortened. Opening raises
    ``sqlite3.Error`` / ``OSError`` when the file cannot be used; callers decide what then.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = "blobs",
        key_column: str = "key",
        value_column: str = "value",
        on_conflict: Literal["ignore", "replace"] = "ignore",
        timeout: float = 60.0,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        for identifier in (table, key_column, value_column):
            if not _IDENTIFIER.fullmatch(identifier):
                raise ValueError(f"not an SQL identifier: {identifier!r}")
        if on_conflict not in ("ignore", "replace"):
            raise ValueError(f"on_conflict must be 'ignore' or 'replace', got {on_conflict!r}")
        self.path = Path(path)
        self.table, self.key_column, self.value_column = table, key_column, value_column
        self.on_conflict = on_conflict
        self.timeout = timeout
        self.meta = dict(meta or {})
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._inherited: list[sqlite3.Connection] = []  # a parent's handles, kept unclosed in a fork
        self._pid = os.getpid()
        self._connect()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, table={self.table!r})"

    # -- connection -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                f"({self.key_column} TEXT PRIMARY KEY, {self.value_column} BLOB NOT NULL) WITHOUT ROWID"
            )
            if self.meta:
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                )
                connection.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", self.meta.items())
        except BaseException:
            connection.close()
            raise
        self._connection, self._pid = connection, os.getpid()
        return connection

    @property
    def connection(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own on first use)."""
        with self._lock:
            if os.getpid() != self._pid and self._connection is not None:
                self._inherited.append(self._connection)  # the parent's: never used, never closed here
                self._connection = None
            if self._connection is None:
                return self._connect()
            return self._connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                if os.getpid() == self._pid:
                    self._connection.close()
                else:
                    self._inherited.append(self._connection)
            self._connection = None

    # -- reads and writes -----------------------------------------------------------------------

    def get_many(self, keys: Iterable[str], dtype: np.dtype | type | str | None = None) -> dict[str, Blob]:
        """The stored values among ``keys``: bytes, or read-only 1-D arrays of ``dtype`` when given."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Blob] = {}
        query = f"SELECT {self.key_column}, {self.value_column} FROM {self.table} WHERE {self.key_column} IN "
        with self._lock:
            connection = self.connection
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                for key, blob in connection.execute(query + f"({','.join('?' * len(chunk))})", chunk):
                    found[key] = blob if dtype is None else np.frombuffer(blob, dtype=dtype)
        return found

    def put_many(
        self,
        items: Mapping[str, Blob] | Iterable[tuple[str, Blob]],
        dtype: np.dtype | type | str | None = None,
    ) -> int:
        """Store ``key -> value`` pairs in one transaction; returns how many were given.

        A value is bytes-like, or an array whose C-order bytes are stored (cast to ``dtype``
        first when given, so readers can ask for that dtype back).
        """
        pairs = items.items() if isinstance(items, Mapping) else items
        rows = [(key, _to_bytes(value, dtype)) for key, value in pairs]
        if not rows:
            return 0
        verb = "INSERT OR IGNORE" if self.on_conflict == "ignore" else "INSERT OR REPLACE"
        with self._lock:
            connection = self.connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(f"{verb} INTO {self.table} VALUES (?, ?)", rows)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self.connection.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])


def _to_bytes(value: Blob, dtype: np.dtype | type | str | None) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    array = np.asarray(value, dtype=dtype)
    return np.ascontiguousarray(array).tobytes()


__all__ = ["CHUNK", "Blob", "BlobCache"]
