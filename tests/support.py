"""Helpers many test modules share: a closed local port and a private cache over the shared one."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def private_cache(folder: Path, shared: Sequence[str] = ("kb", "text_embeddings")) -> Path:
    """A fresh ``MEL_CACHE_DIR`` whose ``shared`` parts link to the real cache (built once, read-only
    for the test), so stores, scores and checkpoints a test writes never leak into other tests."""
    from kb.cache import cache_dir

    folder.mkdir(parents=True, exist_ok=True)
    for name in shared:
        (folder / name).symlink_to(cache_dir(name), target_is_directory=True)
    return folder
