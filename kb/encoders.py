"""The text-encoder contract of the KB store, and how a store finds an encoder by name.

The store (``kb.store``) embeds entity descriptions with whatever implements ``TextEncoder``.
The encoders themselves are models, so they live in ``tools`` (``tools.text_encoders``), a layer
above ``kb``. ``kb`` never imports them: it looks them up by name among the installed
``melrobust.text_encoders`` entry points (declared in ``pyproject.toml``), the standard Python
plugin mechanism, so any installed package can add an encoder without ``kb`` knowing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import numpy as np

from kb.errors import DatasetError

ENTRY_POINT_GROUP = "melrobust.text_encoders"


class TextEncoder(Protocol):
    """Texts -> L2-normalised rows; ``kind`` is "query" or "passage" (e5 prefixes them differently)."""

    name: str

    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray: ...


def encoder_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_encoder(name: str) -> TextEncoder:
    """A new encoder registered under ``name`` (e.g. ``minilm``, ``e5-small``)."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        names = encoder_names()
        hint = (
            f"choose one of {names}"
            if names
            else "no encoder is registered: reinstall the project (pip install -e .) so its entry points exist"
        )
        raise DatasetError(f"unknown KB encoder {name!r}; {hint}")
    return found[0].load()()


def encoder_fingerprint(encoder: TextEncoder) -> str:
    """Stable id of an encoder's weights, so stores and caches rebuild when they change."""
    model_dir = getattr(encoder, "model_dir", None)
    digest = hashlib.sha256(encoder.name.encode())
    if model_dir is not None:
        weights = Path(model_dir) / "model.safetensors"
        if weights.is_file():
            stat = weights.stat()
            digest.update(f"{stat.st_size}:{int(stat.st_mtime)}".encode())
    return f"{encoder.name}@{digest.hexdigest()[:12]}"
