"""Where the toolkit keeps derived data: ``$MEL_CACHE_DIR`` or ``~/.cache/melrobust``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache root, created on first use."""
    root = Path(os.environ.get("MEL_CACHE_DIR") or Path.home() / ".cache" / "melrobust").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
