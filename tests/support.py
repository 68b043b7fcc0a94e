"""Helpers many test modules share: a closed local port and a private cache over the session's."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

SESSION_CACHE: Path | None = None
"""The session's ``MEL_CACHE_DIR``, a temporary folder (set by ``conftest.py`` before any test
module is imported): the only cache a test's private cache links to."""


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def private_cache(folder: Path, shared: Sequence[str] = ("kb", "text_embeddings")) -> Path:
    """A fresh ``MEL_CACHE_DIR`` whose ``shared`` parts link to the session's cache (KB stores and
    text embeddings built once per session), so scores and checkpoints a test writes never leak
    into other tests, and nothing reaches the developer's real cache."""
    if SESSION_CACHE is None:
        raise RuntimeError("tests/conftest.py sets support.SESSION_CACHE: run the tests through pytest")
    folder.mkdir(parents=True, exist_ok=True)
    for name in shared:
        target = SESSION_CACHE / name
        target.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(target, target_is_directory=True)
    return folder


def refuse_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every model load in this process raise: the scorer loader that
    ``eval.scoring.LazyScorer`` calls and the registry every model goes through (so a model an
    earlier test loaded is refused too). Ray actors are other processes: they still load theirs."""
    import tools.registry
    import tools.scorers

    def refuse(name: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a model was loaded: {name}")

    monkeypatch.setattr(tools.scorers, "load_scorer", refuse)
    monkeypatch.setattr(tools.registry, "get", refuse)


def score_rows(cache_root: Path) -> int:
    """Logit vectors the score cache under ``cache_root`` holds (0 when it has none)."""
    total = 0
    for path in sorted((cache_root / "scores").glob("*.sqlite")):
        with contextlib.closing(sqlite3.connect(path)) as connection:
            total += connection.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    return total
