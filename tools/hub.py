"""Loading hub models without a hub: local paths first, a clear error when offline.

Paper models (CLIP, SigLIP, Chinese-CLIP, RoBERTa, VLMs) are named by their hub ids. This
machine class has no model hub, so every hub load goes through ``load_pretrained``: a local
directory loads directly; a hub id loads from the local Hugging Face cache only when
``HF_HUB_OFFLINE=1`` (or ``MEL_OFFLINE=1``) is set, and a miss raises ``ModelUnavailable``
naming the model and how to point the toolkit at local weights instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ModelUnavailable(RuntimeError):
    """A named model's weights cannot be loaded here; the message says how to provide them."""


def offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "MEL_OFFLINE")
    )


def is_local_path(name: str) -> bool:
    return Path(name).expanduser().exists()


def unavailable(name: str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"model {name!r} cannot be loaded: {reason}. Download it where a model hub is reachable "
        f"(e.g. `huggingface-cli download {name} --local-dir DIR`) and pass the local directory "
        f"DIR instead of the hub id, or run offline with a built-in model (see `python -m tools.models`)."
    )


def load_pretrained(loader: Callable[..., T], name: str, **kwargs: Any) -> T:
    """``loader(name_or_path, ...)`` (a transformers ``from_pretrained``) with offline rules."""
    if is_local_path(name):
        return loader(str(Path(name).expanduser()), local_files_only=True, **kwargs)
    try:
        return loader(name, local_files_only=offline(), **kwargs)
    except OSError as exc:
        hint = "no local copy and the hub is offline" if offline() else f"hub download failed ({exc})"
        raise unavailable(name, hint) from exc
